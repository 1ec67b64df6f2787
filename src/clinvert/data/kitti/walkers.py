"""Mask sequences like KITTI Masks that can be made here: walking pedestrian silhouettes.

Each sequence is one figure (head, torso, two arms and two legs that swing as it walks, so its
shape changes from frame to frame) whose three generating factors, vertical position, horizontal
position and size, each in [0, 1], follow a random walk:

    u_t = reflect(u_{t-1} + e_t),   e_t ~ Laplace(0, b)  (``transition: laplace``, sparse)
                                    e_t ~ Normal(0, s)   (``transition: normal``, the control)

``b`` is set so that both laws have the same standard deviation ``scale`` (b = scale / sqrt 2).
Reflection at 0 and 1 keeps a walk that starts uniform uniform at every step (a symmetric step
reflected into an interval leaves the uniform law invariant), so each factor covers its range
evenly, as the marginal of a contrastive model on a box assumes.

The recorded latents are not the generating factors but, as in the published data, what is
*measured* on each mask: centre of mass (y, x) and area in pixels
(:func:`~clinvert.data.kitti.masks.mask_factors`). Files are written in the published pickle
format (:func:`~clinvert.data.kitti.masks.write_kitti_masks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clinvert.data.kitti.masks import SIDE, mask_factors
from clinvert.errors import ConfigError

TRANSITIONS = ("laplace", "normal")


@dataclass(frozen=True)
class WalkerSpec:
    """Settings of a generated dataset (defaults: about 20k frames)."""

    sequences: int = 400
    length: int = 50
    transition: str = "laplace"
    scale: float = 0.05
    seed: int = 0
    #: figure height in pixels at size 0 and 1
    height: tuple[float, float] = (16.0, 34.0)
    #: frames per stride (two steps), drawn per sequence uniformly in this range
    period: tuple[float, float] = (8.0, 14.0)

    def check(self) -> None:
        """One-line ConfigError naming the first bad setting."""
        for name in ("sequences", "length", "seed"):
            value = getattr(self, name)
            low = 0 if name == "seed" else (2 if name == "length" else 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name}: must be an integer >= {low}, got {value!r}")
        if self.transition not in TRANSITIONS:
            raise ConfigError(
                f"transition: must be one of {', '.join(TRANSITIONS)}, got {self.transition!r}"
            )
        if not (isinstance(self.scale, int | float) and 0 < self.scale <= 1):
            raise ConfigError(f"scale: must be a number in (0, 1], got {self.scale!r}")


def reflect(u: np.ndarray) -> np.ndarray:
    """Fold values onto [0, 1] by reflection at both ends (any number of times)."""
    u = np.mod(u, 2.0)
    return np.where(u > 1.0, 2.0 - u, u)


def factor_walks(spec: WalkerSpec, rng: np.random.Generator) -> np.ndarray:
    """Generating factors float64 [sequences, length, 3] in [0, 1]."""
    n, t = spec.sequences, spec.length
    if spec.transition == "laplace":
        steps = rng.laplace(0.0, spec.scale / math.sqrt(2.0), (n, t - 1, 3))
    else:
        steps = rng.normal(0.0, spec.scale, (n, t - 1, 3))
    u = np.empty((n, t, 3))
    u[:, 0] = rng.random((n, 3))
    for k in range(1, t):
        u[:, k] = reflect(u[:, k - 1] + steps[:, k - 1])
    return u


def _capsule(
    px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """Pixels within ``radius`` of the segment a-b; a, b [T, 2] (x, y), radius [T]."""
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    dx, dy = (b - a)[:, 0, None, None], (b - a)[:, 1, None, None]
    length2 = np.maximum(dx * dx + dy * dy, 1e-9)
    s = np.clip(((px - ax) * dx + (py - ay) * dy) / length2, 0.0, 1.0)
    ex, ey = px - (ax + s * dx), py - (ay + s * dy)
    return ex * ex + ey * ey <= radius[:, None, None] ** 2


def draw_walkers(u: np.ndarray, phase: np.ndarray, spec: WalkerSpec) -> np.ndarray:
    """Masks bool [T, 64, 64] of figures with factors ``u`` [T, 3] (y, x, size) at stride
    phases ``phase`` [T] (radians)."""
    h = spec.height[0] + u[:, 2] * (spec.height[1] - spec.height[0])
    # centre ranges keep the tallest figure (and its swinging limbs) inside the frame
    half_h, half_w = 0.56 * spec.height[1] + 1.0, 0.3 * spec.height[1] + 1.0
    cy = half_h + u[:, 0] * (SIDE - 2 * half_h)
    cx = half_w + u[:, 1] * (SIDE - 2 * half_w)
    top = cy - h / 2
    py, px = np.indices((SIDE, SIDE), dtype=np.float64) + 0.5
    py, px = py[None], px[None]
    col = lambda v: v[:, None, None]  # noqa: E731 - [T] -> [T, 1, 1]

    head_y = top + 0.09 * h
    mask = (px - col(cx)) ** 2 + (py - col(head_y)) ** 2 <= col(0.085 * h) ** 2
    torso_y = top + 0.34 * h
    mask |= ((px - col(cx)) / col(0.12 * h)) ** 2 + ((py - col(torso_y)) / col(0.19 * h)) ** 2 <= 1
    swing = 0.38 * np.sin(phase)
    hip = np.stack([cx, top + 0.5 * h], 1)
    shoulder = np.stack([cx, top + 0.2 * h], 1)
    for sign in (1.0, -1.0):
        leg = 0.5 * h
        foot = hip + np.stack([np.sin(sign * swing) * leg, np.cos(sign * swing) * leg], 1)
        mask |= _capsule(px, py, hip, foot, 0.05 * h)
        arm = 0.3 * h
        hand = shoulder + np.stack([np.sin(-sign * swing) * arm, np.cos(sign * swing) * arm], 1)
        mask |= _capsule(px, py, shoulder, hand, 0.035 * h)
    return mask


def make_walkers(spec: WalkerSpec) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Mask sequences (bool [length, 64, 64]) and their measured factors (float32 [length, 3])."""
    spec.check()
    rng = np.random.default_rng(spec.seed)
    walks = factor_walks(spec, rng)
    periods = rng.uniform(*spec.period, spec.sequences)
    starts = rng.uniform(0.0, 2 * math.pi, spec.sequences)
    masks, latents = [], []
    frames = np.arange(spec.length)
    for i in range(spec.sequences):
        phase = starts[i] + 2 * math.pi * frames / periods[i]
        m = draw_walkers(walks[i], phase, spec)
        masks.append(m)
        latents.append(mask_factors(m))
    return masks, latents


def transition_stats(latents: list[np.ndarray], delta_t: int = 1) -> dict[str, list[float]]:
    """Per factor: standard deviation and kurtosis (Pearson's, 3 for a Gaussian, 6 for a
    Laplace) of the changes over ``delta_t`` frames, pooled over sequences."""
    from scipy.stats import kurtosis

    diffs = np.concatenate([z[delta_t:] - z[:-delta_t] for z in latents if len(z) > delta_t])
    return {
        "std": diffs.std(0).tolist(),
        "kurtosis": kurtosis(diffs, axis=0, fisher=False).tolist(),
    }
