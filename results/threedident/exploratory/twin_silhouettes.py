"""How much the teapot's silhouette changes when rotation latents change sign (exploratory): 400
random scenes (seed 0) at 64x64 with the preview renderer, as drawn and with the sign flips of
``twin_pixels.py`` (the same scenes and flips, imported from it). The object's pixels are those that do not
change when the background hue is moved by half a turn (the rest is background, floor or shadow);
prints the mean intersection over union of the two silhouettes and the share of object pixels
outside the other silhouette. An even early code of two rotations would be what a
silhouette-reading encoder forms if their joint sign flip kept the silhouette.

    python results/threedident/exploratory/twin_silhouettes.py
"""

from __future__ import annotations

import numpy as np
from twin_pixels import scenes, twins  # this folder, first on sys.path when run as a script

from clinvert.data.threedident.factors import FACTORS
from clinvert.data.threedident.preview import render

hue = FACTORS.index("hue_background")


def silhouette(latents: np.ndarray) -> np.ndarray:
    """[N, 64, 64] bool: pixels unchanged (within 8/255) when the background hue turns by half."""
    other = latents.copy()
    other[:, hue] = np.where(other[:, hue] > 0, other[:, hue] - 1, other[:, hue] + 1)
    d = np.abs(render(latents, 64).astype(np.float32) - render(other, 64).astype(np.float32))
    return d.max(-1) <= 8


if __name__ == "__main__":
    z = scenes()
    base = silhouette(z)
    print(f"object pixels per image: {base.sum((1, 2)).mean():.0f} of 4096")
    for name, flipped in twins(z):
        twin = silhouette(flipped)
        inter, union = (base & twin).sum((1, 2)), (base | twin).sum((1, 2))
        iou = (inter / np.maximum(union, 1)).mean()
        outside = ((base & ~twin).sum((1, 2)) / np.maximum(base.sum((1, 2)), 1)).mean()
        print(
            f"{name:14s} silhouette IoU {iou:.3f}   "
            f"object pixels outside the twin's {100 * outside:.1f} %"
        )
