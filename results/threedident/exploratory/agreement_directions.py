"""What two runs disagree on: their worst-agreeing directions read against the true latents.

`clinvert threedident agree` scores, without labels, how well an affine map takes one run's code to
each direction of another's. This script (which does read the latents, to explain that score)
takes each ordered pair of runs, projects the second run's code onto its directions that the first
reads worst (:func:`clinvert.metrics.linear_agreement` with ``return_directions``) and reports,
per direction, its agreement R², the R² of an affine fit to it from the ten latents, and the
single target among the latents, their folds ``z_j × sign(z_k)`` and ``|z_j|`` that correlates
best with it (its squared correlation). A direction explained by a fold that the affine fit misses
is a fold the other run does not share.

    python results/threedident/exploratory/agreement_directions.py RUN_A RUN_B [RUN ...] [--worst 2]
"""

from __future__ import annotations

import argparse
from itertools import permutations

import numpy as np

from clinvert.config import read_run_config, validate_config
from clinvert.data.threedident.factors import FACTORS
from clinvert.data.threedident.probe import encode_dataset
from clinvert.metrics import fold_targets, linear_agreement, r2_per_dim


def targets(z: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The latents (centred at their medians) and their folds as :func:`fold_targets` makes them,
    with names: ``|z_j|`` on the diagonal, ``z_j × sign(z_k)`` off it."""
    names = [
        f"abs({name})" if j == k else f"{name} × sign({other})"
        for j, name in enumerate(FACTORS)
        for k, other in enumerate(FACTORS)
    ]
    return np.c_[z - np.median(z, axis=0), fold_targets(z)], [*FACTORS, *names]


def main() -> None:
    """Print a markdown table of each ordered pair's worst directions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--worst", type=int, default=2, help="directions per ordered pair")
    args = parser.parse_args()
    codes = {}
    for run in args.runs:
        cfg = validate_config(read_run_config(run))
        data, h = encode_dataset(run, cfg, cfg.data.test_dir, cfg.eval.samples)
        codes[run] = (np.asarray(data.latents[: len(h)], dtype=np.float64), h)
    print(
        "| code of | read from | direction | agreement R² | affine R² from z | best target | r² |"
    )
    print("|---|---|---|---|---|---|---|")
    for a, b in permutations(args.runs, 2):
        z, h_b = codes[b]
        spectrum, directions = linear_agreement(codes[a][1], h_b, return_directions=True)
        table, names = targets(z)
        for i in range(args.worst):
            proj = (h_b - h_b.mean(0)) @ directions[:, i]
            affine = float(r2_per_dim(proj[:, None], z)[0])
            corr = np.corrcoef(np.c_[proj, table], rowvar=False)[0, 1:] ** 2
            best = int(np.argmax(corr))
            print(
                f"| {b} | {a} | {i + 1} | {spectrum[i]:.3f} | {affine:.3f} | {names[best]} | "
                f"{corr[best]:.3f} |"
            )


if __name__ == "__main__":
    main()
