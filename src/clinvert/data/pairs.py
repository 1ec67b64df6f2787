"""Positive pairs of rendered images: sample (z, z~) in latent space, snap each to its nearest
rendered latent (exact search), never the same image twice.

* z ~ uniform over the latent box; z~ ~ p(z~ | z), a noise law (Normal, Laplace, generalised
  normal) truncated to the box. In ``periodic`` datasets the angle factors are angles in
  [-pi, pi): their coordinates are drawn in units of pi (noise scale ``scale * pi``) and wrapped
  instead of truncated, and the search uses a (cos, sin) embedding of every angle.
* Snapping: one exact nearest-neighbour search per batch for all 2B queries, k = 2 (scipy's
  ``cKDTree`` or faiss ``IndexFlatL2``, whichever :func:`auto_backend` measured faster for the
  points' size and width). z~ takes its nearest image unless that is z's image, then its second
  nearest. A law with one scale per latent (a diagonal law, box mode only) searches in its own
  metric, every coordinate divided by its scale. Batches of anchors only (``anchors_only``, the
  supervised objective's) search z alone and return the same anchors.
* The returned latents are those of the returned images (what the encoder sees), not the queries.

Batch ``k`` is a pure function of (seed, stream, k): :class:`PairBatches` is a map-style dataset of
whole batches, so a :class:`~torch.utils.data.DataLoader` with any number of workers yields the same
sequence and a resumed run continues exactly at its step.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clinvert.data.images import ImageDataset, load_image_dataset
from clinvert.data.sources import Shards, batch_seed, cat_shards
from clinvert.errors import ConfigError
from clinvert.latents.distributions import NoiseLaw, truncated_add
from clinvert.latents.spaces import Box
from clinvert.metrics import embed_latents

try:  # optional: exact search without faiss falls back to a KD-tree
    import faiss
except ImportError:  # pragma: no cover - exercised only where faiss is absent
    faiss = None

NN_BACKENDS = ("auto", "faiss", "kdtree")
__all__ = [
    "NearestNeighbours",
    "PairBatches",
    "auto_backend",
    "batch_seed",
    "embed_latents",
    "make_pair_loader",
]

#: ``auto`` picks faiss's flat search only for points wider than this and fewer than
#: ``FAISS_BELOW_ROWS`` of them; a KD-tree otherwise (benchmarks/README.md, 2026-12-05: per pair
#: batch, one thread, the KD-tree 3.2x faster at 40k x 10, 10x at 400k x 10, 1.9x at 400k x 16; at
#: 40k x 16, a periodic dataset's (cos, sin) embedding, faiss was ahead in two runs of three)
FAISS_ABOVE_DIMS = 12
FAISS_BELOW_ROWS = 100_000


def auto_backend(rows: int, dims: int) -> str:
    """The exact search ``auto`` uses for ``rows`` points of ``dims`` coordinates: ``kdtree``
    (scipy's ``cKDTree``) for low-dimensional or large sets, ``faiss`` (``IndexFlatL2``) for small
    wide ones, ``kdtree`` whenever faiss is not installed. Both are exact; they return the same
    neighbours but at exact ties of distance."""
    wide_and_small = dims > FAISS_ABOVE_DIMS and rows < FAISS_BELOW_ROWS
    return "faiss" if wide_and_small and faiss is not None else "kdtree"


class NearestNeighbours:
    """Exact nearest-neighbour search over fixed points [N, m] (float32).

    The index is built lazily in each process that searches (a faiss index is not shared across a
    fork), with one search thread in a loader worker (the workers already search in parallel).

    Args:
        points: [N, m] points to search.
        backend: ``faiss``, ``kdtree`` or ``auto`` (:func:`auto_backend` of the points' shape).
    """

    def __init__(self, points: np.ndarray, backend: str = "auto") -> None:
        if backend not in NN_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(NN_BACKENDS)}, got {backend!r}")
        if backend == "faiss" and faiss is None:
            raise ImportError("faiss is not installed (pip install faiss-cpu); use backend kdtree")
        self.points = np.ascontiguousarray(points, dtype=np.float32)
        if self.points.ndim != 2:
            raise ValueError(f"points must be [N, m], got shape {list(self.points.shape)}")
        self.backend = auto_backend(*self.points.shape) if backend == "auto" else backend
        self._index: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_index": None, "_pid": None}

    def _build(self) -> Any:
        if self._index is None or self._pid != os.getpid():
            if self.backend == "faiss":
                if torch.utils.data.get_worker_info() is not None:
                    # One search thread per loader worker. Not in the training process: faiss
                    # and torch share one OpenMP runtime, so this would also cap torch's threads.
                    faiss.omp_set_num_threads(1)
                index = faiss.IndexFlatL2(self.points.shape[1])
                index.add(self.points)
            else:
                from scipy.spatial import cKDTree

                index = cKDTree(self.points.astype(np.float64))
            self._index, self._pid = index, os.getpid()
        return self._index

    def search(self, queries: np.ndarray, k: int = 1) -> np.ndarray:
        """Indices [Q, k] of the k nearest points of every query, nearest first (one call)."""
        index = self._build()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.backend == "faiss":
            _, idx = index.search(queries, k)
        else:
            _, idx = index.query(queries.astype(np.float64), k=k)
            idx = np.asarray(idx).reshape(queries.shape[0], k)
        return idx.astype(np.int64)


class PairBatches(Dataset):
    """Map-style dataset whose item ``k`` is the k-th training batch of positive image pairs.

    Args:
        dataset: the training images and latents.
        law: the conditional's noise law (in units of the box; times pi for angle factors).
        batch_size: pairs per batch.
        seed: training seed; ``stream``: the random stream of these batches.
        box: (low, high) of the linear factors (the dataset's [-1, 1]).
        backend: nearest-neighbour backend (see :class:`NearestNeighbours`).
        shards: which shards of each batch this process draws (default: all of a one-shard batch).
        anchors_only: return the anchors alone (``x``, ``z``, ``index``), for an objective that
            never looks at z~ (the supervised one): z~ is still drawn, so the random stream and
            the anchors are those of the pair batch, but not searched for (half the search).

    An item is a dict with ``x``, ``x_tilde`` (uint8 [B, S, S, 3]), ``z``, ``z_tilde`` (float32
    [B, n], the latents of the returned images) and ``index``, ``index_tilde`` (int64 [B]).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        law: NoiseLaw,
        batch_size: int,
        seed: int,
        stream: int = 0,
        box: tuple[float, float] = (-1.0, 1.0),
        backend: str = "auto",
        shards: Shards | None = None,
        anchors_only: bool = False,
    ) -> None:
        if len(dataset) < 2:
            raise ValueError(f"a pair needs two distinct images, the dataset has {len(dataset)}")
        self.root = dataset.root
        self.latents = dataset.latents
        self.periodic = dataset.periodic_mask()
        self.law = law
        self.batch_size = int(batch_size)
        self.shards = shards or Shards(1, 0, 1, self.batch_size)
        self.seed, self.stream = int(seed), int(stream)
        self.box = Box(self.latents.shape[1], *box)
        # A per-latent law snaps in its own metric: coordinates divided by their scales, so the
        # nearest image is the one the diagonal law makes most likely (one scale: plain distance).
        self.weights: np.ndarray | None = None
        if law.per_latent:
            if self.periodic.any():
                raise ConfigError(
                    "latent.conditional.scale: one scale per latent needs box-mode latents; "
                    f"{self.root} has angle factors (use one number)"
                )
            self.weights = (1.0 / law.scales(self.latents.shape[1])).astype(np.float32)
        self.nn = NearestNeighbours(self._embed(self.latents), backend)
        self.anchors_only = bool(anchors_only)
        self._images: np.ndarray | None = dataset.images

    def __len__(self) -> int:
        return 2**62  # batches are indexed by step; the sampler decides which ones are drawn

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers reopen the memory map instead of receiving the images by pickle.
        return {**self.__dict__, "_images": None}

    @property
    def images(self) -> np.ndarray:
        """The memory-mapped images (reopened in a spawned worker)."""
        if self._images is None:
            self._images = load_image_dataset(self.root).images
        return self._images

    def sample_latents(self, index: int) -> tuple[Tensor, Tensor]:
        """Query latents (z, z~) [B, n] of batch ``index`` (this process's shards of it), before
        snapping."""
        gens = self.shards.generators(self.seed, self.stream, index)
        return cat_shards([self._sample(gen, self.shards.size) for gen in gens])

    def _sample(self, gen: torch.Generator, rows: int) -> tuple[Tensor, Tensor]:
        z = self.box.uniform(rows, gen, torch.device("cpu"))
        if not self.periodic.any():
            return z, truncated_add(z, self.law, self.box, gen)
        # Angle factors: uniform in [-1, 1) in units of pi, noise wrapped around; the linear
        # factors keep the truncated law (coordinates that left the box are resampled).
        periodic = torch.as_tensor(self.periodic)
        noisy = z + self.law.sample(tuple(z.shape), gen, z.device)
        for _ in range(1000):
            outside = ~self.box.inside(noisy) & ~periodic
            if not bool(outside.any()):
                break
            fresh = z + self.law.sample(tuple(z.shape), gen, z.device)
            noisy = torch.where(outside, fresh, noisy)
        else:
            raise ValueError(f"{self.law!r} is too wide for the box; use a smaller scale")
        wrapped = torch.remainder(noisy + 1.0, 2.0) - 1.0
        z_tilde = torch.where(periodic, wrapped, noisy)
        scale = torch.where(periodic, torch.tensor(np.pi, dtype=z.dtype), torch.ones(()))
        return z * scale, z_tilde * scale

    def _embed(self, latents: np.ndarray) -> np.ndarray:
        """The search coordinates of latents [N, n]: the angle embedding, or the latents divided
        by a per-latent law's scales."""
        points = embed_latents(latents, self.periodic)
        return points if self.weights is None else points * self.weights

    def snap(self, z: np.ndarray, z_tilde: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the nearest rendered latents of z and z~ (one search), never equal."""
        queries = self._embed(np.concatenate([z, z_tilde]))
        nearest = self.nn.search(queries, k=2)
        batch = z.shape[0]
        first = nearest[:batch, 0]
        partner = nearest[batch:]
        second = np.where(partner[:, 0] == first, partner[:, 1], partner[:, 0])
        return first, second

    def snap_anchors(self, z: np.ndarray) -> np.ndarray:
        """Indices of the nearest rendered latents of z alone: :meth:`snap`'s first half."""
        return self.nn.search(self._embed(z), k=1)[:, 0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        z_query, z_tilde_query = self.sample_latents(int(index))
        images = self.images
        if self.anchors_only:
            i = self.snap_anchors(z_query.numpy())
            return {
                "x": torch.from_numpy(np.ascontiguousarray(images[i])),
                "z": torch.from_numpy(self.latents[i]),
                "index": torch.from_numpy(i),
            }
        i, j = self.snap(z_query.numpy(), z_tilde_query.numpy())
        return {
            "x": torch.from_numpy(np.ascontiguousarray(images[i])),
            "x_tilde": torch.from_numpy(np.ascontiguousarray(images[j])),
            "z": torch.from_numpy(self.latents[i]),
            "z_tilde": torch.from_numpy(self.latents[j]),
            "index": torch.from_numpy(i),
            "index_tilde": torch.from_numpy(j),
        }


def make_pair_loader(
    pairs: PairBatches, start: int, stop: int, workers: int, pin_memory: bool = False
) -> DataLoader:
    """A loader of batches ``start, ..., stop - 1`` of ``pairs`` using ``workers`` processes.

    The sequence does not depend on ``workers``: batch k is always the same, which is what makes
    a resumed run continue exactly. ``pin_memory`` (for a CUDA device) puts each batch's bytes in
    page-locked memory, so that the copy to the device runs asynchronously.
    """
    return DataLoader(
        pairs,
        batch_size=None,
        sampler=range(start, stop),
        num_workers=workers,
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
        pin_memory=pin_memory,
    )
