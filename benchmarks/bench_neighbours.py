"""The loader's nearest-neighbour snap: faiss's exact flat search (``IndexFlatL2``) against scipy's
KD-tree (``cKDTree``), one thread each, side by side in one run, on uniform latents of a 3DIdent box
(10 coordinates) and of a periodic dataset's (cos, sin) embedding (16), at several sizes. Each
query batch is one training batch's: B anchors drawn uniformly and their Normal(0.05) partners,
2B queries, k = 2 (a pair batch), and the B anchors alone, k = 1 (an anchors-only batch, the
supervised objective's). Prints milliseconds per batch, the ratio, whether both backends returned
the same neighbours, and which one ``auto`` picks (:func:`clinvert.data.pairs.auto_backend`).

    python benchmarks/bench_neighbours.py            # 40k, 200k, 400k points; about 1 min
    python benchmarks/bench_neighbours.py --smoke    # tiny sizes, for the tests
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from clinvert.data.pairs import NearestNeighbours, auto_backend, faiss
from clinvert.metrics import embed_latents

#: the angle factors of a periodic 3DIdent dataset (clinvert.data.threedident.factors.PERIODIC)
PERIODIC = (3, 5, 6, 7, 8, 9)


def _points(rows: int, periodic: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Latents [rows, 10] uniform in the box (angles in [-pi, pi) when periodic) and the mask."""
    mask = np.zeros(10, bool)
    z = rng.uniform(-1, 1, (rows, 10)).astype(np.float32)
    if periodic:
        mask[list(PERIODIC)] = True
        z[:, mask] *= np.float32(np.pi)
    return z, mask


def _best_ms(fn, repeats: int) -> float:  # noqa: ANN001
    """Best of ``repeats`` timings of ``fn()`` in milliseconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def main(argv: list[str] | None = None) -> int:
    """Print one line per (size, width, batch kind); optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="40000,200000,400000", help="points, comma-separated")
    parser.add_argument("--batch", type=int, default=128, help="pairs per batch (default 128)")
    parser.add_argument("--repeats", type=int, default=5, help="timings per cell, best kept")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    sizes = [2000] if args.smoke else [int(s) for s in args.sizes.split(",")]
    repeats = 1 if args.smoke else args.repeats
    if faiss is not None:
        faiss.omp_set_num_threads(1)  # as in a loader worker
    rng = np.random.default_rng(0)
    rows_out = []
    print("points x dims | batch | faiss ms | kdtree ms | faiss / kdtree | same | auto")
    for rows in sizes:
        for periodic in (False, True):
            z, mask = _points(rows, periodic, rng)
            emb = embed_latents(z, mask)
            anchors, _ = _points(args.batch, periodic, rng)
            partners = anchors + rng.normal(0, 0.05, anchors.shape).astype(np.float32)
            kinds = {
                "pairs, k=2": (embed_latents(np.concatenate([anchors, partners]), mask), 2),
                "anchors, k=1": (embed_latents(anchors, mask), 1),
            }
            tree = NearestNeighbours(emb, "kdtree")
            flat = NearestNeighbours(emb, "faiss") if faiss is not None else None
            for kind, (queries, k) in kinds.items():
                t_tree = _best_ms(lambda q=queries, k=k, s=tree: s.search(q, k), repeats)
                row = {
                    "points": rows,
                    "dims": int(emb.shape[1]),
                    "batch": kind,
                    "kdtree_ms": t_tree,
                    "auto": auto_backend(rows, emb.shape[1]),
                }
                if flat is not None:
                    row["faiss_ms"] = _best_ms(
                        lambda q=queries, k=k, s=flat: s.search(q, k), repeats
                    )
                    row["same"] = bool(
                        np.array_equal(flat.search(queries, k), tree.search(queries, k))
                    )
                    ratio = f"{row['faiss_ms'] / t_tree:.2f}x"
                    cells = f"{row['faiss_ms']:.1f} | {t_tree:.1f} | {ratio} | {row['same']}"
                else:
                    cells = f"(faiss not installed) | {t_tree:.1f} | - | -"
                print(f"{rows} x {emb.shape[1]} | {kind} | {cells} | {row['auto']}", flush=True)
                rows_out.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows_out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
