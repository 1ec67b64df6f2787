"""Print the rotations' 3x3 fold matrix of 3DIdent runs (exploratory; not part of the package).

Entry [j, k] is the held-out R² of ``z_j * sign(z_k)`` (``|z_j|`` on the diagonal) read by an
affine fit from the run's code: :func:`clinvert.metrics.fold_r2` restricted to α, β, γ. Where
``clinvert threedident folds`` names only each factor's strongest fold, this shows all of them.

    python results/threedident/exploratory/fold_matrix.py runs/a runs/b
"""

from __future__ import annotations

import sys
from pathlib import Path

from clinvert.data.threedident.factors import FACTORS
from clinvert.data.threedident.summary import _box_test_codes
from clinvert.metrics import fold_r2

ROTATIONS = ("rot_alpha", "rot_beta", "rot_gamma")


def main(runs: list[str]) -> None:
    """Print one markdown table: per run and rotation j, the fold R² at each rotation k."""
    index = [FACTORS.index(name) for name in ROTATIONS]
    print("| run | factor j | z_j × sign(α) | z_j × sign(β) | z_j × sign(γ) |")
    print("|---|---|---|---|---|")
    for run in runs:
        z, h = _box_test_codes(Path(run), "the fold matrix")
        folds = fold_r2(z, h)
        for j in index:
            cells = " | ".join(f"{folds[j, k]:.3f}" for k in index)
            print(f"| {Path(run).name} | {FACTORS[j]} | {cells} |")


if __name__ == "__main__":
    main(sys.argv[1:])
