"""A markdown table of finished 3DIdent runs: overall and per-factor scores, data and training size.

``clinvert threedident table RUN [RUN ...]`` prints it (or writes it with ``--out``). Each run
directory is read as the trainer left it (``config.yaml``, ``result.json``); the dataset's
``manifest.json`` (beside the run's ``data.train_dir`` / ``data.test_dir``) names the renderer and the
number of images, so a table never hides which backend its images came from.

Runs whose ``result.json`` holds ``final.knn_r2_per_factor`` (a held-out k-nearest-neighbour
regression from f(x) to each factor) get a second table of it: a factor low in both tables is absent
from the encoder's output, one low only in the first is there but not linearly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clinvert.config import (
    ConfigError,
    describe_model,
    describe_process,
    read_run_config,
    validate_config,
)
from clinvert.data.threedident.factors import FACTORS
from clinvert.sweep import read_result

#: The issue's bar for the small reproduction: every position factor and the mean over the factors.
POSITION_FACTORS = ("pos_x", "pos_y", "pos_z")
POSITION_AT_LEAST = 0.9
MEAN_AT_LEAST = 0.8


def _manifest(path: str | Path | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        return json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _data_label(
    train_dir: str | None, test_dir: str | None, recorded: dict[str, Any] | None = None
) -> str:
    """'N / M at SxS, renderer': from what result.json recorded, else the datasets' manifests."""
    recorded = recorded or {}
    train = recorded.get("train") or _manifest(train_dir)
    test = recorded.get("test") or _manifest(test_dir)
    if not train:
        return "?"
    size = recorded.get("size") or train.get("size", "?")
    renderer = train.get("renderer") or train.get("backend", "?")
    n_test = test.get("n", "?") if test else "?"
    return f"{train.get('n', '?')} / {n_test} at {size}×{size}, {renderer}"


def run_row(run: str | Path) -> dict[str, Any]:
    """One run's summary: name, model, data, steps × batch, wall time, scores per factor."""
    run = Path(run)
    result = read_result(run)
    if result is None:
        raise ConfigError(f"run: no readable result.json in {run}")
    if result.get("status") != "finished":
        raise ConfigError(f"run: {run} has status {result.get('status')!r}, not 'finished'")
    cfg = validate_config(read_run_config(run))
    final = result["final"]
    per_factor = final.get("r2_per_factor")
    if not isinstance(per_factor, dict):
        raise ConfigError(f"run: {run}/result.json has no final.r2_per_factor (not a 3DIdent run)")
    scores = {f: float(per_factor[f]) for f in FACTORS}
    mean = sum(scores.values()) / len(scores)
    knn = final.get("knn_r2_per_factor")
    model = describe_model(cfg)
    if cfg.train.objective == "supervised":
        model += " (supervised: regression on z)"
    positions_ok = all(scores[f] >= POSITION_AT_LEAST for f in POSITION_FACTORS)
    return {
        "run": run.name,
        "data": _data_label(cfg.data.train_dir, cfg.data.test_dir, result.get("data")),
        "model": model,
        "process": describe_process(cfg),
        "steps": result.get("steps"),
        "batch_size": cfg.train.batch_size,
        "wall_seconds": result.get("wall_seconds"),
        "identity_r2": (result.get("identity") or {}).get("r2"),
        "r2": final.get("r2"),
        "mcc": final.get("mcc"),
        "r2_per_factor": scores,
        "mean": mean,
        "knn_r2_per_factor": {f: float(knn[f]) for f in FACTORS} if isinstance(knn, dict) else None,
        "meets_bar": positions_ok and mean >= MEAN_AT_LEAST,
    }


def _f(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{float(x):.{digits}f}"


def markdown_table(runs: list[str | Path]) -> str:
    """The markdown table of ``runs`` (one line per run), with the bar of the issue as last column."""
    rows = [run_row(r) for r in runs]
    head = (
        "| run | pairs (latent process) | model | images (train / test) | steps × batch | wall s "
        "| identity R² (pixels) | R² | MCC | "
        + " | ".join(FACTORS)
        + " | mean of factors | positions ≥ 0.9 and mean ≥ 0.8 |"
    )
    lines = [head, "|" + "---|" * (10 + len(FACTORS) + 1)]
    for r in rows:
        factors = " | ".join(f"{r['r2_per_factor'][f]:.3f}" for f in FACTORS)
        lines.append(
            f"| {r['run']} | {r['process']} | {r['model']} | {r['data']} | "
            f"{r['steps']} × {r['batch_size']} | {_f(r['wall_seconds'], 0)} | "
            f"{_f(r['identity_r2'])} | {_f(r['r2'])} | {_f(r['mcc'])} | {factors} | "
            f"{r['mean']:.3f} | {'✓' if r['meets_bar'] else '✗ short'} |"
        )
    probed = [r for r in rows if r["knn_r2_per_factor"]]
    if probed:
        lines += [
            "",
            "kNN R² per factor (held-out 10-nearest-neighbour regression from f(x); a diagnostic, "
            "not the paper's metric):",
            "",
            "| run | " + " | ".join(FACTORS) + " | mean |",
            "|" + "---|" * (len(FACTORS) + 2),
        ]
        for r in probed:
            knn = r["knn_r2_per_factor"]
            values = " | ".join(f"{knn[f]:.3f}" for f in FACTORS)
            lines.append(f"| {r['run']} | {values} | {sum(knn.values()) / len(knn):.3f} |")
    return "\n".join(lines) + "\n"
