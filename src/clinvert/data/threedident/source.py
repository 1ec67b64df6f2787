"""The 3DIdent pair source: rendered images, nearest-neighbour positive pairs, per-factor scores.

Training pairs come from a :class:`~clinvert.data.pairs.PairBatches` loader (latent pairs drawn from
the configured conditional, snapped to the nearest rendered latents, ``data.workers`` processes).
Batch k depends only on (seed, k), so a resumed run continues exactly, with or without workers.
Evaluation uses the held-out test dataset (its first ``eval.samples`` images), with per-factor
scores; the identity baseline is a held-out linear fit on average-pooled pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from clinvert import metrics
from clinvert.data.sources import (
    STREAM_TRAIN,
    PairSource,
    Shards,
    check_split,
    evenly_spaced,
    pixel_grid,
)
from clinvert.errors import ConfigError
from clinvert.registry import SOURCES
from clinvert.spec import DataSpec

if TYPE_CHECKING:
    from clinvert.config import RunConfig

#: Training images used to fit the per-channel input normalisation of an image encoder.
IMAGE_NORM_SAMPLES = 2_000
#: Images per forward pass when encoding a dataset.
IMAGE_CHUNK = 256


class ThreeDIdentData(DataSpec):
    """``data`` section of a 3DIdent run.

    ``train_dir`` / ``test_dir`` are dataset directories (see :mod:`clinvert.data.images`), relative
    to the working directory; ``workers`` loader processes build the nearest-neighbour pairs.
    """

    source: Literal["threedident"] = "threedident"
    train_dir: str | None = None
    test_dir: str | None = None
    workers: Annotated[int, Field(ge=0, le=64)] = 2
    #: Resize images to ``size`` x ``size`` on the training device (None: the dataset's own size).
    size: Annotated[int, Field(ge=8, le=1024)] | None = None


class ThreeDIdentSource(PairSource):
    """Training pairs, the held-out test set and its scores of a 3DIdent run.

    Args:
        cfg: a validated image-run config (``data.source: threedident``).
        device: the training device (images cross as bytes and become floats there).

    Raises:
        ConfigError: one line naming ``data.train_dir`` / ``data.test_dir`` and the bad file.
    """

    spec = ThreeDIdentData
    observations = "image"

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        from clinvert.data.images import load_image_dataset
        from clinvert.data.pairs import PairBatches
        from clinvert.latents import NoiseLaw

        self.check_paths(cfg)
        loaded = {}
        for name in ("train_dir", "test_dir"):
            try:
                loaded[name] = load_image_dataset(getattr(cfg.data, name))
            except ConfigError as exc:
                raise ConfigError(f"data.{name}: {exc}") from None
        self.train, self.test = loaded["train_dir"], loaded["test_dir"]
        for name, ds in loaded.items():
            if len(ds.factors) != cfg.latent.dim:
                raise ConfigError(
                    f"latent.dim: the dataset in data.{name} has {len(ds.factors)} factors, "
                    f"got dim={cfg.latent.dim}"
                )
            if ds.mode == "box" and tuple(cfg.latent.box) != (-1.0, 1.0):
                raise ConfigError(
                    f"latent.box: box-mode datasets have latents in [-1, 1], got {cfg.latent.box}"
                )
        if self.train.size != self.test.size and cfg.data.size is None:
            raise ConfigError(
                f"data.size: train images are {self.train.size}x{self.train.size}, test images "
                f"{self.test.size}x{self.test.size}; set data.size to train and test at one size"
            )
        if self.test.factors != self.train.factors or self.test.mode != self.train.mode:
            raise ConfigError(
                "data.test_dir: factors or mode differ from data.train_dir "
                f"({self.test.mode} vs {self.train.mode})"
            )
        self.cfg, self.device = cfg, device
        self.correlation = cfg.eval.correlation
        self.in_dim = 3
        cond = cfg.latent.conditional.model_dump(exclude={"name"})
        self.batches = PairBatches(
            self.train,
            NoiseLaw(cfg.latent.conditional.name, **cond),
            cfg.train.batch_size,
            cfg.train.seed,
            STREAM_TRAIN,
            box=(cfg.latent.box[0], cfg.latent.box[1]),
            shards=Shards.of(cfg),
            anchors_only=cfg.train.objective == "supervised",
        )
        self.eval_count = min(cfg.eval.samples, len(self.test))
        self.z_test = torch.tensor(self.test.latents[: self.eval_count])  # a copy: aligned
        self._iter: Any = None

    # ----- config time -------------------------------------------------------------------------
    @classmethod
    def observations_of(cls, cfg: RunConfig) -> str | None:
        return "image"

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """A 3DIdent run: both directories named, latents in a box, uniform, a noise conditional."""
        data, latent = cfg.data, cfg.latent
        for name in ("train_dir", "test_dir"):
            if not getattr(data, name):
                raise ConfigError(f"data.{name}: required for source {data.source}, got None")
        if latent.space != "box":
            raise ConfigError(
                f"latent.space: the 3DIdent latents live in a box, got {latent.space!r} (use box)"
            )
        if latent.marginal.name != "uniform":
            raise ConfigError(
                f"latent.marginal.name: pairs start from the dataset's uniform latents, got "
                f"{latent.marginal.name!r} (use uniform)"
            )
        if latent.conditional.name not in ("normal", "laplace", "gennorm"):
            raise ConfigError(
                f"latent.conditional.name: {latent.conditional.name} is not defined on a box "
                "(allowed: normal, laplace, gennorm)"
            )

    @classmethod
    def check_paths(cls, cfg: RunConfig) -> None:
        for name in ("train_dir", "test_dir"):
            path = Path(str(getattr(cfg.data, name)))
            if not path.is_dir():
                raise ConfigError(f"data.{name}: dataset directory not found, got {str(path)!r}")

    # ----- training ----------------------------------------------------------------------------
    def _batch(self, step: int) -> dict[str, Tensor]:
        """Batch ``step`` of training pairs; the loader starts at the first step asked for."""
        from clinvert.data.pairs import make_pair_loader

        if self._iter is None:
            loader = make_pair_loader(
                self.batches,
                step,
                max(self.cfg.train.steps, step + 1),
                self.cfg.data.workers,
                pin_memory=self.device.type == "cuda",
            )
            self._iter, self._next = iter(loader), step
        if step != self._next:
            raise RuntimeError(f"pair loader is at batch {self._next}, asked for {step}")
        self._next += 1
        return next(self._iter)

    def floats(self, images: Tensor) -> Tensor:
        """uint8 [B, S, S, 3] -> float [B, 3, S, S] in [0, 1] on the training device."""
        from clinvert.data.images import images_to_float

        return images_to_float(images, self.device, self.cfg.data.size)

    def pairs(self, step: int) -> tuple[Tensor, Tensor]:
        batch = self._batch(step)
        return self.floats(batch["x"]), self.floats(batch["x_tilde"])

    def supervised_width(self) -> int:
        """Ten targets in box mode; in periodic mode each angle is regressed as (cos, sin)."""
        return len(self.train.factors) + int(self.train.periodic_mask().sum())

    def labelled(self, step: int) -> tuple[Tensor, Tensor]:
        """Images and their regression targets: the latents, with each angle of a periodic
        dataset as its (cos, sin) pair (:func:`clinvert.metrics.embed_latents`), which has no
        jump at +-pi."""
        batch = self._batch(step)
        z = batch["z"]
        periodic = self.train.periodic_mask()
        if periodic.any():
            z = torch.from_numpy(metrics.embed_latents(z.numpy(), periodic))
        return self.floats(batch["x"]), z.to(self.device)

    def norm_sample(self) -> Tensor:
        """Evenly spaced training images (float [M, 3, S, S]) to fit the input normalisation."""
        idx = evenly_spaced(len(self.train), IMAGE_NORM_SAMPLES)
        return self.floats(torch.from_numpy(np.array(self.train.images[idx])))

    def close(self) -> None:
        """Stop the loader's worker processes."""
        self._iter = None

    # ----- evaluation --------------------------------------------------------------------------
    def latents(self, split: str) -> Tensor:
        check_split(split)  # both splits are the held-out test images
        return self.z_test

    def _test_chunks(self):
        for i in range(0, self.eval_count, IMAGE_CHUNK):
            chunk = np.array(self.test.images[i : min(i + IMAGE_CHUNK, self.eval_count)])
            yield self.floats(torch.from_numpy(chunk))

    @torch.no_grad()
    def encode(self, model: torch.nn.Module, split: str) -> Tensor:
        check_split(split)
        was_training = model.training
        model.eval()
        out = [model(x).cpu() for x in self._test_chunks()]
        model.train(was_training)
        return torch.cat(out)

    def pixel_features(self) -> Tensor:
        """Average-pooled pixels of the test images [M, 3 k^2] (see :func:`pixel_grid`)."""
        self.pixel_grid = pixel_grid(self.eval_count)
        pool = torch.nn.functional.adaptive_avg_pool2d
        return torch.cat([pool(x, self.pixel_grid).flatten(1).cpu() for x in self._test_chunks()])

    def baseline(self) -> dict[str, Any]:
        out = self.score(self.pixel_features(), "test")
        grid = self.pixel_grid
        return {"baseline": f"linear fit on {grid}x{grid}x3 average-pooled pixels", **out}

    def score(self, h: Tensor, split: str = "test") -> dict[str, Any]:
        """R^2 and MCC, overall and per factor, of ``h`` against the test latents.

        In a periodic dataset an angle factor is scored through its (cos, sin) embedding (see
        :func:`clinvert.metrics.factor_scores`).
        """
        return metrics.factor_scores(
            self.z_test.numpy(), h, self.test.factors, self.test.periodic_mask(), self.correlation
        )

    def result_fields(self) -> dict[str, Any]:
        return {
            "mixing": None,
            "eval_samples": self.eval_count,
            "data": {
                "train": self.train.describe(),
                "test": self.test.describe(),
                "size": self.cfg.data.size or self.train.size,
                "factors": self.test.factors,
                "workers": self.cfg.data.workers,
            },
        }


SOURCES.register("threedident", ThreeDIdentSource)
