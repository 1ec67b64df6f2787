"""Loss step time and peak memory: clinvert's InfoNCE against a naive [B, B, n] reference.

Prints, side by side in one run, the forward+backward time of the loss alone at batch B for the cosine
and L_p similarities, and the ratio naive / clinvert. Peak memory is measured as the growth of the
process's peak resident set (ru_maxrss) in a fresh subprocess per case.

    python benchmarks/bench_loss.py [--batch 6144] [--dim 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from clinvert.losses import info_nce


def naive_info_nce(a: torch.Tensor, b: torch.Tensor, similarity: str, p: float, tau: float):
    """The reference code's way: materialise [B, B, n] differences."""
    if similarity == "cosine":
        s = (a[:, None, :] * b[None, :, :]).sum(-1)
    else:
        s = -(a[:, None, :] - b[None, :, :]).abs().pow(p).sum(-1)
    return torch.nn.functional.cross_entropy(s / tau, torch.arange(a.shape[0]))


def time_case(impl: str, similarity: str, p: float, batch: int, dim: int, repeats: int) -> dict:
    """Median seconds of forward+backward and peak RSS growth (MiB) of one implementation."""
    import resource

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(batch, dim, generator=gen)
    b = a + 0.1 * torch.randn(batch, dim, generator=gen)
    if similarity == "cosine":
        a, b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    fn = (
        naive_info_nce
        if impl == "naive"
        else (lambda x, y, s, q, t: info_nce(x, y, similarity=s, p=q, tau=t))
    )
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        start = time.perf_counter()
        fn(x, y, similarity, p, 1.0).backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": sorted(times)[len(times) // 2], "peak_mib": (peak - base) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=6144)
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        impl, similarity, p = args.case.split(":")
        print(json.dumps(time_case(impl, similarity, float(p), args.batch, args.dim, args.repeats)))
        return
    print(
        f"InfoNCE forward+backward, B={args.batch}, n={args.dim}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'loss':10s}{'naive s':>10s}{'clinvert s':>12s}{'speed-up':>10s}"
        f"{'naive MiB':>11s}{'clinvert MiB':>14s}"
    )
    for similarity, p in [("cosine", 2.0), ("lp", 1.0), ("lp", 2.0), ("lp", 3.0)]:
        row = {}
        for impl in ("naive", "clinvert"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--batch",
                    str(args.batch),
                    "--dim",
                    str(args.dim),
                    "--repeats",
                    str(args.repeats),
                    "--case",
                    f"{impl}:{similarity}:{p}",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            row[impl] = json.loads(out.stdout)
        name = "cosine" if similarity == "cosine" else f"L{p:g}"
        n, c = row["naive"], row["clinvert"]
        print(
            f"{name:10s}{n['seconds']:10.3f}{c['seconds']:12.3f}{n['seconds'] / c['seconds']:9.1f}x"
            f"{n['peak_mib']:11.0f}{c['peak_mib']:14.0f}"
        )


if __name__ == "__main__":
    main()
