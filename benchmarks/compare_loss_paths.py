"""The fused InfoNCE's bounded cosine path: saved exponentials against recomputed ones, per block size.

For each batch size B, times forward+backward of ``info_nce`` (cosine, tau = 1, unit vectors in
R^n: the sphere rows' bounded path) with every combination of ``LOGIT_BLOCK_ELEMENTS`` (rows of
logits per block) and backward (the forward's [B, B] exponentials kept, or recomputed block by block
in the backward), alternating the cases round by round in one process so that a busy machine slows
them alike. Prints the median milliseconds of each case and the fastest; ``--json`` writes them.
Not part of ``make bench`` (it chooses the module constants, see ``clinvert.losses``).

    python benchmarks/compare_loss_paths.py [--batch 512 1024 2048 4096 6144] [--rounds 15]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

BLOCKS = (1 << 15, 1 << 17, 1 << 19, 1 << 21)


def _pairs(batch: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen), dim=1)
    b = torch.nn.functional.normalize(a + 0.5 * torch.randn(batch, dim, generator=gen), dim=1)
    return a, b


def _case(a: torch.Tensor, b: torch.Tensor, block: int, saved: bool) -> Callable[[], float]:
    """Forward + backward of the loss with the module constants set for this case; returns seconds
    (the constants and the leaf copies are set up outside the timed part)."""
    import clinvert.losses as losses

    def run() -> float:
        losses.LOGIT_BLOCK_ELEMENTS = block
        losses.SAVED_WEIGHTS_ELEMENTS = a.shape[0] ** 2 if saved else 0
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        start = time.perf_counter()
        losses.info_nce(x, y, similarity="cosine", tau=1.0).backward()
        return time.perf_counter() - start

    return run


def main(argv: list[str] | None = None) -> int:
    """Measure and print; returns the exit status."""
    import clinvert.losses as losses
    from clinvert.timing import alternate, medians

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[512, 1024, 2048, 4096, 6144])
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--blocks", type=int, nargs="+", default=list(BLOCKS))
    parser.add_argument("--json", help="write the medians here")
    args = parser.parse_args(argv)
    defaults = (losses.LOGIT_BLOCK_ELEMENTS, losses.SAVED_WEIGHTS_ELEMENTS)
    print(
        f"torch threads: {torch.get_num_threads()}; module defaults: block {defaults[0]}, "
        f"saved up to {defaults[1]} elements"
    )
    results = []
    try:
        for batch in args.batch:
            a, b = _pairs(batch, args.dim)
            cases = {
                (blk, saved): _case(a, b, blk, saved)
                for blk in args.blocks
                for saved in (False, True)
            }
            med = {c: 1000 * s for c, s in medians(alternate(cases, args.rounds)).items()}
            best = min(med, key=med.get)
            row = "  ".join(
                f"{blk >> 10}K {'saved' if saved else 'recomp'} {ms:7.2f}"
                for (blk, saved), ms in med.items()
            )
            print(
                f"B={batch:5d}  {row}  | best: {best[0] >> 10}K "
                f"{'saved' if best[1] else 'recomputed'}",
                flush=True,
            )
            results.append(
                {
                    "batch": batch,
                    "median_ms": [
                        {"block_elements": blk, "saved": saved, "ms": round(ms, 3)}
                        for (blk, saved), ms in med.items()
                    ],
                }
            )
    finally:
        losses.LOGIT_BLOCK_ELEMENTS, losses.SAVED_WEIGHTS_ELEMENTS = defaults
    if args.json:
        from clinvert.io import write_json

        write_json(
            args.json,
            {
                "threads": torch.get_num_threads(),
                "dim": args.dim,
                "rounds": args.rounds,
                "results": results,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
