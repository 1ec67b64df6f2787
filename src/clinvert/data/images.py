"""Load a rendered image dataset (format ``clinvert-3dident/1``) for training and evaluation.

A folder in the layout of the paper's released 3DIdent (``raw_latents.npy`` and ``images/<i>.png``)
is detected and read by :mod:`clinvert.data.threedident.released` into the same
:class:`ImageDataset`.

A dataset directory holds::

    DIR/manifest.json   {"format": "clinvert-3dident/1", "size": S, "n": N, "mode": "box"|"periodic",
                         "factors": [10 names], "circular": [periodic mode: the angle factors],
                         "complete": true, ...}
    DIR/latents.npy     float32 [N, 10]
    DIR/images.npy      uint8 [N, S, S, 3]   (memory-mapped here, never read whole)

Every problem (missing file, unfinished render, shapes that disagree with the manifest) is one
:class:`~clinvert.config.ConfigError` line naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinvert.data.threedident.factors import MODES, circular_factors, stale_periodic
from clinvert.data.threedident.store import FORMAT
from clinvert.errors import ConfigError


@dataclass(frozen=True)
class ImageDataset:
    """A loaded dataset: latents in memory, images memory-mapped.

    Attributes:
        root: the dataset directory.
        manifest: the parsed ``manifest.json``.
        latents: float32 [N, n].
        images: uint8 [N, S, S, 3] (a read-only memory map).
    """

    root: Path
    manifest: dict[str, Any]
    latents: np.ndarray
    images: np.ndarray = field(repr=False)

    @property
    def factors(self) -> list[str]:
        """Names of the latent factors (columns of ``latents``)."""
        return list(self.manifest["factors"])

    @property
    def mode(self) -> str:
        """``box`` (all factors in [-1, 1]) or ``periodic`` (circular factors in [-pi, pi))."""
        return str(self.manifest["mode"])

    @property
    def size(self) -> int:
        """Image side length S."""
        return int(self.manifest["size"])

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def periodic_mask(self) -> np.ndarray:
        """Boolean [n]: which factors are angles on a full circle (all False in box mode)."""
        circular = circular_factors(self.mode)
        return np.array([f in circular for f in self.factors], dtype=bool)

    def describe(self) -> dict[str, Any]:
        """Small JSON-ready summary for result.json."""
        keys = ("backend", "renderer", "size", "samples", "mode", "n", "seed")
        described = {"dir": str(self.root), **{k: self.manifest.get(k) for k in keys}}
        if self.mode == "periodic":
            described["circular"] = self.manifest.get("circular")
        return described


def _fail(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path}: {why}")


def _retired(renderer: object) -> str | None:
    """Why a dataset made by ``renderer`` cannot be used any more (None when it can)."""
    from clinvert.data.threedident import scene

    if not isinstance(renderer, str) or renderer not in scene.RETIRED_RENDERERS:
        return None
    return (
        f"renderer {renderer!r} drew {scene.RETIRED_RENDERERS[renderer]}, which clinvert no "
        f"longer renders; render the dataset again (scene {scene.SCENE}) into a new folder"
    )


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / "manifest.json"
    if not root.is_dir():
        raise _fail(root, "dataset directory not found")
    if not path.is_file():
        raise _fail(
            path,
            "missing: neither a clinvert-3dident dataset (or its rendering never started) nor the "
            "released 3DIdent layout (raw_latents.npy and images/<i>.png)",
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not valid JSON ({type(exc).__name__})") from None
    if not isinstance(manifest, dict):
        raise _fail(path, "must hold a JSON object")
    if manifest.get("format") != FORMAT:
        raise _fail(path, f"format must be {FORMAT!r}, got {manifest.get('format')!r}")
    retired = _retired(manifest.get("renderer"))
    if retired:
        raise _fail(path, retired)
    if manifest.get("complete") is not True:
        raise _fail(path, "dataset is incomplete (rendering unfinished; resume the render)")
    for key in ("size", "n"):
        if not isinstance(manifest.get(key), int) or manifest[key] < 1:
            raise _fail(path, f"{key} must be a positive integer, got {manifest.get(key)!r}")
    if manifest.get("mode") not in MODES:
        raise _fail(path, f"mode must be one of {', '.join(MODES)}, got {manifest.get('mode')!r}")
    stale = stale_periodic(manifest)
    if stale:
        raise _fail(path, stale)
    factors = manifest.get("factors")
    if not isinstance(factors, list) or not factors or not all(isinstance(f, str) for f in factors):
        raise _fail(path, f"factors must be a list of names, got {factors!r}")
    return manifest


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise _fail(path, "missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise _fail(path, f"unreadable or truncated .npy ({reason})") from None


def load_image_dataset(root: str | Path) -> ImageDataset:
    """Load and check the dataset in ``root``; raise a one-line ConfigError naming the bad file."""
    from clinvert.data.threedident.released import is_released, load_released

    root = Path(root)
    if root.is_dir() and not (root / "manifest.json").exists() and is_released(root):
        return load_released(root)
    manifest = _read_manifest(root)
    n, size, dim = manifest["n"], manifest["size"], len(manifest["factors"])
    lat_path, img_path = root / "latents.npy", root / "images.npy"
    latents = _load_npy(lat_path, mmap=False)
    if latents.shape != (n, dim) or not np.issubdtype(latents.dtype, np.floating):
        raise _fail(
            lat_path,
            f"expected float [{n}, {dim}] from the manifest, got {latents.dtype} "
            f"{list(latents.shape)}",
        )
    latents = np.ascontiguousarray(latents, dtype=np.float32)
    if not np.isfinite(latents).all():
        raise _fail(lat_path, "contains non-finite values")
    images = _load_npy(img_path, mmap=True)
    if images.shape != (n, size, size, 3) or images.dtype != np.uint8:
        raise _fail(
            img_path,
            f"expected uint8 [{n}, {size}, {size}, 3] from the manifest, got "
            f"{images.dtype} {list(images.shape)}",
        )
    dataset = ImageDataset(root, manifest, latents, images)
    mask = dataset.periodic_mask()
    low = np.where(mask, -math.pi, -1.0)
    high = np.where(mask, math.pi, 1.0)
    if (latents < low - 1e-5).any() or (latents > high + 1e-5).any():
        circular = [f for f, m in zip(dataset.factors, mask, strict=True) if m]
        where = (
            f"[-pi, pi] for {', '.join(circular)}, [-1, 1] for the rest" if circular else "[-1, 1]"
        )
        raise _fail(lat_path, f"latents outside the {manifest['mode']} range ({where})")
    return dataset


def images_to_float(images: Any, device: Any = None, size: int | None = None) -> Any:
    """uint8 [B, S, S, 3] (numpy or torch) -> float32 [B, 3, S, S] in [0, 1] on ``device``.

    The conversion happens on the device, so only bytes cross from the loader. With ``size``
    (``data.size``) images of another side are resized to size x size there (antialiased bilinear).
    """
    import torch

    x = torch.as_tensor(images)
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x
