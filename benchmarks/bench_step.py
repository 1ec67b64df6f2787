"""Whole training step at paper scale: clinvert against a naive reference, and the roofline.

One training step = sample positive pairs (z, z~) -> mixing g -> encoder f on both views -> InfoNCE ->
backward -> Adam. At batch 6144, n = 10 and the paper's encoder (10n -> 50n x4 -> 10n), this prints
side by side, each case in a fresh subprocess (so peak resident memory is that case's alone):

* the median step time and peak RSS of clinvert's step (``Trainer.train_step``) and of a naive
  reference step written here the way the paper's research code does it (latents sampled in numpy on
  the host, the encoder layer by layer, the L_p similarity through a [B, B, n] difference tensor),
  and their ratio;
* where clinvert's step spends its time (sampling, mixing, forward, loss, backward, optimiser);
* the roofline: the machine's float32 matmul throughput measured in the same run, and the step's
  achieved GFLOP/s (counted matmul FLOPs of encoder and loss, forward and backward) as a fraction of it.

    python benchmarks/bench_step.py [--batch 6144] [--repeats 3] [--threads N] [--cases cosine,l1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

CASES = {
    # name: (latent space, conditional, model output, similarity, p, tau)
    "cosine": ("sphere", {"name": "vmf", "kappa": 10.0}, "sphere", "cosine", 2.0, 0.1),
    "l1": ("box", {"name": "laplace", "scale": 0.05}, "box", "lp", 1.0, 0.05),
    "l2": ("box", {"name": "normal", "scale": 0.05}, "box", "lp", 2.0, 0.005),
    "l3": ("box", {"name": "gennorm", "beta": 3.0, "scale": 0.05}, "box", "lp", 3.0, 1.25e-4),
}


def case_config(name: str, batch: int) -> dict:
    """The run config of a benchmark case (paper encoder, batch ``batch``)."""
    space, conditional, output, similarity, p, tau = CASES[name]
    return {
        "latent": {
            "dim": 10,
            "space": space,
            "box": [-1.0, 1.0],
            "marginal": {"name": "uniform"},
            "conditional": conditional,
        },
        "model": {"output": output, "similarity": similarity, "p": p, "tau": tau},
        "train": {"batch_size": batch, "steps": 10**6, "lr": 1e-4, "device": "cpu"},
    }


# ----- the naive reference step -------------------------------------------------------------------
def numpy_vmf(mu: np.ndarray, kappa: float, rng: np.random.Generator) -> np.ndarray:
    """Wood's vMF sampler in numpy on the host, as the reference code samples (vectorised)."""
    n, d = mu.shape
    b = (d - 1) / (2 * kappa + np.sqrt(4 * kappa**2 + (d - 1) ** 2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (d - 1) * np.log(1 - x0**2)
    w = np.empty(n)
    todo = np.arange(n)
    while todo.size:
        zz = rng.beta((d - 1) / 2, (d - 1) / 2, size=todo.size)
        ww = (1 - (1 + b) * zz) / (1 - (1 - b) * zz)
        ok = kappa * ww + (d - 1) * np.log(1 - x0 * ww) - c >= np.log(rng.uniform(size=todo.size))
        w[todo[ok]] = ww[ok]
        todo = todo[~ok]
    v = rng.normal(size=(n, d))
    v -= (v * mu).sum(1, keepdims=True) * mu
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return w[:, None] * mu + np.sqrt(1 - w**2)[:, None] * v


def numpy_pairs(name: str, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positive pairs sampled in numpy on the host (rejection into the box for box latents)."""
    space, conditional, *_ = CASES[name]
    if space == "sphere":
        z = rng.normal(size=(batch, 10))
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        return z, numpy_vmf(z, conditional["kappa"], rng)
    z = rng.uniform(-1, 1, size=(batch, 10))
    zt = np.empty_like(z)
    todo = np.arange(batch)
    while todo.size:
        if conditional["name"] == "laplace":
            noise = rng.laplace(0, conditional["scale"], size=(todo.size, 10))
        elif conditional["name"] == "normal":
            noise = rng.normal(0, conditional["scale"], size=(todo.size, 10))
        else:  # generalised normal via the gamma trick
            beta = conditional["beta"]
            g = rng.gamma(1 / beta, 1.0, size=(todo.size, 10)) ** (1 / beta)
            noise = conditional["scale"] * g * rng.choice([-1.0, 1.0], size=(todo.size, 10))
        cand = z[todo] + noise
        ok = (np.abs(cand) <= 1).all(1)
        zt[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return z, zt


def naive_loss(a: torch.Tensor, b: torch.Tensor, similarity: str, p: float, tau: float):
    """InfoNCE as the reference code computes it: [B, B, n] differences for L_p."""
    if similarity == "cosine":
        s = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    else:
        s = -(a[:, None, :] - b[None, :, :]).abs().pow(p).sum(-1)
    return torch.nn.functional.cross_entropy(s / tau, torch.arange(a.shape[0]))


# ----- one case in this process -------------------------------------------------------------------
def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(impl: str, name: str, batch: int, repeats: int) -> dict:
    """Median step seconds, peak RSS (MiB) and, for clinvert, the time per phase."""
    import tempfile

    from clinvert.config import validate_config
    from clinvert.models.mlp import MLPEncoder
    from clinvert.runtime import configure_process
    from clinvert.train import Trainer, build_experiment, make_optimizer

    configure_process()  # as `clinvert train` does: flush denormals, keep freed memory mapped
    cfg = validate_config(case_config(name, batch))
    phases: dict[str, list[float]] = {}
    times = []
    if impl == "clinvert":
        trainer = Trainer(cfg, tempfile.mkdtemp(), progress=False)
        exp = trainer.exp

        def step() -> None:
            marks = [time.perf_counter()]
            z, zt = exp.process.sample_pairs(batch, trainer.source.generator, trainer.device)
            marks.append(time.perf_counter())
            x = exp.mixing(torch.cat([z, zt]))
            marks.append(time.perf_counter())
            h = exp.model(x)
            marks.append(time.perf_counter())
            loss = exp.loss(h[:batch], h[batch:])
            marks.append(time.perf_counter())
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            marks.append(time.perf_counter())
            trainer.optimizer.step()
            marks.append(time.perf_counter())
            for key, t0, t1 in zip(PHASES, marks, marks[1:], strict=False):
                phases.setdefault(key, []).append(t1 - t0)

        # The timed step above is Trainer.train_step split into phases; check it is the same work.
        assert trainer.train_step()[1].item() == 0
    else:
        exp = build_experiment(cfg)
        model, mixing = exp.model, exp.mixing
        for module in model.modules():  # the reference code's encoder runs layer by layer
            if isinstance(module, MLPEncoder):
                module.blockwise = False
        optimizer = make_optimizer(cfg, model)
        rng = np.random.default_rng(0)
        _, _, _, similarity, p, tau = CASES[name]

        def step() -> None:
            z, zt = numpy_pairs(name, batch, rng)
            x = mixing(torch.from_numpy(np.concatenate([z, zt])).float())
            h = model(x)
            loss = naive_loss(h[:batch], h[batch:], similarity, p, tau)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    step()  # warm-up
    phases.clear()
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    out = {"seconds": float(np.median(times)), "peak_mib": _peak_mib()}
    if phases:
        out["phases"] = {k: float(np.median(v)) for k, v in phases.items()}
    if impl == "clinvert":  # after the peak RSS is read: the sampler's matrices are not the step's
        peak, fractions = PeakSampler(), []
        for _ in range(repeats):
            gflops = peak()
            start = time.perf_counter()
            step()
            fractions.append(step_flops(name, batch) / (time.perf_counter() - start) / 1e9 / gflops)
        out["paired_fraction_of_peak"] = float(np.median(fractions))
    return out


class PeakSampler:
    """The float32 matmul throughput right now: the best of five 3072 x 3072 products (GFLOP/s).

    Called just before each timed step, so that each step is compared with the machine's speed at
    that moment: this machine's speed drifts by up to ~20 % within minutes (the best-of-seven peak
    ranged 275-341 GFLOP/s between runs of one session), which moved a peak measured once, in
    another process, by as much as the step itself.
    """

    def __init__(self, size: int = 3072) -> None:
        self.a, self.b = torch.randn(size, size), torch.randn(size, size)
        self.flops = 2 * size**3
        for _ in range(2):  # warm-up
            self.a @ self.b

    def __call__(self, repeats: int = 5) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            self.a @ self.b
            best = min(best, time.perf_counter() - start)
        return self.flops / best / 1e9


def run_ablation(name: str, batch: int, repeats: int) -> dict:
    """clinvert's step with the blockwise encoder and with the layer-by-layer one, alternating in
    one process (the machine's drift hits both alike): median seconds of each, and the median
    fraction of the matmul peak measured just before each round."""
    import tempfile

    from clinvert.config import validate_config
    from clinvert.models.mlp import MLPEncoder
    from clinvert.runtime import configure_process
    from clinvert.train import Trainer

    configure_process()
    trainer = Trainer(validate_config(case_config(name, batch)), tempfile.mkdtemp(), progress=False)
    encoders = [m for m in trainer.exp.model.modules() if isinstance(m, MLPEncoder)]
    peak, flops = PeakSampler(), step_flops(name, batch) / 1e9
    modes = ("blockwise", "layer_by_layer")
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    fractions: dict[str, list[float]] = {mode: [] for mode in modes}
    for rep in range(max(repeats, 5) + 1):
        gflops = peak()
        for mode in modes:
            for enc in encoders:
                enc.blockwise = mode == "blockwise"
            start = time.perf_counter()
            trainer.train_step()
            trainer.step += 1  # the source serves batches in order
            if rep:  # the first round warms up
                times[mode].append(time.perf_counter() - start)
                fractions[mode].append(flops / times[mode][-1] / gflops)
    return {
        mode: {
            "seconds": float(np.median(times[mode])),
            "paired": float(np.median(fractions[mode])),
        }
        for mode in modes
    }


PHASES = ("sample", "mixing", "forward", "loss", "backward", "optimizer")


def matmul_gflops(repeats: int = 7, size: int = 3072) -> float:
    """Measured float32 matmul throughput of this machine (GFLOP/s) at the current thread count.

    The best of ``repeats`` timed products after a warm-up: the ceiling the step is compared with.
    (A median of five 2048 products varied from 200 to 271 GFLOP/s between runs on 2 threads, which
    moved the step's "of peak" by 14 points; the best is the conservative reference.)
    """
    return PeakSampler(size)(repeats)


def step_flops(name: str, batch: int) -> float:
    """Matmul FLOPs of one step: encoder (both views) and similarity, forward and backward."""
    from clinvert.models.mlp import PAPER_WIDTHS

    widths = [10] + [10 * w for w in PAPER_WIDTHS] + [10]
    rows = 2 * batch
    enc = sum(2 * rows * i * o for i, o in zip(widths, widths[1:], strict=False))
    sim = 2 * batch * batch * 10 if CASES[name][3] == "cosine" or CASES[name][4] == 2.0 else 0
    return 3.0 * (enc + sim)  # backward = grad wrt inputs + grad wrt weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=6144)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        impl, name = args.case.split(":")
        if impl == "ablation":
            print(json.dumps(run_ablation(name, args.batch, args.repeats)))
        else:
            print(json.dumps(run_case(impl, name, args.batch, args.repeats)))
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"bench_step: error: --cases: unknown case {unknown[0]!r}, allowed: {list(CASES)}")
    peak = matmul_gflops()
    print(
        f"Training step, B={args.batch}, n=10, paper encoder, {torch.get_num_threads()} threads; "
        f"measured float32 matmul peak {peak:.1f} GFLOP/s"
    )
    header = (
        f"{'case':8s}{'naive s':>9s}{'clinvert s':>12s}{'speed-up':>10s}{'naive MiB':>11s}"
        f"{'clinvert MiB':>14s}{'GFLOP/s':>9s}{'of peak':>9s}{'paired':>8s}"
    )
    print(header)
    record = {"batch": args.batch, "threads": torch.get_num_threads(), "matmul_gflops": peak}
    for name in cases:
        row = {}
        for impl in ("naive", "clinvert"):
            cmd = [sys.executable, __file__, "--batch", str(args.batch), "--repeats"]
            cmd += [str(args.repeats), "--case", f"{impl}:{name}"]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"bench_step: {impl}:{name} failed:\n{out.stderr[-2000:]}")
            row[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        n, c = row["naive"], row["clinvert"]
        gflops = step_flops(name, args.batch) / c["seconds"] / 1e9
        print(
            f"{name:8s}{n['seconds']:9.3f}{c['seconds']:12.3f}{n['seconds'] / c['seconds']:9.1f}x"
            f"{n['peak_mib']:11.0f}{c['peak_mib']:14.0f}{gflops:9.1f}{gflops / peak:8.0%}"
            f"{c['paired_fraction_of_peak']:8.0%}"
        )
        record[name] = {**row, "gflops": gflops, "fraction_of_peak": gflops / peak}
    print(
        "of peak: against the peak above; paired: the median over timed steps of each step against "
        "a matmul peak measured just before it, in the same process"
    )
    print("\nwhere clinvert's step goes (median seconds per phase):")
    print(f"{'case':8s}" + "".join(f"{p:>11s}" for p in PHASES))
    for name in cases:
        ph = record[name]["clinvert"]["phases"]
        print(f"{name:8s}" + "".join(f"{ph[p]:11.3f}" for p in PHASES))
    if "cosine" in cases:  # the blockwise encoder against the layer-by-layer one, side by side
        cmd = [sys.executable, __file__, "--batch", str(args.batch), "--repeats"]
        cmd += [str(args.repeats), "--case", "ablation:cosine"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"bench_step: ablation:cosine failed:\n{out.stderr[-2000:]}")
        abl = json.loads(out.stdout.strip().splitlines()[-1])
        blk, lbl = abl["blockwise"], abl["layer_by_layer"]
        print(
            "\ncosine step, encoder blockwise against layer by layer (alternating, one process): "
            f"{blk['seconds']:.3f} s ({blk['paired']:.0%} of the paired peak) against "
            f"{lbl['seconds']:.3f} s ({lbl['paired']:.0%}), {lbl['seconds'] / blk['seconds']:.2f}x"
        )
        record["cosine_encoder_ablation"] = abl
    after = matmul_gflops()  # again at the end: the larger of the two is the reference
    if after > peak:
        again = ", ".join(f"{n} {record[n]['gflops'] / after:.0%}" for n in cases)
        print(f"\nmatmul peak measured again at the end: {after:.1f} GFLOP/s; against it: {again}")
    record["matmul_gflops_end"] = after
    if args.json:
        from clinvert.io import write_json

        write_json(args.json, record)


if __name__ == "__main__":
    main()
