"""Axis alignment of finished runs, measured against the protocol's chance level.

An MCC says "the code is a permutation of the latents" only next to what a code in *random*
directions scores on the same latents with the same number of outputs: with 3 latents and 10
outputs (KITTI Masks), a random linear code already reaches MCC 0.9 on average, because the
Hungarian matching picks, for each latent, the best of ten random directions. This module re-encodes
the test set of each finished run (from its ``checkpoint.pt``) and reports, per run and per row:
MCC and affine R^2 (as in ``result.json``), :func:`~clinvert.metrics.alignment` (which extra
outputs cannot inflate), and both scores for random linear codes of the same latents
(:func:`~clinvert.metrics.chance_level`). ``clinvert alignment RUN...`` is its command.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clinvert import metrics
from clinvert.config import read_run_config, validate_config
from clinvert.errors import ConfigError
from clinvert.rundir import CHECKPOINT, load_checkpoint, trained_weights

RESULT = "result.json"


def find_runs(paths: list[str | Path]) -> tuple[list[Path], int]:
    """Finished run directories under ``paths`` and the number of unfinished ones skipped.

    A path is a run directory (``config.yaml``, ``checkpoint.pt`` and a finished ``result.json``)
    or a folder searched for them. Raises a one-line ConfigError for a path that does not exist,
    a named run that cannot be scored, or when nothing is found.
    """
    runs: list[Path] = []
    skipped = 0
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"alignment: {path} does not exist")
        if (path / "config.yaml").is_file():
            _check_scorable(path)
            runs.append(path)
            continue
        for ckpt in sorted(path.rglob(CHECKPOINT)):
            run = ckpt.parent
            if _finished(run) and (run / "config.yaml").is_file():
                runs.append(run)
            else:
                skipped += 1
    if not runs:
        raise ConfigError(
            f"alignment: no finished run with {CHECKPOINT} under {', '.join(map(str, paths))} "
            "(checkpoints are not committed: score runs trained on this machine)"
        )
    return sorted(set(runs)), skipped


def _finished(run: Path) -> bool:
    try:
        return json.loads((run / RESULT).read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


def _check_scorable(run: Path) -> None:
    if not (run / CHECKPOINT).is_file():
        raise ConfigError(
            f"alignment: {run} has no {CHECKPOINT} (checkpoints are not committed; "
            "score a run trained on this machine)"
        )
    if not _finished(run):
        raise ConfigError(f"alignment: {run} is not finished ({RESULT} missing or not finished)")


def encode_test_set(run: Path) -> tuple[np.ndarray, np.ndarray, str, dict[str, Any]]:
    """Latents z [M, K] and codes h [M, d] of a finished run's test set, the run's correlation
    ("pearson" or "spearman") and its ``result.json``."""
    from clinvert.experiment import build_experiment

    cfg = validate_config(read_run_config(run))
    device = torch.device("cpu")
    exp = build_experiment(cfg, device)
    try:
        state = load_checkpoint(run / CHECKPOINT, device)
        exp.model.load_state_dict(trained_weights(state))
        exp.model.eval()
        z = exp.source.latents("test")
        if z is None:
            raise ConfigError(f"alignment: {run}'s data has no ground-truth latents to score")
        h = exp.source.encode(exp.model, "test")
        correlation = exp.source.correlation
    finally:
        exp.source.close()
    result = json.loads((run / RESULT).read_text())
    return z.double().numpy(), h.double().numpy(), correlation, result


def score_runs(
    runs: list[Path], trials: int = 100, seed: int = 0, progress: bool = True
) -> list[dict[str, Any]]:
    """One record per run: its name, objective, seed, MCC, R^2, alignment and the random-code
    levels (mean, 95th percentile) of MCC and alignment on its own test latents."""
    chance: dict[tuple[str, int, str], dict[str, float]] = {}
    records = []
    for i, run in enumerate(runs):
        z, h, correlation, result = encode_test_set(run)
        key = (hashlib.sha1(z.tobytes()).hexdigest(), h.shape[1], correlation)
        if key not in chance:
            chance[key] = metrics.chance_level(z, h.shape[1], trials, correlation, seed)
        floor = chance[key]
        record = {
            "run": str(run),
            "name": result.get("name"),
            "objective": (result.get("config") or {}).get("train", {}).get("objective", run.name),
            "seed": result.get("seed"),
            "outputs": int(h.shape[1]),
            "latents": int(z.shape[1]),
            "correlation": correlation,
            "mcc": metrics.mcc(z, h, correlation),
            "mcc_recorded": (result.get("final") or {}).get("mcc"),
            "r2": metrics.r2(z, h),
            "alignment": metrics.alignment(z, h, correlation),
            "random_mcc_mean": floor["mcc"],
            "random_mcc_p95": floor["mcc_p95"],
            "random_alignment_mean": floor["alignment"],
            "random_alignment_p95": floor["alignment_p95"],
            "trials": trials,
        }
        records.append(record)
        if progress:
            print(
                f"[{i + 1}/{len(runs)}] {run}: MCC {record['mcc']:.3f} (random codes "
                f"{record['random_mcc_mean']:.3f}), alignment {record['alignment']:.3f} "
                f"(random {record['random_alignment_mean']:.3f})",
                flush=True,
            )
    return records


def _mean_std(values: list[float]) -> str:
    """Mean ± sample standard deviation (ddof=1, as in the reproduction tables)."""
    arr = np.asarray(values, dtype=float)
    return f"{arr.mean():.3f} ± {arr.std(ddof=1):.3f}" if len(arr) > 1 else f"{arr[0]:.3f}"


def alignment_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one line per (config name, objective) with the mean ± std over its runs (the
    random-code levels averaged over the runs' test sets)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((str(rec["name"]), str(rec["objective"])), []).append(rec)
    lines = [
        "| run | objective | runs | outputs | MCC | random-code MCC (mean / 95th pct) "
        "| alignment | random-code alignment (mean / 95th pct) | affine R² |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, objective), recs in groups.items():

        def avg(key: str, recs: list[dict[str, Any]] = recs) -> float:
            return float(np.mean([r[key] for r in recs]))

        lines.append(
            f"| {name} | {objective} | {len(recs)} | {recs[0]['outputs']} "
            f"| {_mean_std([r['mcc'] for r in recs])} "
            f"| {avg('random_mcc_mean'):.3f} / {avg('random_mcc_p95'):.3f} "
            f"| {_mean_std([r['alignment'] for r in recs])} "
            f"| {avg('random_alignment_mean'):.3f} / {avg('random_alignment_p95'):.3f} "
            f"| {_mean_std([r['r2'] for r in recs])} |"
        )
    return "\n".join(lines) + "\n"
