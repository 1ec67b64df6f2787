"""The fixed 3DIdent scene shared by the preview and Cycles renderers (scene units, z up).

- Teapot: the mesh of :func:`~clinvert.data.threedident.teapot.teapot_mesh` (half-length 1),
  rotated about its centre by Euler angles (R = Rz(gamma) Ry(beta) Rx(alpha); since scene 3 beta
  stays within +-pi/3, away from the gimbal lock: :mod:`~clinvert.data.threedident.factors`), then
  moved to ``(pos_x, pos_y, pos_z)``.
- Ground: the plane ``z = GROUND_Z`` (below the lowest point any pose can reach), coloured by the
  background hue; it fills the whole frame.
- Spotlight: on a circle of radius ``SPOT_RADIUS`` at height ``SPOT_HEIGHT`` above the object centre,
  at azimuth ``spot_angle``, always aimed at the object centre (Blender: a track-to constraint);
  its colour has the spotlight hue.
- Ambient: a uniform grey world of radiance ``AMBIENT`` (Cycles' world colour).
- Camera: fixed at ``CAMERA_POS`` (``CAMERA_DISTANCE`` from the centre of the position box, at
  ``CAMERA_ELEVATION`` above the horizon, on the -y side) looking at ``CAMERA_TARGET`` (the box
  centre) with a ``CAMERA_FOV`` field of view. The distance is the smallest that keeps the whole
  teapot in frame, in every pose, over the whole position box (:func:`frame_margin`): the object
  fills as much of the image as that allows (about 10 % of it on average, twice scene 1's 5 %).
- Colours: HSV with fixed saturation and value (``OBJECT_SV``, ``BACKGROUND_SV``, ``SPOT_SV``),
  used as linear reflectance / light colour; images are sRGB-encoded ("Standard" view transform).
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

#: the scene's version, part of both renderers' version strings; datasets of older scenes are refused
SCENE = 3
#: renderer versions of earlier scenes: their datasets are refused by name (see ``retired``)
RETIRED_RENDERERS: dict[str, str] = {
    "preview 1": "scene 1 (the teapot about 5 % of the frame)",
    "preview 2": "scene 1 (the teapot about 5 % of the frame)",
    "blender 5.0.1 cycles": "scene 1 (the teapot about 5 % of the frame)",
    "preview 3": "scene 2 (rot_beta reaching the gimbal lock at +-90 degrees)",
    "blender 5.0.1 cycles, scene 2": "scene 2 (rot_beta reaching the gimbal lock at +-90 degrees)",
}
GROUND_Z = -1.4
CAMERA_TARGET = (0.0, 0.0, 0.0)
CAMERA_ELEVATION = math.radians(44.0)
CAMERA_DISTANCE = 9.8
CAMERA_POS = (
    0.0,
    -CAMERA_DISTANCE * math.cos(CAMERA_ELEVATION),
    CAMERA_DISTANCE * math.sin(CAMERA_ELEVATION),
)
CAMERA_FOV = math.radians(20.0)
SPOT_RADIUS = 3.0
SPOT_HEIGHT = 4.0
#: spotlight power in watts (Blender convention: the power of an isotropic point light)
SPOT_POWER = 1000.0
#: full cone angle and blend (Blender ``spot_size`` / ``spot_blend``)
SPOT_SIZE = math.radians(60.0)
SPOT_BLEND = 0.3
AMBIENT = 0.12
OBJECT_SV = (0.75, 0.85)
BACKGROUND_SV = (0.75, 0.85)
SPOT_SV = (0.5, 1.0)


def hsv_to_rgb(hue: np.ndarray, sv: tuple[float, float]) -> np.ndarray:
    """RGB [n, 3] (float64) of hues ``hue`` [n] in [0, 1) at fixed saturation and value ``sv``."""
    return np.array([colorsys.hsv_to_rgb(float(h) % 1.0, *sv) for h in np.ravel(hue)]).reshape(
        -1, 3
    )


def camera_frame() -> tuple[np.ndarray, np.ndarray]:
    """Camera position [3] and world-to-camera rotation [3, 3] (rows: right, up, forward)."""
    pos = np.array(CAMERA_POS)
    fwd = np.array(CAMERA_TARGET) - pos
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return pos, np.stack([right, up, fwd])


def euler_xyz(alpha: np.ndarray, beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Rotation matrices [n, 3, 3] of Blender 'XYZ' Euler angles: Rz(gamma) @ Ry(beta) @ Rx(alpha)."""
    ca, sa, cb, sb = np.cos(alpha), np.sin(alpha), np.cos(beta), np.sin(beta)
    cg, sg = np.cos(gamma), np.sin(gamma)
    one, zero = np.ones_like(ca), np.zeros_like(ca)
    rx = np.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).reshape(-1, 3, 3)
    ry = np.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).reshape(-1, 3, 3)
    rz = np.stack([cg, -sg, zero, sg, cg, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def spot_position(phys: np.ndarray) -> np.ndarray:
    """Spotlight positions [n, 3] for physical factors ``phys`` [n, 10]."""
    ang = phys[:, 6]
    off = np.stack(
        [SPOT_RADIUS * np.cos(ang), SPOT_RADIUS * np.sin(ang), np.full_like(ang, SPOT_HEIGHT)], -1
    )
    return phys[:, :3] + off


def frame_margin(size: int, position_box: np.ndarray, radius: float) -> float:
    """Smallest distance in pixels (of a ``size``-pixel image) between the image border and a ball
    of ``radius`` centred anywhere in ``position_box`` ([3, 2] low/high per axis, scene units).

    Negative when some pose can leave the frame. Exact for the ball: the set of points it covers
    over the box is the box grown by the ball, which is convex, so it lies inside the camera's
    (convex) view pyramid iff every corner's ball lies inside each of its four side planes. A ball
    of the mesh's bounding radius holds the teapot in every rotation, so a positive margin means
    the whole object stays in frame over the whole box.
    """
    import itertools

    pos, rot = camera_frame()
    t = math.tan(CAMERA_FOV / 2)
    norm = math.sqrt(1.0 + t * t)
    worst = math.inf
    for corner in itertools.product(*np.asarray(position_box, dtype=np.float64)):
        right, up, depth = rot @ (np.asarray(corner) - pos)
        for offset in (right, -right, up, -up):
            # distance of the ball's surface to the side plane offset = t * depth, as pixels there
            gap = (t * depth - offset) / norm - radius
            worst = min(worst, gap / (t * depth) * size / 2)
    return worst
