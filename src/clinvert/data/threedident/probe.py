"""Where a 3DIdent run's missing R² went: its encoder re-applied to training and held-out images.

``clinvert threedident probe RUN [RUN ...]`` encodes the first images of the run's
``data.train_dir`` (images the encoder was trained on) and of its ``data.test_dir`` (held out) and
scores both the way the run scored itself (:func:`clinvert.metrics.factor_scores`: held-out halves
of an affine fit, and of a kNN regression). Three readings per factor:

* low on the training images too: the encoder has not learnt the factor (an optimisation or
  objective problem: more steps, another conditional), not an overfitting one;
* high on the training images, low on the held-out ones: it has learnt them by heart (more
  images, or fewer steps);
* kNN high where the affine fit is low: the factor is in the code, but not linearly.

With ``--mlp N`` a small MLP (:func:`clinvert.metrics.mlp_r2_per_dim`) is fit on the codes of the
first N training images and scored on the held-out ones: in ten dimensions and a few thousand
images it reads smooth factors that kNN misses, so it is the better "is it in the code at all".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clinvert.config import ConfigError, read_run_config, validate_config
from clinvert.data.threedident.factors import FACTORS

#: The two datasets a run names, in the table's order.
SPLITS = (("train", "train_dir"), ("test", "test_dir"))
#: Images per forward pass.
CHUNK = 500


def encode_dataset(run: str | Path, cfg: Any, data_dir: str, count: int) -> tuple[Any, np.ndarray]:
    """The run's trained encoder applied to the first ``count`` images of ``data_dir``.

    Images are resized to ``data.size`` as in training. Returns (the dataset, h [count, d]).
    """
    from clinvert.estimator import load

    return _encode(load(run), cfg, data_dir, count)


def _threedident_run(run: Path) -> Any:
    """The validated config of a 3DIdent run directory, or a one-line ConfigError."""
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"run: {run} is not a run directory (no config.yaml)")
    if not (run / "checkpoint.pt").is_file():
        raise ConfigError(f"run: {run} has no checkpoint.pt (no trained encoder to probe)")
    cfg = validate_config(read_run_config(run))
    if cfg.data.source != "threedident":
        raise ConfigError(f"run: {run} is not a 3DIdent run (data.source {cfg.data.source})")
    return cfg


def check_samples(samples: int) -> int:
    """``samples`` if it is at least 4 (images per scored set), else a one-line ConfigError."""
    if samples < 4:
        raise ConfigError(f"samples: need at least 4 images per split, got {samples}")
    return samples


def _check_fit_images(fit_images: int) -> int:
    if fit_images < 4:
        raise ConfigError(f"mlp: need at least 4 training images to fit, got {fit_images}")
    return fit_images


class RunCodes:
    """One run's config and encoder, and its codes of each dataset it was asked for (encoded once:
    the affine / kNN table and the MLP table share the held-out images' codes; ``agree`` reads
    several runs' codes of one dataset)."""

    def __init__(self, run: str | Path) -> None:
        from clinvert.estimator import load

        self.run = Path(run)
        self.cfg = _threedident_run(self.run)
        self.estimator = load(self.run)
        self._codes: dict[tuple[str, int], tuple[Any, np.ndarray]] = {}

    def count(self, samples: int | None) -> int:
        """Images scored per split: ``samples``, or the run's ``eval.samples``; at least 4."""
        return check_samples(self.cfg.eval.samples if samples is None else samples)

    def splits(self, data_dirs: list[str] | None, train: bool) -> list[tuple[str, str, str]]:
        """(split, field that named it, folder) to score: ``data_dirs`` as ``other`` if given,
        else the run's own test set, after its training set when ``train``."""
        if data_dirs:
            return [("other", "--data", d) for d in data_dirs]
        named = [(split, f"data.{field}", getattr(self.cfg.data, field)) for split, field in SPLITS]
        return named if train else named[1:]

    def codes(self, field: str, data_dir: str, count: int) -> tuple[Any, np.ndarray]:
        """(the dataset, h [count, d]); a one-line error names the field that named the folder."""
        key = (str(data_dir), count)
        if key not in self._codes:
            try:
                self._codes[key] = _encode(self.estimator, self.cfg, data_dir, count)
            except ConfigError as err:
                raise ConfigError(f"{field}: {err}") from None
        return self._codes[key]


def _encode(estimator: Any, cfg: Any, data_dir: str, count: int) -> tuple[Any, np.ndarray]:
    """``estimator`` applied to the first ``count`` images of ``data_dir`` at ``data.size``."""
    from clinvert.data.images import images_to_float, load_image_dataset

    data = load_image_dataset(data_dir)
    count = min(count, len(data))
    codes = []
    for i in range(0, count, CHUNK):
        chunk = np.array(data.images[i : min(i + CHUNK, count)])  # a writable copy
        codes.append(estimator.transform(images_to_float(chunk, size=cfg.data.size)))
    return data, np.concatenate(codes)


def probe_rows(
    run: str | Path, samples: int | None = None, data_dirs: list[str] | None = None
) -> list[dict[str, Any]]:
    """One row per split (``train``, ``test``) of one run: linear and kNN R² per factor.

    Args:
        run: a 3DIdent run directory with a checkpoint (finished or not).
        samples: images scored per split (default: the run's ``eval.samples``; at least 4).
        data_dirs: score these dataset directories instead (split ``other``), e.g. images of
            another renderer: how far the encoder transfers without training on them.

    Raises:
        ConfigError: one line for a directory that is not a 3DIdent run with a checkpoint, a bad
            ``samples``, or a dataset that cannot be read.
    """
    return _probe_rows(RunCodes(run), samples, data_dirs)


def _probe_rows(
    coded: RunCodes, samples: int | None, data_dirs: list[str] | None
) -> list[dict[str, Any]]:
    from clinvert.metrics import factor_scores

    count = coded.count(samples)
    rows = []
    for split, field, data_dir in coded.splits(data_dirs, train=True):
        data, h = coded.codes(field, data_dir, count)
        z = np.asarray(data.latents[: len(h)], dtype=np.float64)
        scores = factor_scores(z, h, list(data.factors), data.periodic_mask())
        rows.append(
            {
                "run": coded.run.name,
                "split": split,
                "data_dir": str(data_dir),
                "images": len(h),
                "linear": scores["r2_per_factor"],
                "knn": scores["knn_r2_per_factor"],
            }
        )
    return rows


def mlp_rows(
    run: str | Path,
    fit_images: int,
    samples: int | None = None,
    data_dirs: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Held-out MLP R² per factor of one run: fit on the codes of the first ``fit_images`` images
    of ``data.train_dir``, scored on ``data.test_dir`` (or each of ``data_dirs``).

    Raises:
        ConfigError: one line for a bad run directory, ``fit_images`` < 4, or an unreadable dataset.
    """
    _check_fit_images(fit_images)
    return _mlp_rows(RunCodes(run), fit_images, samples, data_dirs)


def _mlp_rows(
    coded: RunCodes, fit_images: int, samples: int | None, data_dirs: list[str] | None
) -> list[dict[str, Any]]:
    from clinvert.metrics import columns_per_factor, embed_latents, mlp_r2_per_dim

    count = coded.count(samples)

    def targets(data: Any, h: np.ndarray) -> np.ndarray:
        return embed_latents(np.asarray(data.latents[: len(h)]), data.periodic_mask())

    train_dir = coded.cfg.data.train_dir
    train, h_fit = coded.codes("data.train_dir", train_dir, fit_images)
    z_fit = targets(train, h_fit)
    rows = []
    for split, field, data_dir in coded.splits(data_dirs, train=False):
        data, h = coded.codes(field, data_dir, count)
        if list(data.factors) != list(train.factors) or not np.array_equal(
            data.periodic_mask(), train.periodic_mask()
        ):
            raise ConfigError(f"{field}: {data_dir} holds other factors than {train_dir}")
        cols = mlp_r2_per_dim(z_fit, h_fit, targets(data, h), h)
        rows.append(
            {
                "run": coded.run.name,
                "split": split,
                "data_dir": str(data_dir),
                "images": len(h),
                "fit_images": len(h_fit),
                "mlp": columns_per_factor(cols, list(data.factors), data.periodic_mask()),
            }
        )
    return rows


def probe_table(
    runs: list[str | Path],
    samples: int | None = None,
    data_dirs: list[str] | None = None,
    mlp: int | None = None,
) -> str:
    """Markdown table of :func:`probe_rows` for each run: per factor ``affine / kNN`` R²; with
    ``mlp`` a second table of :func:`mlp_rows` (an MLP fit on ``mlp`` training images' codes).

    The ``test`` row's affine R² is the run's own score (same images, same halves) when
    ``samples`` is the run's ``eval.samples``.
    """
    if mlp is not None:  # both refused before any encoding
        _check_fit_images(mlp)
    if samples is not None:
        check_samples(samples)
    head = " | ".join(FACTORS)
    lines = [
        "R² per factor as `affine / kNN` (held-out halves of the scored images), on images the "
        "encoder was trained on (`train`), on held-out ones (`test`) or on other datasets "
        "(`other`).",
        "",
        f"| run | split | images | mean affine | mean kNN | {head} |",
        "|" + "---|" * (5 + len(FACTORS)),
    ]
    coded = [RunCodes(run) for run in runs]
    for run in coded:
        for row in _probe_rows(run, samples, data_dirs):
            lin, knn = row["linear"], row["knn"]
            cells = " | ".join(f"{lin[f]:.3f} / {knn[f]:.3f}" for f in FACTORS)
            lines.append(
                f"| {row['run']} | {row['split']} (`{row['data_dir']}`) | {row['images']} | "
                f"{np.mean(list(lin.values())):.3f} | {np.mean(list(knn.values())):.3f} | {cells} |"
            )
    if mlp is not None:
        lines += [
            "",
            f"MLP R² per factor (two hidden layers of 256, fit on the codes of the first {mlp} "
            "training images, scored on the held-out or other images).",
            "",
            f"| run | split | images | mean MLP | {head} |",
            "|" + "---|" * (4 + len(FACTORS)),
        ]
        for run in coded:
            for row in _mlp_rows(run, mlp, samples, data_dirs):
                cells = " | ".join(f"{row['mlp'][f]:.3f}" for f in FACTORS)
                mean = np.mean(list(row["mlp"].values()))
                lines.append(
                    f"| {row['run']} | {row['split']} (`{row['data_dir']}`) | {row['images']} | "
                    f"{mean:.3f} | {cells} |"
                )
    return "\n".join(lines) + "\n"
