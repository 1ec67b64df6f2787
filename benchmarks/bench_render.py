"""3DIdent rendering at 64 x 64: Cycles with one Blender worker (Cycles' own threads) against one
one-thread worker per core, side by side in one run (alternating, best of two each), plus the preview
renderer on the same latents. Checks that the worker count leaves the bytes unchanged.

Needs Blender's bpy (``make render-env``, which ``make test`` also builds); prints a line and exits 0
without it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from clinvert.data.threedident import cycles, preview
from clinvert.data.threedident.factors import sample_latents


def timed(fn) -> tuple[float, np.ndarray]:  # noqa: ANN001
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    """Print the per-image times and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="images per timed render (default 200)")
    args = parser.parse_args()
    z = sample_latents(args.n, "box", 8)
    t_preview, _ = timed(lambda: preview.render(z, 64))
    print(f"preview: {args.n} images in {t_preview:.2f} s ({1e3 * t_preview / args.n:.1f} ms each)")
    if not cycles.available():
        print("cycles: skipped, Blender's bpy is not installed (make render-env)")
        return
    many = cycles.default_workers(args.n)
    best = {1: float("inf"), many: float("inf")}
    images = {}
    for _ in range(2):
        for workers in (1, many):
            seconds, images[workers] = timed(lambda w=workers: cycles.render(z, 64, workers=w))
            best[workers] = min(best[workers], seconds)
    for workers, seconds in best.items():
        print(
            f"cycles, {workers} worker(s): {args.n} images in {seconds:.1f} s "
            f"({seconds / args.n:.3f} s each, Blender start-up included)"
        )
    print(f"one worker per core / one worker: {best[1] / best[many]:.2f}x as fast")
    print(f"same bytes: {np.array_equal(images[1], images[many])}")


if __name__ == "__main__":
    main()
