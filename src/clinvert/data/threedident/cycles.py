"""3DIdent in Blender Cycles (CPU, headless), in a separate interpreter that has ``bpy``.

Blender's Python module ``bpy==5.0.1`` is a Python 3.11 wheel that requires ``numpy<2``; the
main environment uses numpy 2, so the two cannot share one virtual environment. ``make render-env``
creates ``.venv-render`` (``pip install 'bpy==5.0.1' 'numpy<2'``), and this module launches the
worker script ``_cycles_worker.py`` (stdlib + numpy + bpy only) with that interpreter. The
interpreter is, in order: ``$CLINVERT_RENDER_PYTHON``; the current one when it can import ``bpy``;
``.venv-render/bin/python`` in the working directory or the project root.

The scene is the one of :mod:`~clinvert.data.threedident.scene` (same camera, ground, spotlight
with a track-to constraint, colours, diffuse materials, "Standard" view transform), built once per
worker; per image only the pose, spotlight position and colours change.
"""

from __future__ import annotations

import importlib.util
import json
import os
import selectors
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from clinvert.data.threedident import scene
from clinvert.data.threedident.factors import to_physical
from clinvert.data.threedident.teapot import teapot_mesh
from clinvert.errors import ConfigError
from clinvert.runtime import available_cores

VERSION = "blender 5.0.1 cycles, scene 3"
#: default samples per pixel (with OpenImageDenoise): 8 is clean at 64 x 64 (mean abs. difference
#: to 128 spp 0.6 of 255; 1 spp leaves speckles); ~0.11 s per image with one worker per core here
DEFAULT_SAMPLES = 8
_WORKER = Path(__file__).with_name("_cycles_worker.py")
INSTALL_HINT = (
    "backend cycles: Blender's bpy is not available; run 'make render-env' (creates .venv-render: "
    "python3.11 -m venv .venv-render && .venv-render/bin/pip install 'bpy==5.0.1' 'numpy<2') "
    "or set CLINVERT_RENDER_PYTHON to a Python 3.11 that has bpy"
)


def find_python() -> str | None:
    """The interpreter that runs the Cycles worker, or None when none has ``bpy``."""
    env = os.environ.get("CLINVERT_RENDER_PYTHON")
    if env:
        return env if Path(env).exists() else None
    if importlib.util.find_spec("bpy") is not None:
        return sys.executable
    roots = [Path.cwd(), Path(__file__).resolve().parents[4]]
    for root in roots:
        cand = root / ".venv-render" / "bin" / "python"
        if cand.exists():
            return str(cand)
    return None


def require_python() -> str:
    """Like :func:`find_python`, but raise a one-line ConfigError with install steps if absent."""
    python = find_python()
    if python is None:
        raise ConfigError(INSTALL_HINT)
    return python


def available() -> bool:
    """Whether the Cycles backend can run here."""
    return find_python() is not None


def _job(
    phys: np.ndarray, indices: Sequence[int], size: int, samples: int, threads: int = 0
) -> dict:
    mesh = teapot_mesh(8)
    config = {
        "size": size,
        "samples": samples,
        "threads": threads,  # 0: Cycles' own choice (all cores)
        "denoise": True,
        "ambient": scene.AMBIENT,
        "camera_fov": scene.CAMERA_FOV,
        "camera_pos": list(scene.CAMERA_POS),
        "camera_target": list(scene.CAMERA_TARGET),
        "ground_z": scene.GROUND_Z,
        "spot_power": scene.SPOT_POWER,
        "spot_size": scene.SPOT_SIZE,
        "spot_blend": scene.SPOT_BLEND,
    }
    return {
        "config": np.array(json.dumps(config)),
        "vertices": mesh.vertices,
        "faces": mesh.faces,
        "indices": np.asarray(indices, np.int64),
        "position": phys[:, :3],
        "rotation": phys[:, 3:6],
        "spot_position": scene.spot_position(phys),
        "object_rgb": scene.hsv_to_rgb(phys[:, 7], scene.OBJECT_SV),
        "spot_rgb": scene.hsv_to_rgb(phys[:, 8], scene.SPOT_SV),
        "background_rgb": scene.hsv_to_rgb(phys[:, 9], scene.BACKGROUND_SV),
    }


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def default_workers(n_images: int) -> int:
    """Worker processes for ``n_images``: one per available core (each renders with one thread).

    At 64 x 64 much of a frame's time is serial (scene update, denoiser set-up, PNG): one worker with
    two threads took 0.13-0.14 s per image on this project's 2-core machine, one thread 0.16-0.17 s;
    end to end, 200 images took 28 s with one two-thread worker and 20-21 s with two one-thread ones
    in one measurement, 26.8 s against 23.1 s (1.16x) in ``benchmarks/bench_render.py``'s run.
    """
    return max(1, min(available_cores(), n_images))


def check_workers(workers: int | None) -> None:
    """Raise a one-line ConfigError unless ``workers`` is None (the default) or an integer >= 1."""
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ConfigError(f"workers: must be an integer >= 1, got {workers!r}")


def render_iter(
    latents: np.ndarray,
    size: int,
    samples: int = DEFAULT_SAMPLES,
    mode: str = "box",
    indices: Sequence[int] | None = None,
    workers: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Render latents [N, 10] with Cycles; yield ``(index, image uint8 [size, size, 3])`` as each
    image is finished (in order within a worker, interleaved across workers).

    ``indices`` label the images (default ``0..N-1``). ``workers`` Blender processes (default
    :func:`default_workers`) render interleaved shares of the images, each with one thread, or with
    all available cores when there is one worker. The bytes of an image do not depend on either.
    """
    python = require_python()
    phys = to_physical(latents, mode)
    indices = list(range(len(phys))) if indices is None else [int(i) for i in indices]
    if not indices:
        return
    check_workers(workers)
    workers = min(default_workers(len(indices)) if workers is None else workers, len(indices))
    threads = 0 if workers == 1 else max(1, available_cores() // workers)
    with tempfile.TemporaryDirectory(prefix="clinvert-cycles-") as tmp:
        env = dict(os.environ, PYTHONNOUSERSITE="1")
        env.pop("PYTHONPATH", None)
        procs: list[tuple[subprocess.Popen, object]] = []
        sel = selectors.DefaultSelector()
        try:
            for k in range(workers):
                share = slice(k, None, workers)
                job_path = Path(tmp) / f"job{k}.npz"
                np.savez(job_path, **_job(phys[share], indices[share], size, samples, threads))
                err_file = open(Path(tmp) / f"stderr{k}.txt", "w+")  # noqa: SIM115 - closed below
                proc = subprocess.Popen(
                    [python, "-I", str(_WORKER), str(job_path), tmp],
                    stdout=subprocess.PIPE,
                    stderr=err_file,
                    env=env,
                )
                procs.append((proc, err_file))
                sel.register(proc.stdout, selectors.EVENT_READ, bytearray())
            while sel.get_map():
                for key, _ in sel.select():
                    buffer = key.data
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buffer += chunk
                    while b"\n" in buffer:
                        line, _, rest = bytes(buffer).partition(b"\n")
                        buffer[:] = rest
                        if line.startswith(b"done "):
                            index = int(line.split()[1])
                            yield index, _read_png(Path(tmp) / f"{index}.png")
            for proc, err_file in procs:
                code = proc.wait()
                err_file.seek(0)
                err = err_file.read()
                if code != 0:
                    last = err.strip().splitlines()[-1] if err.strip() else "no message"
                    raise ConfigError(f"backend cycles: the Blender worker failed: {last}")
        finally:
            sel.close()
            for proc, err_file in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
                err_file.close()


def render(
    latents: np.ndarray,
    size: int,
    samples: int = DEFAULT_SAMPLES,
    mode: str = "box",
    workers: int | None = None,
) -> np.ndarray:
    """Render latents [N, 10] (``mode`` coordinates) with Cycles to uint8 [N, size, size, 3]."""
    out = np.empty((len(latents), size, size, 3), np.uint8)
    for index, image in render_iter(latents, size, samples, mode, workers=workers):
        out[index] = image
    return out
