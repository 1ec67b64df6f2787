"""Do two 3DIdent runs' encoders agree up to an affine map? A check that needs no true latents.

``clinvert threedident agree RUN RUN [RUN ...]`` encodes the same held-out images with every run
and scores each pair by :func:`clinvert.metrics.linear_agreement`: the held-out R² of an affine fit
from one code to each whitened direction of the other. If both runs inverted the generator up to an
affine map (the theory's claim for the box / Normal / L2 setting), each code is an affine image of
the other and every direction is read (up to both codes' noise); if one holds a factor folded, e.g.
``γ × sign(α)`` where the other holds ``γ``, one direction stays near 0 in both fits, whatever
affine map is tried. The pair's *agreement* is the worse of its two worst directions.

The latents are never read, so the check works on a user's own data; what it cannot tell is which
of two disagreeing runs is the folded one, nor catch two runs folded the same way. Runs that share
their first weights (a phase started from the same ``train.init_from``) share its folds too: compare
runs trained from independent starts (the table's ``shared start`` column names any start two runs
share). A factor one run holds and the other lacks leaves a direction apart too, so two runs agree
only once both hold every factor they are compared on. With three or more independent runs, a run
that agrees with none of the others is the one to distrust.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np

from clinvert.config import ConfigError, read_run_config
from clinvert.data.threedident.probe import RunCodes, check_samples

#: A direction read below this R² counts as one the two codes do not share (each such direction is
#: about one factor that one run holds and the other does not, or holds folded).
APART = 0.5


def _same_images(codes: list[RunCodes], data: str | None) -> str:
    """The folder every run encodes: ``data`` if given, else their common ``data.test_dir``."""
    if data is not None:
        return data
    first = codes[0]
    for other in codes[1:]:
        if Path(other.cfg.data.test_dir).resolve() != Path(first.cfg.data.test_dir).resolve():
            raise ConfigError(
                f"data.test_dir: {other.run} is tested on {other.cfg.data.test_dir}, {first.run} "
                f"on {first.cfg.data.test_dir}; pass --data DIR to encode the same images"
            )
    return first.cfg.data.test_dir


def _lineage(run: Path, init_from: str | None) -> set[Path]:
    """The run directory and every run its weights descend from through ``train.init_from``."""
    seen = {run.resolve()}
    while init_from is not None:
        start = Path(init_from)
        start = (start if start.is_dir() else start.parent).resolve()
        if start in seen:
            break
        seen.add(start)
        try:
            init_from = read_run_config(start).get("train", {}).get("init_from")
        except (ConfigError, OSError, AttributeError):
            break  # a start without a readable config ends the chain
    return seen


def agreement_rows(
    runs: list[str | Path], samples: int | None = None, data: str | None = None
) -> list[dict[str, object]]:
    """One row per pair of runs: their worst-direction and mean R² both ways, and the agreement.

    ``shared_start`` names the runs both descend from through ``train.init_from`` (or one of the
    two, if the other started from it): such a pair shares that start's folds, so its agreement
    does not vouch for either. Every run encodes the first ``samples`` images (default: the
    smallest ``eval.samples`` of the runs) of ``data`` (default: the runs' common
    ``data.test_dir``).

    Raises:
        ConfigError: one line for fewer than two runs, a directory that is not a 3DIdent run with a
            checkpoint, runs tested on different folders without ``--data``, or too few samples.
    """
    if len(runs) < 2:
        raise ConfigError(f"runs: need at least two runs to compare, got {len(runs)}")
    codes = [RunCodes(run) for run in runs]
    folder = _same_images(codes, data)
    count = check_samples(min(c.cfg.eval.samples for c in codes) if samples is None else samples)
    field = "--data" if data is not None else "data.test_dir"
    h = [c.codes(field, folder, count)[1] for c in codes]  # one folder and count: one length
    from clinvert.metrics import linear_agreement

    lineages = [_lineage(c.run, c.cfg.train.init_from) for c in codes]
    rows = []
    for i, j in combinations(range(len(codes)), 2):
        ab, ba = linear_agreement(h[i], h[j]), linear_agreement(h[j], h[i])
        shared = sorted(p.name for p in lineages[i] & lineages[j])
        rows.append(
            {
                "a": str(codes[i].run),
                "b": str(codes[j].run),
                "images": len(h[i]),
                "worst_ab": float(ab[0]),
                "worst_ba": float(ba[0]),
                "mean_ab": float(np.mean(ab)),
                "mean_ba": float(np.mean(ba)),
                "apart_ab": int((ab < APART).sum()),
                "apart_ba": int((ba < APART).sum()),
                "agreement": float(min(ab[0], ba[0])),
                "shared_start": shared,
            }
        )
    return rows


def agreement_table(
    runs: list[str | Path], samples: int | None = None, data: str | None = None
) -> str:
    """Markdown: :func:`agreement_rows` as a table, then each run's best partner."""
    rows = agreement_rows(runs, samples, data)
    lines = [
        f"Label-free agreement on {rows[0]['images']} images: held-out R² of an affine fit from "
        "one run's code to each whitened direction of the other's (worst and mean over "
        f"directions; apart: directions read below {APART:g}); agreement = the worse of the two "
        "worst.",
        "",
        "| run a | run b | worst a→b | worst b→a | mean a→b | mean b→a | apart a→b / b→a "
        "| agreement | shared start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['a']} | {r['b']} | {r['worst_ab']:.3f} | {r['worst_ba']:.3f} | "
            f"{r['mean_ab']:.3f} | {r['mean_ba']:.3f} | {r['apart_ab']} / {r['apart_ba']} | "
            f"{r['agreement']:.3f} | {', '.join(r['shared_start']) or '—'} |"
        )
    names = list(dict.fromkeys([r["a"] for r in rows] + [r["b"] for r in rows]))
    lines += ["", "| run | best partner | agreement |", "|---|---|---|"]
    for name in names:
        best = max((r for r in rows if name in (r["a"], r["b"])), key=lambda r: r["agreement"])
        partner = best["b"] if best["a"] == name else best["a"]
        lines.append(f"| {name} | {partner} | {best['agreement']:.3f} |")
    return "\n".join(lines) + "\n"
