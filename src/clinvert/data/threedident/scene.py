"""The fixed 3DIdent scene shared by the preview and Cycles renderers (scene units, z up).

- Teapot: the mesh of :func:`~clinvert.data.threedident.teapot.teapot_mesh` (half-length 1),
  rotated about its centre by Euler angles (R = Rz(gamma) Ry(beta) Rx(alpha)), then moved to
  ``(pos_x, pos_y, pos_z)``.
- Ground: the plane ``z = GROUND_Z`` (below the lowest point any pose can reach), coloured by the
  background hue; it fills the whole frame.
- Spotlight: on a circle of radius ``SPOT_RADIUS`` at height ``SPOT_HEIGHT`` above the object centre,
  at azimuth ``spot_angle``, always aimed at the object centre (Blender: a track-to constraint);
  its colour has the spotlight hue.
- Ambient: a uniform grey world of radiance ``AMBIENT`` (Cycles' world colour).
- Camera: fixed at ``CAMERA_POS`` looking at ``CAMERA_TARGET`` with a ``CAMERA_FOV`` field of view.
- Colours: HSV with fixed saturation and value (``OBJECT_SV``, ``BACKGROUND_SV``, ``SPOT_SV``),
  used as linear reflectance / light colour; images are sRGB-encoded ("Standard" view transform).
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

GROUND_Z = -1.7
CAMERA_POS = (0.0, -7.0, 6.2)
CAMERA_TARGET = (0.0, 0.0, -0.5)
CAMERA_FOV = math.radians(30.0)
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
