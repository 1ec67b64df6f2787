"""The KITTI Masks pickle: reading it safely, checking it, writing files in its exact format.

The published file (``kitti_peds_v2.pickle``, Zenodo record 3931823, made public with SlowVAE by
Klindt et al., ICLR 2021) holds a dict::

    {"pedestrians":         [bool [T_i, 64, 64], ...],      # one mask sequence per pedestrian
     "pedestrians_latents": [float32 [T_i, 3], ...]}        # centre of mass y, x, mask area

A pickle can run any code when it is loaded, so :func:`load_kitti_masks` uses an unpickler that
admits only what this file holds: dicts, lists, strings, numbers and numpy arrays (the numpy
functions that rebuild an array and its dtype, and ``_codecs.encode`` with which protocol 0-2
pickles store an array's bytes). Any other global in the file is refused, never
imported or called, with a one-line error naming it.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clinvert.errors import ConfigError

#: Names of the three ground-truth factors, in the file's column order.
FACTORS = ("com_y", "com_x", "area")
#: The dict keys of the published file.
MASKS_KEY, LATENTS_KEY = "pedestrians", "pedestrians_latents"
#: Image side of the published masks.
SIDE = 64
#: What the published file is called and where it comes from (``clinvert kitti fetch``).
FILENAME = "kitti_peds_v2.pickle"
URL = f"https://zenodo.org/record/3931823/files/{FILENAME}"

#: (module, name) pairs the unpickler may resolve: numpy's array reconstruction, in the module
#: paths of numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``).
_ALLOWED = {
    (core, name)
    for core in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    # protocol 0-2 pickles (Python 2 era files) store an array's bytes as latin-1 text
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED` globals; anything else ends the load with an error."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


@dataclass(frozen=True)
class KittiMasks:
    """Mask sequences and their factors.

    Attributes:
        masks: one bool array [T_i, 64, 64] per sequence.
        latents: one float32 array [T_i, 3] per sequence (centre of mass y, x, area in pixels).
    """

    masks: list[np.ndarray]
    latents: list[np.ndarray]

    @property
    def frames(self) -> int:
        """Frames over all sequences."""
        return int(sum(len(m) for m in self.masks))


def _fail(path: Path | str, why: str) -> ConfigError:
    return ConfigError(f"data.path: {path}: {why}")


def check_kitti_masks(obj: object, path: Path | str) -> KittiMasks:
    """Check an unpickled object against the published format; one-line ConfigError otherwise."""
    if not isinstance(obj, dict):
        raise _fail(path, f"must hold a dict, got {type(obj).__name__}")
    for key in (MASKS_KEY, LATENTS_KEY):
        if key not in obj:
            raise _fail(path, f"missing key {key!r} (keys: {sorted(map(str, obj))})")
        if not isinstance(obj[key], list) or not obj[key]:
            raise _fail(path, f"{key!r} must be a non-empty list of arrays")
    masks, latents = obj[MASKS_KEY], obj[LATENTS_KEY]
    if len(masks) != len(latents):
        raise _fail(path, f"{len(masks)} mask sequences but {len(latents)} latent sequences")
    out_m, out_z = [], []
    for i, (m, z) in enumerate(zip(masks, latents, strict=True)):
        if not isinstance(m, np.ndarray) or m.ndim != 3 or m.shape[1:] != (SIDE, SIDE):
            shape = list(m.shape) if isinstance(m, np.ndarray) else type(m).__name__
            raise _fail(path, f"{MASKS_KEY}[{i}] must be an array [T, {SIDE}, {SIDE}], got {shape}")
        if m.dtype != np.bool_:
            if not np.issubdtype(m.dtype, np.integer) or m.size and (m.min() < 0 or m.max() > 1):
                raise _fail(path, f"{MASKS_KEY}[{i}] must be bool (or 0/1 integers), got {m.dtype}")
            m = m.astype(bool)
        if not isinstance(z, np.ndarray) or z.shape != (len(m), len(FACTORS)):
            shape = list(z.shape) if isinstance(z, np.ndarray) else type(z).__name__
            raise _fail(
                path, f"{LATENTS_KEY}[{i}] must be an array [{len(m)}, {len(FACTORS)}], got {shape}"
            )
        if not np.issubdtype(z.dtype, np.number) or not np.isfinite(z).all():
            raise _fail(path, f"{LATENTS_KEY}[{i}] must hold finite numbers, got {z.dtype}")
        if len(m) < 1:
            raise _fail(path, f"{MASKS_KEY}[{i}] is empty")
        out_m.append(np.ascontiguousarray(m))
        out_z.append(np.ascontiguousarray(z, dtype=np.float32))
    return KittiMasks(out_m, out_z)


def load_kitti_masks(path: str | Path) -> KittiMasks:
    """Read a KITTI Masks pickle (the published one, or one :func:`write_kitti_masks` wrote).

    Raises:
        ConfigError: one line naming ``data.path``: file missing, not a pickle, a pickle that
            carries anything but dicts, lists and numpy arrays (refused, never executed), or
            arrays of the wrong shape or type.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(
            path, f"file not found (place {FILENAME} there; 'clinvert kitti fetch' says how)"
        )
    data = path.read_bytes()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise _fail(path, f"not a KITTI Masks pickle ({str(exc).splitlines()[0][:160]})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise _fail(path, f"unreadable or truncated pickle ({type(exc).__name__})") from None
    return check_kitti_masks(obj, path)


def write_kitti_masks(path: str | Path, masks: list[np.ndarray], latents: list[np.ndarray]) -> Path:
    """Write sequences in the published format (a dict of two lists, pickled), atomically."""
    from clinvert.io import write_bytes

    obj = {
        MASKS_KEY: [np.ascontiguousarray(m, dtype=bool) for m in masks],
        LATENTS_KEY: [np.ascontiguousarray(z, dtype=np.float32) for z in latents],
    }
    check_kitti_masks(obj, path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, pickle.dumps(obj, protocol=4))
    return path


def mask_factors(masks: np.ndarray) -> np.ndarray:
    """The published factors of masks bool [T, H, W]: centre of mass (y, x) and area in pixels,
    float32 [T, 3] (an empty mask: centre at the image centre, area 0)."""
    m = np.asarray(masks, dtype=bool)
    area = m.sum((1, 2)).astype(np.float64)
    rows, cols = np.indices(m.shape[1:])
    safe = np.maximum(area, 1.0)
    cy = np.where(area > 0, (m * rows).sum((1, 2)) / safe, (m.shape[1] - 1) / 2)
    cx = np.where(area > 0, (m * cols).sum((1, 2)) / safe, (m.shape[2] - 1) / 2)
    return np.stack([cy, cx, area], 1).astype(np.float32)
