"""The 3DIdent dataset as released with the paper (Zimmermann et al., ICML 2021).

A released folder (the 250k training set or the 25k test set) holds::

    DIR/raw_latents.npy     float [N, 10] in [-1, 1]: x, y, z position, three rotations, spotlight
                            angle, object hue, spotlight hue, background hue (clinvert's FACTORS order)
    DIR/images/<i>.png      N RGB images (224 x 224 in the release), i zero-padded to
                            ceil(log10(N)) digits: 000000.png ... 249999.png, 00000.png ... 24999.png

:func:`load_released` reads such a folder into the same :class:`~clinvert.data.images.ImageDataset`
as clinvert's own format: latents in memory, images as :class:`PngImages`, an array-like view that
decodes the PNGs it is asked for (in the pair loader's worker processes when ``data.workers > 0``),
so nothing is converted or copied first. ``data.size`` resizes images on the training device.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from clinvert.data.threedident.factors import FACTORS
from clinvert.errors import ConfigError

LATENTS = "raw_latents.npy"
IMAGES = "images"
#: The ``format`` of the manifest that describes a released folder.
FORMAT = "3dident-released"


def digits(n: int) -> int:
    """Zero-padding of the released file names: ceil(log10(N)) digits (at least 1)."""
    return max(1, math.ceil(math.log10(n))) if n > 1 else 1


def is_released(root: Path) -> bool:
    """Whether ``root`` looks like a released folder (``raw_latents.npy`` beside ``images/``)."""
    return (root / LATENTS).exists() or (root / IMAGES).is_dir()


class PngImages:
    """uint8 [N, S, S, 3] images decoded from ``images/<i>.png`` on indexing.

    Supports what the trainer uses of a memory map: ``len``, ``shape``, ``dtype``, and indexing by an
    int, a slice or an integer array. Every image must be S x S RGB (an alpha channel is dropped).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, folder: Path, n: int, size: int) -> None:
        self.folder, self.n, self.size = Path(folder), int(n), int(size)
        self.width = digits(self.n)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, S, S, 3)."""
        return (self.n, self.size, self.size, 3)

    def __len__(self) -> int:
        return self.n

    def path(self, i: int) -> Path:
        """The file of image ``i``."""
        return self.folder / f"{int(i):0{self.width}d}.png"

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 [S, S, 3]; a one-line ConfigError names a missing or bad file."""
        from PIL import Image, UnidentifiedImageError

        path = self.path(i)
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise ConfigError(f"{path}: unreadable image ({type(exc).__name__})") from None
        if arr.shape != (self.size, self.size, 3):
            raise ConfigError(
                f"{path}: expected {self.size}x{self.size} RGB like {self.path(0).name}, got "
                f"{list(arr.shape)}"
            )
        return arr

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, int | np.integer):
            if not -self.n <= index < self.n:
                raise IndexError(f"image {index} out of range for {self.n} images")
            return self.read(int(index) % self.n)
        if isinstance(index, slice):
            index = range(*index.indices(self.n))
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        out = np.empty((len(idx), self.size, self.size, 3), dtype=np.uint8)
        for k, i in enumerate(idx.tolist()):
            out[k] = self[i]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)


def _fail(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path}: {why}")


def load_released(root: str | Path) -> Any:
    """Read a released 3DIdent folder; a one-line ConfigError names what is missing or wrong."""
    from PIL import Image

    from clinvert.data.images import ImageDataset

    root = Path(root)
    lat_path, folder = root / LATENTS, root / IMAGES
    for path, what in ((lat_path, "the latents"), (folder, "the image folder")):
        if not path.exists():
            raise _fail(path, f"missing ({what} of the released 3DIdent layout)")
    try:
        latents = np.load(lat_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _fail(lat_path, f"unreadable .npy ({type(exc).__name__})") from None
    dim = len(FACTORS)
    if (
        latents.ndim != 2
        or latents.shape[1] != dim
        or not np.issubdtype(latents.dtype, np.floating)
    ):
        raise _fail(
            lat_path, f"expected float [N, {dim}], got {latents.dtype} {list(latents.shape)}"
        )
    latents = np.ascontiguousarray(latents, dtype=np.float32)
    n = len(latents)
    if n < 1 or not np.isfinite(latents).all():
        raise _fail(lat_path, "needs at least one row of finite latents")
    if (np.abs(latents) > 1 + 1e-5).any():
        raise _fail(lat_path, "latents outside [-1, 1] (the released layout's range)")
    width = digits(n)
    names = {e.name for e in os.scandir(folder) if e.name.endswith(".png")}
    expected = {f"{i:0{width}d}.png" for i in range(n)}
    missing = expected - names
    if missing:
        first = min(missing)
        raise _fail(
            folder,
            f"{len(missing)} of {n} images missing (first: {first}; names are the index "
            f"zero-padded to {width} digits, as in the release)",
        )
    with Image.open(folder / f"{0:0{width}d}.png") as img:
        size_x, size_y = img.size
    if size_x != size_y:
        raise _fail(folder, f"images must be square, got {size_x}x{size_y}")
    manifest = {
        "format": FORMAT,
        "backend": "released",
        "renderer": "3DIdent as released (Blender, Zimmermann et al. 2021)",
        "size": int(size_x),
        "samples": None,
        "mode": "box",
        "n": n,
        "seed": None,
        "factors": list(FACTORS),
        "complete": True,
    }
    return ImageDataset(root, manifest, latents, PngImages(folder, n, size_x))
