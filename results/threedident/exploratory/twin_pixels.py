"""How much the preview image of a scene changes when rotation latents change sign: 400 random
scenes (seed 0) at 64x64, rendered as drawn and with (alpha, gamma), alpha, gamma, beta,
(beta, gamma) or all three negated; prints the mean absolute pixel difference and the share of
pixels that move by more than 8/255 in some channel.

    python results/threedident/exploratory/twin_pixels.py
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from clinvert.data.threedident.factors import FACTORS
from clinvert.data.threedident.preview import render

A, B, G = (FACTORS.index(f) for f in ("rot_alpha", "rot_beta", "rot_gamma"))
#: The sign flips measured: label -> negated rotation latents.
FLIPS = {
    "(-a, b, -g)": [A, G],
    "(-a, b, g)": [A],
    "(a, b, -g)": [G],
    "(a, -b, g)": [B],
    "(a, -b, -g)": [B, G],
    "(-a, -b, -g)": [A, B, G],
}


def scenes() -> np.ndarray:
    """The 400 random scenes (seed 0), [400, 10] latents in [-1, 1]."""
    return np.random.default_rng(0).uniform(-1, 1, (400, 10)).astype(np.float32)


def twins(z: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(label, z with that flip's rotation latents negated) for each of :data:`FLIPS`."""
    for name, cols in FLIPS.items():
        flipped = z.copy()
        flipped[:, cols] *= -1
        yield name, flipped


if __name__ == "__main__":
    z = scenes()
    base = render(z, 64).astype(np.float32)
    for name, flipped in twins(z):
        d = np.abs(render(flipped, 64).astype(np.float32) - base)
        moved = (d.max(-1) > 8).mean((1, 2))
        print(f"{name:14s} mean |d pixel| {d.mean():.2f}   pixels moved {100 * moved.mean():.2f} %")
