"""Training step on a CUDA device at the paper's batch: step time and fraction of the matmul peak.

For each case of ``bench_step.py`` (cosine, L1, L2, L3 at batch 6144, the paper's encoder) and each
``train.precision`` (fp32, tf32, bf16), prints the median time of ``Trainer.train_step`` (the device
synchronised around each step), the step's matmul FLOPs per second (``bench_step.step_flops``:
encoder on both views and the similarity, forward and backward) and its fraction of the device's
matmul throughput measured in the same run at that precision (an 8192 x 8192 product).

Without a CUDA device it prints one line saying so and exits 0: the numbers of this benchmark mean
something on a GPU only (``bench_step.py`` is the CPU one).

    python benchmarks/bench_gpu.py [--batch 6144] [--steps 20] [--cases cosine,l1,l2,l3]
        [--precisions fp32,tf32,bf16] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def _bench_step():
    path = Path(__file__).resolve().parent / "bench_step.py"
    spec = importlib.util.spec_from_file_location("bench_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def matmul_peak(precision: str, size: int = 8192, repeats: int = 10) -> float:
    """Measured matmul throughput of the device at ``precision`` (TFLOP/s, best of ``repeats``)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def step_seconds(case: str, precision: str, batch: int, steps: int) -> float:
    """Median seconds of one training step of ``case`` at ``precision`` on the CUDA device."""
    from clinvert.config import validate_config
    from clinvert.train import Trainer

    cfg = _bench_step().case_config(case, batch)
    cfg["train"].update(device="cuda", precision=precision)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    trainer = Trainer(validate_config(cfg), progress=False)
    times = []
    for i in range(steps + 3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step()
        trainer.step += 1
        torch.cuda.synchronize()
        if i >= 3:  # warm-up: allocator, kernels' first launch
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or print why not); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=6144)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cases", default="cosine,l1,l2,l3")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured (bench_step.py measures the CPU)")
        return 0
    bench = _bench_step()
    precisions = [p for p in args.precisions.split(",") if p]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        print(f"bench_gpu: error: --precisions: {unknown[0]} is not one of {', '.join(PRECISIONS)}")
        return 2
    device = torch.cuda.get_device_name()
    peaks = {p: matmul_peak(p) for p in precisions}
    print(f"{device}, torch {torch.__version__}, batch {args.batch}")
    print("matmul peak (TFLOP/s): " + ", ".join(f"{p} {v:.1f}" for p, v in peaks.items()))
    print(f"{'case':8s}{'precision':>10s}{'step ms':>10s}{'TFLOP/s':>10s}{'of peak':>9s}")
    rows = []
    for case in [c for c in args.cases.split(",") if c]:
        flops = bench.step_flops(case, args.batch)
        for precision in precisions:
            seconds = step_seconds(case, precision, args.batch, args.steps)
            rate = flops / seconds / 1e12
            rows.append(
                {
                    "case": case,
                    "precision": precision,
                    "step_seconds": seconds,
                    "tflops": rate,
                    "fraction_of_peak": rate / peaks[precision],
                }
            )
            print(
                f"{case:8s}{precision:>10s}{seconds * 1e3:>10.2f}{rate:>10.2f}"
                f"{rate / peaks[precision]:>9.1%}"
            )
    if args.json:
        record = {"device": device, "batch": args.batch, "peaks_tflops": peaks, "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
