"""How much the preview image of a scene changes when rotation latents change sign: 400 random
scenes (seed 0) at 64x64, rendered as drawn and with (alpha, gamma), alpha, gamma, beta,
(beta, gamma) or all three negated; prints the mean absolute pixel difference and the share of
pixels that move by more than 8/255 in some channel.

    python results/threedident/exploratory/twin_pixels.py
"""

from __future__ import annotations

import numpy as np

from clinvert.data.threedident.factors import FACTORS
from clinvert.data.threedident.preview import render

rng = np.random.default_rng(0)
z = rng.uniform(-1, 1, (400, 10)).astype(np.float32)
a, b, g = (FACTORS.index(f) for f in ("rot_alpha", "rot_beta", "rot_gamma"))
base = render(z, 64).astype(np.float32)
for name, cols in (
    ("(-a, b, -g)", [a, g]),
    ("(-a, b, g)", [a]),
    ("(a, b, -g)", [g]),
    ("(a, -b, g)", [b]),
    ("(a, -b, -g)", [b, g]),
    ("(-a, -b, -g)", [a, b, g]),
):
    flipped = z.copy()
    flipped[:, cols] *= -1
    d = np.abs(render(flipped, 64).astype(np.float32) - base)
    moved = (d.max(-1) > 8).mean((1, 2))
    print(f"{name:14s} mean |d pixel| {d.mean():.2f}   pixels moved {100 * moved.mean():.2f} %")
