"""A picture of the scene: each 3DIdent factor swept from -1 to +1 alone, renderers side by side.

Rows are the ten factors; each backend contributes a block of columns, one per value of the swept
factor, with every other factor at :data:`BASE`. Used to check a scene change by eye and committed
with the results (``clinvert threedident grid``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clinvert.data.threedident import store
from clinvert.data.threedident.factors import FACTORS
from clinvert.errors import ConfigError

#: the value every factor takes while another one is swept (box coordinates; others 0): the
#: spotlight not straight behind the camera, a blue ground under a green teapot
BASE = {"spot_angle": -0.5, "hue_background": 0.5}


def sweep_latents(values: int) -> np.ndarray:
    """Latents float32 [10 * values, 10]: factor ``i`` swept over ``linspace(-1, 1, values)``
    in rows ``i * values ...``, the others at :data:`BASE` (0 where not listed)."""
    if isinstance(values, bool) or not isinstance(values, int) or values < 2:
        raise ConfigError(f"values: must be an integer >= 2, got {values!r}")
    base = np.zeros(len(FACTORS), np.float32)
    for name, value in BASE.items():
        base[FACTORS.index(name)] = value
    z = np.repeat(base[None], len(FACTORS) * values, 0)
    for i in range(len(FACTORS)):
        z[i * values : (i + 1) * values, i] = np.linspace(-1.0, 1.0, values, dtype=np.float32)
    return z


#: the renderers a sweep can use
BACKENDS = ("preview", "cycles")


def check_sweep(backends: Sequence[str], values: int, size: int) -> None:
    """One-line ConfigError for a bad backend list, value count or image size; for ``cycles``
    also when Blender's ``bpy`` is missing (before anything renders)."""
    if not backends:
        raise ConfigError(f"backends: name at least one of {', '.join(BACKENDS)}")
    for backend in backends:
        if backend not in BACKENDS:
            raise ConfigError(f"backends: each must be preview or cycles, got {backend!r}")
    sweep_latents(values)
    store.check_settings(1, size, "preview", "box", 0, None)
    if "cycles" in backends:
        from clinvert.data.threedident import cycles

        cycles.require_python()


def render_sweep(backend: str, values: int, size: int, samples: int | None = None) -> np.ndarray:
    """Images uint8 [10, values, size, size, 3] of :func:`sweep_latents` with ``backend``."""
    check_sweep([backend], values, size)
    z = sweep_latents(values)
    if backend == "preview":
        from clinvert.data.threedident import preview

        images = preview.render(z, size, ssaa=2)
    else:
        from clinvert.data.threedident import cycles

        images = cycles.render(z, size, samples or cycles.DEFAULT_SAMPLES)
    return images.reshape(len(FACTORS), values, size, size, 3)


def save_grid(out: str | Path, backends: Sequence[str], values: int = 5, size: int = 64) -> Path:
    """Render the sweep with each backend and write one PNG grid to ``out`` (written atomically).

    Raises:
        ConfigError: see :func:`check_sweep`; nothing is rendered or written then.
    """
    from matplotlib.figure import Figure

    from clinvert.io import write_png

    check_sweep(backends, values, size)
    sweeps = {b: render_sweep(b, values, size) for b in backends}
    cols = values * len(backends)
    fig = Figure(figsize=(1.1 * cols + 1.2, 1.1 * len(FACTORS) + 0.6))
    axes = fig.subplots(len(FACTORS), cols, squeeze=False)
    grid = np.linspace(-1.0, 1.0, values)
    for row, name in enumerate(FACTORS):
        for b, backend in enumerate(backends):
            for k in range(values):
                ax = axes[row, b * values + k]
                ax.imshow(sweeps[backend][row, k], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(
                        f"{backend}\n{grid[k]:+.1f}" if k == 0 else f"{grid[k]:+.1f}", fontsize=8
                    )
            axes[row, b * values].set_ylabel(name, fontsize=8)
    fig.suptitle("3DIdent: each factor swept from -1 to +1, the others fixed", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(out, fig, dpi=100)
    return out
