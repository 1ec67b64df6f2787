"""The pair-source seam: everything that feeds training and evaluation, behind one interface.

A :class:`PairSource` gives the trainer

* ``pairs(step)``: batch ``step`` of positive pairs (x, x~), each [B, ...] float on the device;
* ``labelled(step)``: batch ``step`` of observations with their latents (x, z), for the supervised
  ceiling (sources without latents refuse it);
* ``encode(model, split)`` and ``latents(split)``: the observations of the evaluation set (``"eval"``
  during training, ``"test"`` at the end) through the model, and their ground-truth latents when
  known (None otherwise);
* ``score(h, split)``: R^2, MCC (and per-factor scores where the source names its factors);
* ``baseline()``: the identity baseline, the same scores computed from the observations themselves;
* ``norm_sample()``: observations to fit the encoder's input normalisation;
* ``state_dict()`` / ``load_state_dict()``: its part of the resumable state;
* ``result_fields()``: what it adds to ``result.json``.

Sources register in ``clinvert.registry.SOURCES`` under the name that ``data.source`` uses, with
their config section (``spec``) and their own rules (:meth:`PairSource.check_config`). The trainer
never asks which source it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from clinvert import metrics
from clinvert.errors import ConfigError
from clinvert.registry import SOURCES
from clinvert.spec import DataSpec

if TYPE_CHECKING:
    from clinvert.config import RunConfig

#: Independent random streams derived from the training seed.
STREAM_TRAIN, STREAM_EVAL, STREAM_TEST, STREAM_INIT, STREAM_INPUT_NORM = 0, 1, 2, 3, 4
#: The sampling noise of a model's training loss (SlowVAE's reparameterisation), per step.
STREAM_NOISE = 5
#: Observations per forward pass when a source encodes its evaluation set.
ENCODE_CHUNK = 16384
#: Side of the average-pooled pixel grid of an image identity baseline (at most).
PIXEL_BASELINE_GRID = 8
#: The evaluation splits.
SPLITS = ("eval", "test")


def derive_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for an independent random stream of a run."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint64)[0] >> 1)


def batch_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed of batch ``index`` of a random stream: batch k is a function of (seed, k)."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(2, dtype=np.uint64)
    return int(state[0] >> 1)


def shard_seed(seed: int, stream: int, index: int, shard: int, shards: int) -> int:
    """A 63-bit seed of shard ``shard`` of batch ``index``: a function of (seed, index, shard).

    A batch of one shard keeps :func:`batch_seed` (the batches of single-process runs are those of
    earlier versions)."""
    if shards == 1:
        return batch_seed(seed, stream, index)
    state = np.random.SeedSequence([seed, stream, index, shard]).generate_state(2, dtype=np.uint64)
    return int(state[0] >> 1)


@dataclass(frozen=True)
class Shards:
    """Which shards of every global batch this process draws.

    A global batch of ``train.batch_size`` rows is ``count`` shards of ``size`` rows each, shard j
    drawn from its own stream (:func:`shard_seed`); of N processes, rank r draws the ``local``
    shards ``first .. first + local - 1`` (r S/N onwards). One process with ``count`` shards draws
    them all: exactly the batch that ``count`` processes see together.
    """

    count: int = 1
    first: int = 0
    local: int = 1
    size: int = 0

    @classmethod
    def of(cls, cfg: RunConfig) -> Shards:
        """The shards of this process for ``cfg``. ``train.shards`` None is one shard: a fresh
        distributed run sets it to the number of processes when it starts
        (:func:`clinvert.train.with_shards`), so None is left only by single-process runs."""
        from clinvert.distributed import world

        w = world()
        return cls.split(cfg.train.batch_size, cfg.train.shards or 1, w.size, w.rank)

    @classmethod
    def split(cls, batch: int, count: int, processes: int, rank: int = 0) -> Shards:
        """Rank ``rank``'s shards of a batch of ``batch`` rows in ``count`` shards over
        ``processes`` processes; a one-line ConfigError when they do not divide evenly."""
        if count % processes:
            raise ConfigError(
                f"train.shards: {count} shards cannot be split evenly over {processes} processes "
                "(use a multiple of the number of processes; a run resumes with the number of "
                "processes it started with, or a divisor of its shards)"
            )
        if batch % count:
            hint = "the number of processes" if count == processes else f"train.shards ({count})"
            raise ConfigError(
                f"train.batch_size: {batch} rows cannot be split into {count} equal shards "
                f"(use a multiple of {hint})"
            )
        local = count // processes
        return cls(count, rank * local, local, batch // count)

    @property
    def rows(self) -> int:
        """Rows of this process's part of a batch."""
        return self.local * self.size

    def seeds(self, seed: int, stream: int, index: int) -> list[int]:
        """Seeds of this process's shards of batch ``index`` of ``stream``."""
        return [
            shard_seed(seed, stream, index, j, self.count)
            for j in range(self.first, self.first + self.local)
        ]

    def generators(
        self, seed: int, stream: int, index: int, device: torch.device | str = "cpu"
    ) -> list[torch.Generator]:
        """One generator per shard of this process's part of batch ``index`` of ``stream``."""
        return [make_generator(s, device) for s in self.seeds(seed, stream, index)]


def cat_shards(parts: list[Any]) -> Any:
    """This process's part of a batch from its shards' parts, in shard order: tensors are
    concatenated, tuples of tensors element by element (one shard: its part as it is)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))
    return torch.cat(parts)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def score(z: Any, h: Any, correlation: str = "pearson") -> dict[str, Any]:
    """R^2 (held-out affine fit), per-dimension R^2 and MCC of recovered ``h`` against true ``z``."""
    per_dim = metrics.r2_per_dim(z, h)
    return {
        "r2": float(per_dim.mean()),
        "mcc": metrics.mcc(z, h, correlation),
        "r2_per_dim": [float(v) for v in per_dim],
    }


@torch.no_grad()
def encode(model: torch.nn.Module, x: Tensor, chunk: int = ENCODE_CHUNK) -> Tensor:
    """f(x) in evaluation mode, in chunks of ``chunk`` rows."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
    model.train(was_training)
    return out


def evenly_spaced(n: int, count: int) -> np.ndarray:
    """``min(n, count)`` indices spread evenly over 0..n-1 (int64), first and last included."""
    return np.linspace(0, n - 1, min(n, count)).round().astype(np.int64)


def pixel_grid(samples: int, channels: int = 3) -> int:
    """Side k of the pooled pixel grid of an image baseline: k <= 8 and C k^2 <= samples / 20.

    The cap keeps the held-out linear fit (on samples / 2 images) from merely overfitting: with 1000
    test images and 192 features the baseline's R^2 was -3.3, with 48 features near 0.
    """
    grid = PIXEL_BASELINE_GRID
    while grid > 1 and channels * grid * grid > samples // 20:
        grid //= 2
    return grid


class PairSource(ABC):
    """What a trainer trains on and scores with; see the module docstring for the contract.

    Class attributes of a registered source:
        spec: its ``data`` section (a :class:`~clinvert.spec.DataSpec` subclass).

    Instance attributes:
        in_dim: features of a vector observation, or channels of an image.
        observations: ``"vector"`` [B, n] or ``"image"`` [B, C, H, W].
    """

    spec: ClassVar[type[DataSpec]] = DataSpec
    in_dim: int
    observations: str

    # ----- config time (before any work) -------------------------------------------------------
    @classmethod  # noqa: B027 - an optional hook
    def check_config(cls, cfg: RunConfig) -> None:
        """Raise a one-line ConfigError for combinations this source cannot train."""

    @classmethod
    def observations_of(cls, cfg: RunConfig) -> str | None:
        """``"vector"`` or ``"image"`` when the config decides it, None when the data does."""
        return None

    @classmethod  # noqa: B027 - an optional hook
    def check_paths(cls, cfg: RunConfig) -> None:
        """Raise a one-line ConfigError naming the field when a file the config names is missing."""

    # ----- training ----------------------------------------------------------------------------
    @abstractmethod
    def pairs(self, step: int) -> tuple[Tensor, Tensor]:
        """Batch ``step`` of positive pairs (x, x~), each [B, ...] float on the device."""

    def supervised_width(self) -> int | None:
        """Columns of the supervised objective's targets (default: the latents' width; None when
        the source has no latents)."""
        z = self.latents("eval")
        return None if z is None else int(z.shape[1])

    def labelled(self, step: int) -> tuple[Tensor, Tensor]:
        """Batch ``step`` of observations and their latents (x [B, ...], z [B, k])."""
        raise ConfigError(
            f"train.objective: supervised needs ground-truth latents, which data.source "
            f"{self.name} does not have here"
        )

    @abstractmethod
    def norm_sample(self) -> Tensor:
        """Observations (float, on the device) to fit the encoder's input normalisation."""

    # ----- evaluation --------------------------------------------------------------------------
    @abstractmethod
    def latents(self, split: str) -> Tensor | None:
        """Ground-truth latents [M, k] of the ``split`` set (CPU), or None when unknown."""

    @abstractmethod
    def encode(self, model: torch.nn.Module, split: str) -> Tensor:
        """f(x) [M, d] of the ``split`` set's observations, in evaluation mode, on the CPU."""

    def score(self, h: Tensor, split: str) -> dict[str, Any]:
        """Scores of codes ``h`` of the ``split`` set: r2, mcc, r2_per_dim (None without latents)."""
        z = self.latents(split)
        if z is None:
            return {"r2": None, "mcc": None}
        return score(z, h, self.correlation)

    @abstractmethod
    def baseline(self) -> dict[str, Any]:
        """The identity baseline on the test set: the scores of the observations themselves."""

    # ----- state and reporting -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This source's part of a checkpoint (tensors, numbers, strings only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state_dict`."""

    def result_fields(self) -> dict[str, Any]:
        """Fields this source adds to ``result.json`` (e.g. the mixing, the dataset)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers and files."""

    @property
    def name(self) -> str:
        """The registered name of this source's class."""
        for key, cls in SOURCES.items():
            if type(self) is cls:
                return key
        return type(self).__name__

    correlation: str = "pearson"


def make_source(cfg: RunConfig, device: torch.device, **data: Any) -> PairSource:
    """The pair source that ``cfg.data.source`` names, built on ``device``.

    ``data`` goes to the source's constructor: in-memory arrays for the ``arrays`` source.
    """
    return SOURCES.get(cfg.data.source)(cfg, device, **data)


def check_split(split: str) -> None:
    """Raise ValueError unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
