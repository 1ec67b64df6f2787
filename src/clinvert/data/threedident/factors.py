"""The ten 3DIdent latents, how they are sampled and how they map to the scene.

Order and names (``FACTORS``)::

    pos_x, pos_y, pos_z, rot_alpha, rot_beta, rot_gamma, spot_angle, hue_object, hue_spot,
    hue_background

Two coordinate modes:

``box``
    all ten latents lie in [-1, 1] and map *linearly* onto a physical interval (``BOX_RANGES``).
    Every interval is chosen so that the map from latents to images is injective: circular
    quantities (the spotlight angle, the hues) cover less than a full turn, so that -1 and +1 never
    give the same image.
``periodic``
    six factors live on circles and are stored as angles in [-pi, pi): the first and last Euler
    angles (alpha, gamma), the spotlight angle and the three hues. They map to the physical quantity
    over a full turn (angles in radians as they are, a hue ``h`` in [0, 1) as ``(z + pi) / (2 pi)``).
    The middle Euler angle beta stays an interval, [-1, 1] onto [-pi/3, pi/3] as in ``box``, and so
    do the positions. This is what makes the mode identifiable: alpha and gamma on full turns with
    beta inside a half turn reach every orientation they reach exactly once, whereas three full
    turns reach each twice ((a, b, g) and (a + pi, pi - b, g + pi) are one rotation). Datasets
    rendered before this rule (beta on a full turn) lack the manifest's ``circular`` list and are
    refused by name.

Why beta stops at +-pi/3 (scene 3): at beta = +-pi/2 the Euler angles meet their gimbal lock, where
alpha and gamma turn about one axis and only their sum or difference shows in the image: the map from
latents to images is not injective there, and near it its inverse is steep (alpha and gamma are
resolved in proportion to cos(beta)). Scene 2 let beta reach +-pi/2; its supervised ceiling read
alpha and gamma to R² 0.95-0.97 for |beta| < 0.9 pi/2 and 0.6-0.7 within 9 degrees of the lock
(results/threedident/README.md). Scene 3 keeps beta 30 degrees away (cos(beta) >= 1/2).

Physical units (``to_physical``): positions in scene units (the teapot is scaled to a half-length of
1, see :mod:`~clinvert.data.threedident.teapot`), angles in radians, hues in [0, 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FACTORS: tuple[str, ...] = (
    "pos_x",
    "pos_y",
    "pos_z",
    "rot_alpha",
    "rot_beta",
    "rot_gamma",
    "spot_angle",
    "hue_object",
    "hue_spot",
    "hue_background",
)
MODES: tuple[str, ...] = ("box", "periodic")

#: indices of the factors that are circular in ``periodic`` mode: alpha and gamma (beta, on a half
#: turn, is not: see the module docstring), the spotlight angle and the three hues
PERIODIC: tuple[int, ...] = (3, 5, 6, 7, 8, 9)
_HUES = (7, 8, 9)

#: the middle Euler angle's largest magnitude (radians), both modes: 30 degrees short of the gimbal lock
BETA_MAX = math.pi / 3

#: physical interval of each factor in ``box`` mode (latent -1 -> low, +1 -> high)
BOX_RANGES: dict[str, tuple[float, float]] = {
    # object centre in scene units (the teapot's bounding radius is 1.04): the camera is placed so
    # that the whole teapot stays in view over this box (scene.frame_margin)
    "pos_x": (-0.5, 0.5),
    "pos_y": (-0.5, 0.5),
    "pos_z": (-0.3, 0.3),
    # Euler angles (Blender 'XYZ': R = Rz(gamma) Ry(beta) Rx(alpha)): alpha and gamma a half turn,
    # beta two thirds of one, 30 degrees short of the gimbal lock at +-pi/2 (module docstring)
    "rot_alpha": (-math.pi / 2, math.pi / 2),
    "rot_beta": (-BETA_MAX, BETA_MAX),
    "rot_gamma": (-math.pi / 2, math.pi / 2),
    # spotlight azimuth on its circle above the object: 3/4 of a turn, so -1 and +1 differ
    "spot_angle": (-0.75 * math.pi, 0.75 * math.pi),
    # hues in turns: 0.8 of the colour circle, so the two ends are distinct colours
    "hue_object": (0.0, 0.8),
    "hue_spot": (0.0, 0.8),
    "hue_background": (0.0, 0.8),
}


def circular_factors(mode: str) -> list[str]:
    """Names of the factors stored as angles in ``mode`` (none in ``box``); a dataset's manifest
    records this list as ``circular`` in ``periodic`` mode."""
    return [FACTORS[i] for i in PERIODIC] if check_mode(mode) == "periodic" else []


def stale_periodic(manifest: dict[str, Any]) -> str | None:
    """Why a ``periodic`` dataset's manifest describes another set of circular factors (None when it
    matches this version, or is not periodic): those rendered with beta on a full turn, which draw
    every orientation twice, have no ``circular`` list."""
    if manifest.get("mode") != "periodic":
        return None
    circular = manifest.get("circular")
    if circular == circular_factors("periodic"):
        return None
    if circular is None:
        return (
            "mode 'periodic' of this dataset puts rot_beta on a full turn (no 'circular' list), "
            "which draws every orientation twice; render it again into a new folder"
        )
    return (
        f"circular must be {circular_factors('periodic')} in mode 'periodic', got {circular!r}; "
        "render it again into a new folder"
    )


def position_box() -> np.ndarray:
    """The object centre's physical range, float64 [3, 2] (low, high for x, y, z)."""
    return np.array([BOX_RANGES[f] for f in FACTORS[:3]], dtype=np.float64)


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known mode, else raise a one-line ConfigError."""
    if mode not in MODES:
        from clinvert.config import ConfigError

        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def latent_bounds(mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bound of each latent (float32 [10]) in ``mode``'s coordinates."""
    check_mode(mode)
    low = -np.ones(len(FACTORS), np.float32)
    high = np.ones(len(FACTORS), np.float32)
    if mode == "periodic":
        low[list(PERIODIC)] = -math.pi
        high[list(PERIODIC)] = math.pi
    return low, high


def sample_latents(n: int, mode: str, seed: int) -> np.ndarray:
    """``n`` latents drawn uniformly from ``mode``'s domain; float32 [n, 10], a function of ``seed``.

    Box factors (and beta in ``periodic`` mode) are uniform on [-1, 1]; circular factors uniform on
    [-pi, pi).
    """
    low, high = latent_bounds(mode)
    rng = np.random.default_rng(seed)
    u = rng.random((int(n), len(FACTORS)))  # [0, 1)
    z = (low + u * (high - low)).astype(np.float32)
    if mode == "periodic":
        # float32 rounding may give exactly +pi; keep the half-open interval [-pi, pi)
        cols = list(PERIODIC)
        z[:, cols] = np.where(z[:, cols] >= np.float32(math.pi), -np.float32(math.pi), z[:, cols])
    return z


def to_physical(latents: np.ndarray, mode: str) -> np.ndarray:
    """Map latents ``[n, 10]`` in ``mode``'s coordinates to physical values (float64 [n, 10]).

    Columns keep the factor order: position (scene units), three Euler angles and the spotlight
    azimuth (radians), three hues in [0, 1). In both modes beta lies in [-BETA_MAX, BETA_MAX].
    """
    check_mode(mode)
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != len(FACTORS):
        from clinvert.config import ConfigError

        raise ConfigError(f"latents: expected shape [n, {len(FACTORS)}], got {list(z.shape)}")
    low = np.array([BOX_RANGES[f][0] for f in FACTORS])
    high = np.array([BOX_RANGES[f][1] for f in FACTORS])
    phys = low + (z + 1.0) / 2.0 * (high - low)
    if mode == "periodic":
        for i in PERIODIC:
            if i in _HUES:
                phys[:, i] = np.mod((z[:, i] + math.pi) / (2 * math.pi), 1.0)
            else:
                phys[:, i] = z[:, i]
    return phys
