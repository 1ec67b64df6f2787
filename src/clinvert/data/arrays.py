"""The arrays pair source: a user's own positive pairs or sequences, in memory or as ``.npy`` files.

Two ways to say what is positive:

* **pairs**: ``x`` and ``x_positive`` of the same shape [N, ...]; row i of ``x_positive`` is a
  positive partner of row i of ``x`` (two views of one scene, two recordings of one trial);
* **sequences**: ``x`` is one sequence [T, ...] (rows in time order) or a list of them; a positive
  partner of frame t is frame t + dt of the same sequence, dt uniform in 1..``max_delta_t`` and
  clipped to the sequence's last frame. Starts are drawn uniformly over every frame that has a
  successor.

Observations are vectors [N, n] or images [N, H, W] / [N, C, H, W] (integer images are divided by
255, booleans become 0/1). Optional ground truth ``z`` [N, k] (for sequences, [T, k] per sequence)
scores the codes; k may differ from the output dimension (MCC then matches the k true factors to k of
the outputs). Evaluation uses ``test_x`` / ``test_z`` when given, else the first ``eval.samples``
rows of ``x`` (training observations: the encoder never saw their latents, and the affine fit of
R^2 is still held out within them). Negatives come from the batch, as in every other run.

Batch k is a function of (seed, k) alone: its rows are drawn from a generator seeded by
:func:`~clinvert.data.sources.batch_seed`, so a resumed run draws the same batches.

Config (``data.source: arrays``)::

    data: {source: arrays, x: x.npy, x_positive: x_pos.npy, z: z.npy}          # pairs
    data: {source: arrays, x: [run1.npy, run2.npy], z: [z1.npy, z2.npy], max_delta_t: 3}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from clinvert.data.sources import (
    STREAM_TRAIN,
    PairSource,
    Shards,
    cat_shards,
    check_split,
    encode,
    evenly_spaced,
    pixel_grid,
    score,
)
from clinvert.errors import ConfigError
from clinvert.registry import ENCODERS, SOURCES
from clinvert.spec import DataSpec

if TYPE_CHECKING:
    from clinvert.config import RunConfig

#: Rows sampled without replacement (a permutation) up to this many; beyond, with replacement (a
#: repeated row in a batch of B from N rows has probability about B^2 / 2N, negligible there).
PERMUTE_UP_TO = 1 << 16
#: Observations used to fit the encoder's input normalisation.
NORM_SAMPLES = 20_000

Paths = str | list[str]


class ArraysData(DataSpec):
    """``data`` section of an arrays run: ``.npy`` paths, relative to the working directory."""

    source: Literal["arrays"] = "arrays"
    x: Paths | None = None
    x_positive: str | None = None
    z: Paths | None = None
    max_delta_t: Annotated[int, Field(ge=1)] = 1
    test_x: str | None = None
    test_z: str | None = None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def as_observations(x: Any, name: str) -> np.ndarray:
    """A user's observations as float32 [N, n] or [N, C, H, W], with one-line errors naming ``name``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ConfigError(f"{name}: must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ConfigError(
            f"{name}: must have shape [N, features] or [N, (C,) H, W] (one row per observation), "
            f"got shape {list(arr.shape)}"
        )
    if arr.ndim > 4:
        raise ConfigError(f"{name}: at most 4 dimensions [N, C, H, W], got shape {list(arr.shape)}")
    if np.issubdtype(arr.dtype, np.bool_):
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / np.float32(255.0)
    else:
        arr = arr.astype(np.float32, copy=False)
    if not arr.flags.writeable:  # a memory-mapped .npy: torch wants memory it may own
        arr = np.array(arr)
    if arr.ndim == 3:
        arr = arr[:, None]
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name}: contains NaN or infinite values")
    return arr


def as_latents(z: Any, rows: int, name: str) -> np.ndarray:
    """Ground-truth latents as float64 [rows, k], with one-line errors naming ``name``."""
    if hasattr(z, "detach"):
        z = z.detach().cpu().numpy()
    arr = np.asarray(z)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ConfigError(f"{name}: must be a numeric array [N, k], got shape {list(arr.shape)}")
    if arr.shape[0] != rows:
        raise ConfigError(f"{name}: has {arr.shape[0]} rows, the observations have {rows}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name}: contains NaN or infinite values")
    return arr


def _load_npy(path: str, field: str) -> np.ndarray:
    if not Path(path).is_file():
        raise ConfigError(f"{field}: file not found, got {path!r}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{field}: not a readable .npy array ({exc}), got {path!r}") from None


class ArraysSource(PairSource):
    """Positive pairs from arrays; see the module docstring.

    Args:
        cfg: a validated config with ``data.source: arrays``.
        device: where the observations live during training.
        x, x_positive, z, test_x, test_z: in-memory arrays (numpy or torch); each overrides the
            config's path of the same name. ``x`` (and ``z``) may be a list of sequences.
        names: how error messages call the arrays (the estimator says ``X`` and ``X_positive``).
    """

    spec = ArraysData

    def __init__(
        self,
        cfg: RunConfig,
        device: torch.device,
        *,
        x: Any = None,
        x_positive: Any = None,
        z: Any = None,
        test_x: Any = None,
        test_z: Any = None,
        names: dict[str, str] | None = None,
    ) -> None:
        self.cfg, self.device = cfg, device
        self.correlation = cfg.eval.correlation
        names = {
            k: (names or {}).get(k, f"data.{k}")
            for k in ("x", "x_positive", "z", "test_x", "test_z")
        }
        spec = cfg.data
        if x is None:
            if getattr(spec, "x", None) is None:
                raise ConfigError(
                    "data.x: required for source arrays (a .npy path or a list of them)"
                )
            x = [_load_npy(p, names["x"]) for p in _as_list(spec.x)]
            x = x if isinstance(spec.x, list) else x[0]
        if x_positive is None and getattr(spec, "x_positive", None) is not None:
            x_positive = _load_npy(spec.x_positive, names["x_positive"])
        if z is None and getattr(spec, "z", None) is not None:
            z = [_load_npy(p, names["z"]) for p in _as_list(spec.z)]
            z = z if isinstance(spec.z, list) else z[0]
        if test_x is None and getattr(spec, "test_x", None) is not None:
            test_x = _load_npy(spec.test_x, names["test_x"])
        if test_z is None and getattr(spec, "test_z", None) is not None:
            test_z = _load_npy(spec.test_z, names["test_z"])
        self._build_rows(x, x_positive, z, names)
        self._build_eval(test_x, test_z, names)
        self._check_encoder()
        self.batch_size = cfg.train.batch_size
        self.shards = Shards.of(cfg)
        if self.batch_size > self.num_pairs:
            raise ConfigError(
                f"train.batch_size: {self.batch_size} is more than the {self.num_pairs} positive pairs in "
                f"{names['x']}; use a smaller batch or more data"
            )

    # ----- config time -------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        spec = cfg.data
        if spec.test_z is not None and spec.test_x is None:
            raise ConfigError("data.test_z: needs data.test_x, the observations it belongs to")
        if spec.x_positive is not None and isinstance(spec.x, list):
            raise ConfigError(
                "data.x: a list of sequences takes no x_positive (pairs come from max_delta_t); "
                "give one array with x_positive, or sequences without it"
            )

    @classmethod
    def check_paths(cls, cfg: RunConfig) -> None:
        spec = cfg.data
        if spec.x is None:
            raise ConfigError("data.x: required for source arrays (a .npy path or a list of them)")
        for field in ("x", "x_positive", "z", "test_x", "test_z"):
            for path in _as_list(getattr(spec, field)):
                if path is not None and not Path(path).is_file():
                    raise ConfigError(f"data.{field}: file not found, got {path!r}")

    # ----- construction ------------------------------------------------------------------------
    def _build_rows(self, x: Any, x_positive: Any, z: Any, names: dict[str, str]) -> None:
        sequences = x_positive is None
        if sequences:
            seqs = [as_observations(s, names["x"]) for s in _as_list(x)]
            if len({s.shape[1:] for s in seqs}) > 1:
                raise ConfigError(f"{names['x']}: sequences differ in their observation shape")
            lengths = np.array([len(s) for s in seqs])
            if (lengths < 2).all():
                raise ConfigError(
                    f"{names['x']}: sequences need at least 2 frames to make a positive pair "
                    f"(got lengths {lengths.tolist()}); pass x_positive for explicit pairs"
                )
            data = np.concatenate(seqs)
            ends = np.repeat(np.cumsum(lengths) - 1, lengths)  # last row of each row's sequence
            starts = np.flatnonzero(np.arange(len(data)) < ends)
            self.ends = torch.as_tensor(ends, dtype=torch.long)
            self.starts = torch.as_tensor(starts, dtype=torch.long)
            self.max_delta_t = self.cfg.data.max_delta_t
            self.x_positive = None
            if z is not None:
                z_list = _as_list(z)
                if len(z_list) != len(seqs):
                    raise ConfigError(
                        f"{names['z']}: {len(z_list)} latent arrays for {len(seqs)} sequences"
                    )
                pairs = zip(z_list, seqs, strict=True)
                z = np.concatenate([as_latents(zz, len(s), names["z"]) for zz, s in pairs])
        else:
            data = as_observations(x, names["x"])
            pos = as_observations(x_positive, names["x_positive"])
            if pos.shape != data.shape:
                raise ConfigError(
                    f"{names['x_positive']}: must have the shape of {names['x']}, got "
                    f"{list(pos.shape)} and {list(data.shape)}"
                )
            self.x_positive = torch.as_tensor(pos).to(self.device)
            self.starts = None
            if z is not None:
                z = as_latents(z, len(data), names["z"])
        self.sequences = sequences
        self.x = torch.as_tensor(data).to(self.device)
        self.z = None if z is None else torch.as_tensor(z)
        if self.z is not None:  # the range the supervised targets are mapped from (labelled)
            self._z_low = self.z.amin(0)
            self._z_span = (self.z.amax(0) - self._z_low).clamp(min=1e-12)
        self.observations = "vector" if self.x.ndim == 2 else "image"
        self.in_dim = int(self.x.shape[1])
        self.num_pairs = len(self.starts) if sequences else len(self.x)

    def _build_eval(self, test_x: Any, test_z: Any, names: dict[str, str]) -> None:
        if test_x is not None:
            tx = as_observations(test_x, names["test_x"])
            if tx.shape[1:] != tuple(self.x.shape[1:]):
                raise ConfigError(
                    f"{names['test_x']}: observations of shape {list(tx.shape[1:])}, training ones "
                    f"are {list(self.x.shape[1:])}"
                )
            self.eval_x = torch.as_tensor(tx).to(self.device)
            self.eval_z = (
                None
                if test_z is None
                else torch.as_tensor(as_latents(test_z, len(tx), names["test_z"]))
            )
            self.eval_on = "test arrays"
        else:
            count = min(self.cfg.eval.samples, len(self.x))
            self.eval_x = self.x[:count]
            self.eval_z = None if self.z is None else self.z[:count]
            self.eval_on = f"the first {count} training observations"
        if self.eval_z is not None and len(self.eval_x) < 8:
            raise ConfigError(f"{names['test_x']}: scoring needs at least 8 observations")

    def _check_encoder(self) -> None:
        encoder = self.cfg.model.encoder
        inputs = ENCODERS.get(encoder).inputs
        if inputs != self.observations:
            shape = list(self.x.shape[1:])
            allowed = [n for n, e in ENCODERS.items() if e.inputs == self.observations]
            raise ConfigError(
                f"model.encoder: {encoder} encodes {inputs}s, the arrays hold {self.observations}s "
                f"of shape {shape} (allowed: {', '.join(allowed)})"
            )

    # ----- training ----------------------------------------------------------------------------
    def _rows(self, count: int, rows: int, gen: torch.Generator) -> Tensor:
        if count <= PERMUTE_UP_TO:
            return torch.randperm(count, generator=gen)[:rows]
        return torch.randint(count, (rows,), generator=gen)

    def indices(self, step: int) -> tuple[Tensor, Tensor]:
        """Row indices (anchors, positives) of this process's part of batch ``step`` (all of it
        in a single process), [B] each (CPU): its shards, each from its own stream."""
        gens = self.shards.generators(self.cfg.train.seed, STREAM_TRAIN, step)
        return cat_shards([self._shard(gen, self.shards.size) for gen in gens])

    def _shard(self, gen: torch.Generator, rows: int) -> tuple[Tensor, Tensor]:
        if not self.sequences:
            picked = self._rows(len(self.x), rows, gen)
            return picked, picked
        anchors = self.starts[self._rows(len(self.starts), rows, gen)]
        dt = torch.randint(1, self.max_delta_t + 1, (rows,), generator=gen)
        return anchors, torch.minimum(anchors + dt, self.ends[anchors])

    def pairs(self, step: int) -> tuple[Tensor, Tensor]:
        i, j = self.indices(step)
        i, j = i.to(self.device), j.to(self.device)
        if self.sequences:
            return self.x[i], self.x[j]
        return self.x[i], self.x_positive[j]

    def labelled(self, step: int) -> tuple[Tensor, Tensor]:
        """Batch ``step``'s anchors and their latents, each factor mapped affinely onto [0, 1]
        (its range over all rows): factors in pixels and in pixel counts weigh alike in the
        regression, a box output (``bound * sigmoid``, bound 1) spans them as it spans the
        synthetic tables' [0, 1] box, and the affine R² and the MCC they are scored by do not
        change."""
        if self.z is None:
            return super().labelled(step)
        i, _ = self.indices(step)
        z = (self.z[i] - self._z_low) / self._z_span
        return self.x[i.to(self.device)], z.to(self.device, torch.float32)

    def norm_sample(self) -> Tensor:
        if len(self.x) <= NORM_SAMPLES:
            return self.x
        return self.x[torch.as_tensor(evenly_spaced(len(self.x), NORM_SAMPLES), device=self.device)]

    # ----- evaluation --------------------------------------------------------------------------
    def latents(self, split: str) -> Tensor | None:
        check_split(split)
        return self.eval_z

    def encode(self, model: torch.nn.Module, split: str) -> Tensor:
        check_split(split)
        chunk = 16384 if self.observations == "vector" else 256
        return encode(model, self.eval_x, chunk).cpu()

    def baseline(self) -> dict[str, Any]:
        """Scores of the observations themselves: vectors as they are (their first principal
        components when wider than a twentieth of the samples), images as pooled pixels."""
        if self.eval_z is None:
            return {"baseline": "none: no ground-truth latents", "r2": None, "mcc": None}
        x, m = self.eval_x, len(self.eval_x)
        if self.observations == "image":
            grid = pixel_grid(m, channels=x.shape[1])
            feats = torch.nn.functional.adaptive_avg_pool2d(x, grid).flatten(1).cpu()
            label = f"linear fit on {grid}x{grid}x{x.shape[1]} average-pooled pixels"
        else:
            feats, label = x.cpu(), "linear fit on the observations"
            width = max(1, m // 20)
            if feats.shape[1] > width:
                centred = feats.double() - feats.double().mean(0)
                _, _, v = torch.linalg.svd(centred, full_matrices=False)
                feats = centred @ v[:width].T
                label = f"linear fit on the first {width} principal components of the observations"
        return {"baseline": label, **score(self.eval_z, feats, self.correlation)}

    def result_fields(self) -> dict[str, Any]:
        return {
            "mixing": None,
            "eval_samples": len(self.eval_x),
            "data": {
                "observations": self.observations,
                "shape": list(self.x.shape[1:]),
                "rows": len(self.x),
                "positive_pairs": self.num_pairs,
                "pairs": "sequences" if self.sequences else "x / x_positive",
                "max_delta_t": self.max_delta_t if self.sequences else None,
                "latents": None if self.z is None else int(self.z.shape[1]),
                "eval_on": self.eval_on,
            },
        }


SOURCES.register("arrays", ArraysSource)
