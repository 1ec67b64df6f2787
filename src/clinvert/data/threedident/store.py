"""The 3DIdent dataset directory: written resumably, read with clear errors.

Layout (``clinvert-3dident/1``)::

    DIR/manifest.json   format, backend, renderer, size, samples, mode, n, seed, factors,
                        circular (``periodic`` mode only: the factors stored as angles),
                        complete, seconds (render wall time, summed over resumed sessions)
    DIR/latents.npy     float32 [N, 10] in the mode's coordinates (a function of the seed)
    DIR/images/000000.png ...   RGB uint8 S x S, each written atomically
    DIR/images.npy      uint8 [N, S, S, 3], written once all PNGs exist; then ``complete: true``

Rendering writes the manifest (``complete: false``) and ``latents.npy`` first, then only the PNGs
that are missing or do not decode, so a run killed at any point (even ``kill -9``) resumes where
it stopped and ends with the same files as an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from clinvert.data.threedident import cycles
from clinvert.data.threedident.factors import (
    FACTORS,
    check_mode,
    circular_factors,
    sample_latents,
    stale_periodic,
)
from clinvert.errors import ConfigError
from clinvert.io import write_bytes, write_json

FORMAT = "clinvert-3dident/1"
BACKENDS = ("preview", "cycles")
_SETTINGS = ("format", "backend", "renderer", "size", "samples", "mode", "n", "seed", "factors")


def image_path(out: str | Path, index: int) -> Path:
    """Path of image ``index`` in dataset directory ``out``."""
    return Path(out) / "images" / f"{index:06d}.png"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def read_png(path: Path, size: int | None = None) -> np.ndarray:
    """Decode an RGB PNG to uint8 [S, S, 3]; ConfigError naming the file if it is broken."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise ConfigError(f"{path}: image missing") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a damaged file
        raise ConfigError(f"{path}: corrupted PNG ({type(exc).__name__})") from None
    want = (size, size, 3) if size is not None else None
    if arr.ndim != 3 or arr.shape[2] != 3 or (want is not None and arr.shape != want):
        raise ConfigError(f"{path}: expected an RGB image of shape {want}, got {arr.shape}")
    return arr


def _read_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype, mmap: bool) -> np.ndarray:
    if not path.exists():
        raise ConfigError(f"{path}: missing")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - truncated or damaged file
        raise ConfigError(f"{path}: corrupted or truncated .npy ({exc})") from None
    if arr.shape != shape or arr.dtype != dtype:
        raise ConfigError(
            f"{path}: expected {np.dtype(dtype).name} {list(shape)}, "
            f"got {arr.dtype.name} {list(arr.shape)}"
        )
    return arr


def read_manifest(out: str | Path) -> dict[str, Any]:
    """The manifest of dataset ``out``; ConfigError if missing or unreadable."""
    path = Path(out) / "manifest.json"
    if not path.exists():
        raise ConfigError(f"{path}: missing; not a 3DIdent dataset (render one first)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: corrupted JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{path}: format must be {FORMAT!r}")
    return manifest


def load_dataset(out: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load a complete dataset: (images uint8 memmap [N, S, S, 3], latents float32 [N, 10], manifest).

    Raises a one-line ConfigError naming the file for a missing manifest, an incomplete dataset,
    wrong shapes, or a corrupted / truncated ``.npy``.
    """
    out = Path(out)
    manifest = read_manifest(out)
    if not manifest.get("complete"):
        raise ConfigError(
            f"{out}: incomplete dataset; finish it with 'clinvert threedident render' "
            "(same arguments)"
        )
    n, size = int(manifest["n"]), int(manifest["size"])
    latents = _read_npy(out / "latents.npy", (n, len(FACTORS)), np.dtype(np.float32), mmap=False)
    images = _read_npy(out / "images.npy", (n, size, size, 3), np.dtype(np.uint8), mmap=True)
    return images, latents, manifest


def _renderer(backend: str, size: int, samples: int | None) -> tuple[str, int | None]:
    if backend == "preview":
        from clinvert.data.threedident import preview

        return preview.VERSION, None
    cycles.require_python()
    return cycles.VERSION, samples if samples is not None else cycles.DEFAULT_SAMPLES


def check_settings(
    n: int, size: int, backend: str, mode: str, seed: int, samples: int | None
) -> None:
    """Validate render settings; one-line ConfigError naming the first bad one."""
    for name, value, low in (("n", n, 1), ("size", size, 8), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}: must be an integer >= {low}, got {value!r}")
    if size > 1024:
        raise ConfigError(f"size: must be <= 1024, got {size}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
    check_mode(mode)
    if samples is not None:
        if backend != "cycles":
            raise ConfigError("samples: only with backend cycles")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"samples: must be an integer >= 1, got {samples!r}")


def render_dataset(
    out: str | Path,
    n: int,
    size: int,
    backend: str = "preview",
    mode: str = "box",
    seed: int = 0,
    samples: int | None = None,
    progress: bool = True,
    batch_size: int = 64,
    workers: int | None = None,
) -> dict[str, Any]:
    """Render (or finish rendering) a dataset into ``out``; returns the final manifest.

    Only missing images are rendered (a PNG that does not decode counts as missing). An existing
    manifest with different settings is an error naming the field. ``workers``: Blender processes
    of the ``cycles`` backend (default one per available core; the images do not depend on it).
    """
    from tqdm import tqdm

    check_settings(n, size, backend, mode, seed, samples)
    cycles.check_workers(workers)  # before anything is written
    renderer, samples = _renderer(backend, size, samples)
    out = Path(out)
    settings = {
        "format": FORMAT,
        "backend": backend,
        "renderer": renderer,
        "size": size,
        "samples": samples,
        "mode": mode,
        "n": n,
        "seed": seed,
        "factors": list(FACTORS),
    }
    if mode == "periodic":
        settings["circular"] = circular_factors(mode)
    seconds = 0.0
    if (out / "manifest.json").exists():
        old = read_manifest(out)
        stale = stale_periodic(old)
        if stale:
            raise ConfigError(f"circular: {out}: {stale}")
        for key in _SETTINGS:
            if old.get(key) != settings[key]:
                raise ConfigError(
                    f"{key}: {out} was rendered with {key}={old.get(key)!r}, not {settings[key]!r}; "
                    "use the same settings or another --out"
                )
        if old.get("complete") and (out / "images.npy").exists():
            load_dataset(out)  # validates shapes and files
            return old
        seconds = float(old.get("seconds", 0.0))
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out: {out} exists, is not empty and holds no manifest.json")

    manifest = {**settings, "complete": False, "seconds": seconds}
    write_json(out / "manifest.json", manifest)
    latents = sample_latents(n, mode, seed)
    lat_path = out / "latents.npy"
    try:
        ok = lat_path.exists() and np.array_equal(np.load(lat_path, allow_pickle=False), latents)
    except Exception:  # noqa: BLE001 - damaged: rewrite it from the seed
        ok = False
    if not ok:
        write_bytes(lat_path, _npy_bytes(latents))

    began = time.monotonic()
    missing = []
    for i in range(n):
        path = image_path(out, i)
        if not path.exists():
            missing.append(i)
            continue
        try:
            read_png(path, size)
        except ConfigError:
            missing.append(i)
    bar = tqdm(total=n, initial=n - len(missing), disable=not progress, unit="img", desc="render")
    try:
        if backend == "preview":
            from clinvert.data.threedident import preview

            # Batches are aligned on absolute indices (image i is always rendered with the same
            # neighbours): batched float reductions can round differently with the batch's
            # composition, and a resumed render must give the same bytes as an uninterrupted one.
            todo = set(missing)
            for first in sorted({i - i % batch_size for i in missing}):
                idx = list(range(first, min(n, first + batch_size)))
                for i, image in zip(idx, preview.render(latents[idx], size, mode), strict=True):
                    if i in todo:
                        write_bytes(image_path(out, i), _png_bytes(image))
                bar.update(sum(i in todo for i in idx))
        elif missing:
            todo = cycles.render_iter(latents[missing], size, samples, mode, missing, workers)
            for i, image in todo:
                write_bytes(image_path(out, i), _png_bytes(image))
                bar.update(1)
    finally:
        bar.close()

    images = np.stack([read_png(image_path(out, i), size) for i in range(n)])
    write_bytes(out / "images.npy", _npy_bytes(images))
    manifest = {**settings, "complete": True, "seconds": seconds + time.monotonic() - began}
    write_json(out / "manifest.json", manifest)
    return manifest
