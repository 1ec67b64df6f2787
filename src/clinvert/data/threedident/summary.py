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
    TrainConfig,
    describe_model,
    describe_process,
    read_run_config,
    validate_config,
)
from clinvert.data.threedident.factors import FACTORS
from clinvert.sweep import read_result

#: The bar of a 3DIdent reproduction (the paper reports a mean R² of 0.98): every factor and the mean
#: over the ten of a contrastive run; a supervised run (the ceiling of an encoder and its budget) must
#: reach SUPERVISED_AT_LEAST on every factor.
FACTOR_AT_LEAST = 0.9
MEAN_AT_LEAST = 0.95
SUPERVISED_AT_LEAST = 0.95
BAR = (
    f"every factor ≥ {FACTOR_AT_LEAST:g} and mean ≥ {MEAN_AT_LEAST:g} "
    f"(supervised: every factor ≥ {SUPERVISED_AT_LEAST:g})"
)


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
    """'N / M at SxS, renderer[, periodic]': from what result.json recorded, else the datasets'
    manifests."""
    recorded = recorded or {}
    train = recorded.get("train") or _manifest(train_dir)
    test = recorded.get("test") or _manifest(test_dir)
    if not train:
        return "?"
    size = recorded.get("size") or train.get("size", "?")
    renderer = train.get("renderer") or train.get("backend", "?")
    n_test = test.get("n", "?") if test else "?"
    label = f"{train.get('n', '?')} / {n_test} at {size}×{size}, {renderer}"
    if train.get("mode") == "periodic":
        # periodic datasets without their circular list drew beta on a full turn (retired)
        label += ", periodic" if train.get("circular") else ", periodic with β on a full turn"
    return label


def run_row(run: str | Path) -> dict[str, Any]:
    """One run's summary: name, model, data, steps × batch, training seed, wall time, scores per
    factor."""
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
    if cfg.train.init_from is not None:  # its steps and wall time are this run's alone
        model += f" (started from the weights of {Path(cfg.train.init_from).name})"
    if cfg.train.objective == "supervised":
        meets = min(scores.values()) >= SUPERVISED_AT_LEAST
    else:
        meets = min(scores.values()) >= FACTOR_AT_LEAST and mean >= MEAN_AT_LEAST
    return {
        "run": run.name,
        "data": _data_label(cfg.data.train_dir, cfg.data.test_dir, result.get("data")),
        "model": model,
        "process": describe_process(cfg),
        "steps": result.get("steps"),
        "batch_size": cfg.train.batch_size,
        "seed": cfg.train.seed,
        "wall_seconds": result.get("wall_seconds"),
        "identity_r2": (result.get("identity") or {}).get("r2"),
        "r2": final.get("r2"),
        "mcc": final.get("mcc"),
        "r2_per_factor": scores,
        "mean": mean,
        "knn_r2_per_factor": {f: float(knn[f]) for f in FACTORS} if isinstance(knn, dict) else None,
        "meets_bar": meets,
    }


def _f(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{float(x):.{digits}f}"


def markdown_table(runs: list[str | Path]) -> str:
    """The markdown table of ``runs`` (one line per run), with the bar of the issue as last column.

    The ``seed`` column is the run's ``train.seed`` (initial weights, pairs and batches), so runs of
    one recipe that differ only by seed read as such."""
    rows = [run_row(r) for r in runs]
    head = (
        "| run | pairs (latent process) | model | images (train / test) | steps × batch | seed | wall s "
        "| identity R² (pixels) | R² | MCC | "
        + " | ".join(FACTORS)
        + f" | mean of factors | {BAR} |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]  # one cell per header column
    for r in rows:
        factors = " | ".join(f"{r['r2_per_factor'][f]:.3f}" for f in FACTORS)
        lines.append(
            f"| {r['run']} | {r['process']} | {r['model']} | {r['data']} | "
            f"{r['steps']} × {r['batch_size']} | {r['seed']} | {_f(r['wall_seconds'], 0)} | "
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


def _batch_size(run: Path) -> int:
    """The batch size a run trained with, read from its ``config.yaml`` as written (a resolved config
    names it) without validating it: a plot of ``metrics.jsonl`` needs none of the run's code, so a
    run whose ``plugins`` are not importable here still plots."""
    train = read_run_config(run).get("train")
    batch = train.get("batch_size") if isinstance(train, dict) else None
    if batch is None:
        batch = TrainConfig.model_fields["batch_size"].default
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(
            f"train.batch_size: must be a positive integer in {run}/config.yaml, got {batch!r}"
        )
    return batch


def plot_factor_curves(runs: list[str | Path], out: str | Path) -> Path:
    """Per-factor R² against training budget (images seen: steps × batch), one panel per factor and
    one line per run, from each run's ``metrics.jsonl`` (written atomically as PNG).

    Rows without ``r2_per_factor`` (runs of older versions) are skipped; a run with none at all is a
    one-line ConfigError.
    """
    from matplotlib.figure import Figure

    from clinvert.io import read_jsonl, write_png

    curves = []
    for run in runs:
        run = Path(run)
        if not (run / "metrics.jsonl").is_file():
            raise ConfigError(f"run: no metrics.jsonl in {run}")
        batch = _batch_size(run)
        rows = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("r2_per_factor")]
        if not rows:
            raise ConfigError(f"run: {run}/metrics.jsonl holds no r2_per_factor rows")
        seen = [r["step"] * batch for r in rows]
        curves.append((run.name, seen, rows))
    fig = Figure(figsize=(16, 6.4))
    axes = fig.subplots(2, 5, sharex=True, sharey=True)
    for ax, factor in zip(axes.flat, FACTORS, strict=True):
        for name, seen, rows in curves:
            ax.plot(seen, [r["r2_per_factor"][factor] for r in rows], marker=".", label=name)
        ax.axhline(FACTOR_AT_LEAST, color="grey", lw=0.8, ls="--")
        ax.set_title(factor, fontsize=9)
        ax.set_ylim(-0.05, 1.0)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("training samples seen (steps × batch)")
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out R²")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"R² per factor over training (dashed: {FACTOR_AT_LEAST:g})", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(out, fig, dpi=90)
    return out


#: Bins of |beta| (the middle Euler angle, in latent units) for :func:`gimbal_table`. On scene 2
#: latent ±1 was ±pi/2, where alpha and gamma turn about one axis and only their sum or difference
#: shows (near it, almost only); since scene 3 it is ±pi/3, 30 degrees short of that lock.
GIMBAL_EDGES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


def _encode_test_images(run: Path, cfg: Any) -> tuple[Any, Any]:
    """The run's trained encoder applied to its held-out images: (z [M, 10], h [M, d])."""
    import numpy as np

    from clinvert.data.threedident.probe import encode_dataset

    test, h = encode_dataset(run, cfg, cfg.data.test_dir, cfg.eval.samples)
    return np.asarray(test.latents[: len(h)], dtype=np.float64), h


def _box_test_codes(run: Path, what: str) -> tuple[Any, Any]:
    """(z, h) of a box-mode 3DIdent run's held-out images, or a one-line ConfigError."""
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"run: {run} is not a run directory (no config.yaml)")
    cfg = validate_config(read_run_config(run))
    if cfg.data.source != "threedident":
        raise ConfigError(f"run: {run} is not a 3DIdent run (data.source {cfg.data.source})")
    if _manifest(cfg.data.test_dir).get("mode", "box") != "box":
        raise ConfigError(f"run: {run} was tested on periodic-mode latents; {what} need box mode")
    return _encode_test_images(run, cfg)


def folds_table(runs: list[str | Path]) -> str:
    """Markdown table: per run and factor, the held-out affine R² and the strongest fold.

    For factor j the fold column names the factor k whose sign best explains what an affine fit
    misses: the R² of ``z_j * sign(z_k)`` (``|z_j|`` when k = j) by
    :func:`clinvert.metrics.fold_r2`, on the run's held-out images (the first ``eval.samples``, the
    same halves as the run's own R²). An affine code scores about 0 there for every k; a factor at
    R² 0.3 whose fold scores 0.6 is in the code, linearly on each side of k's middle and flipped
    between them, which more training of a smooth map does not undo. A fold of j at k also makes
    ``z_k * sign(z_j)`` partly readable, so such pairs show in both rows.

    Raises:
        ConfigError: one line for a run that is not a box-mode 3DIdent run with a checkpoint.
    """
    from clinvert.metrics import fold_r2, r2_per_dim

    lines = [
        "| run | factor | affine R² | strongest fold | its R² |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        run = Path(run)
        z, h = _box_test_codes(run, "the folds")
        folds, total = fold_r2(z, h), r2_per_dim(z, h)
        for j, name in enumerate(FACTORS):
            k = int(folds[j].argmax())
            fold = f"abs({name})" if k == j else f"{name} × sign({FACTORS[k]})"
            lines.append(f"| {run.name} | {name} | {total[j]:.3f} | {fold} | {folds[j, k]:.3f} |")
    return "\n".join(lines) + "\n"


#: ``--matrix`` shorthands: the three Euler angles, or every factor.
FACTOR_GROUPS = {"rotations": ("rot_alpha", "rot_beta", "rot_gamma"), "all": FACTORS}


def parse_factors(spec: str) -> tuple[str, ...]:
    """Factor names from ``"rotations"``, ``"all"`` or a comma-separated list of names.

    Raises:
        ConfigError: one line naming the unknown factor and what is allowed.
    """
    if spec in FACTOR_GROUPS:
        return tuple(FACTOR_GROUPS[spec])
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    for name in names:
        if name not in FACTORS:
            allowed = ", ".join((*FACTOR_GROUPS, *FACTORS))
            raise ConfigError(f"matrix: unknown factor {name!r}; allowed: {allowed}")
    if not names:
        raise ConfigError("matrix: no factor named; give rotations, all or names like rot_alpha")
    return names


def fold_matrix_table(runs: list[str | Path], factors: tuple[str, ...]) -> str:
    """Markdown table: per run and factor j, the R² of ``z_j * sign(z_k)`` for every named k.

    Where :func:`folds_table` names each factor's strongest fold, this prints all of them among
    ``factors`` (``|z_j|`` on the diagonal), read by :func:`clinvert.metrics.fold_r2` on the same
    held-out images and halves. A code blind to the joint sign flip of j and k holds both
    ``z_j * sign(z_k)`` and ``z_k * sign(z_j)``, so such a fold shows as a symmetric pair.

    Raises:
        ConfigError: one line for a run that is not a box-mode 3DIdent run with a checkpoint.
    """
    from clinvert.metrics import fold_r2

    index = [FACTORS.index(name) for name in factors]
    lines = [
        "| run | factor j | " + " | ".join(f"z_j × sign({name})" for name in factors) + " |",
        "|---|---|" + "---|" * len(factors),
    ]
    for run in runs:
        run = Path(run)
        z, h = _box_test_codes(run, "the fold matrix")
        folds = fold_r2(z, h)
        for j in index:
            cells = " | ".join(f"{folds[j, k]:.3f}" for k in index)
            lines.append(f"| {run.name} | {FACTORS[j]} | {cells} |")
    return "\n".join(lines) + "\n"


def gimbal_table(runs: list[str | Path], edges: tuple[float, ...] = GIMBAL_EDGES) -> str:
    """Markdown table: each run's held-out R² of the three rotations per bin of |beta|.

    The rotation latents are Euler angles (R = Rz(gamma) Ry(beta) Rx(alpha)); at |beta| = pi/2
    alpha and gamma turn about one axis and only their sum or difference changes the image (gimbal
    lock), and near it they are hard to tell apart one by one. Scene 2 drew beta up to pi/2 (latent
    ±1), scene 3 up to pi/3 (:data:`~clinvert.data.threedident.factors.BETA_MAX`). The table shows
    how much of a run's rotation error sits near the largest |beta|. Each run's
    encoder is re-applied to its ``data.test_dir`` (the first ``eval.samples`` images, as in
    training) and scored by :func:`clinvert.metrics.r2_per_dim_by_bins` (the same halves as the
    run's own R²; each bin on the scale of the whole test half's variance).

    Raises:
        ConfigError: one line for a run that is not a finished box-mode 3DIdent run.
    """
    from clinvert.metrics import r2_per_dim, r2_per_dim_by_bins

    rotations = [FACTORS.index(f) for f in ("rot_alpha", "rot_beta", "rot_gamma")]
    beta = FACTORS.index("rot_beta")
    lines = [
        "| run | abs(β) bin | scored images | rot_alpha | rot_beta | rot_gamma |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        run = Path(run)
        z, h = _box_test_codes(run, "the |beta| bins")
        r2s, counts = r2_per_dim_by_bins(z, h, abs(z[:, beta]), edges)
        total = r2_per_dim(z, h)  # the run's own R² per factor
        for b, count in enumerate(counts):
            cells = " | ".join(f"{r2s[b, i]:.3f}" for i in rotations)
            close = "]" if b == len(counts) - 1 else ")"
            label = f"[{edges[b]:g}, {edges[b + 1]:g}{close}"
            lines.append(f"| {run.name} | {label} | {count} | {cells} |")
        cells = " | ".join(f"**{total[i]:.3f}**" for i in rotations)
        lines.append(f"| {run.name} | all | {len(z) - len(z) // 2} | {cells} |")
    return "\n".join(lines) + "\n"
