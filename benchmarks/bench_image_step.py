"""Image training step: where the time goes, and images per second against a plain torch loop.

Both sides train the same encoder (ResNet-18 with the ImageNet stem, ``conv`` or ``conv-wide``) on
the same batch size and image size with InfoNCE and Adam, measured alternately in one process
(the machine's drift hits both alike):

* **clinvert**: ``Trainer.train_step`` on a 3DIdent-format dataset (random pixels and latents: the
  pixels do not change the arithmetic), pairs from the nearest-neighbour loader, the fused InfoNCE;
  split into phases (load, forward, loss, backward, optimiser);
* **plain**: a plain torch loop over tensors already in memory (no loader, no pairs search):
  ``model(cat(x, x~))``, ``cross_entropy`` of the [B, B] L2 logits, ``backward``, ``Adam.step``.

Printed: median seconds per step, images per second (2B per step) and their ratio, then each phase's
share; clinvert's step with the encoder under bfloat16 autocast (``train.precision: bf16``) and the
plain loop with ``channels_last`` memory format beside it (they decide whether bf16 and
channels-last pay on this CPU). ``--smoke`` runs a few tiny steps (the test suite does, so the
script keeps working).

Run: python benchmarks/bench_image_step.py [--encoder resnet18|conv|conv-wide] [--batch 64] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PHASES = ("load", "forward", "loss", "backward", "optimizer")


def write_dataset(root: Path, n: int, size: int, seed: int) -> Path:
    """A dataset in clinvert's 3DIdent format with random pixels and uniform latents."""
    from clinvert.data.threedident.factors import FACTORS
    from clinvert.data.threedident.store import FORMAT

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "latents.npy", rng.uniform(-1, 1, (n, len(FACTORS))).astype(np.float32))
    np.save(root / "images.npy", rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    manifest = {
        "format": FORMAT,
        "backend": "preview",
        "renderer": "random pixels (benchmark)",
        "size": size,
        "samples": None,
        "mode": "box",
        "n": n,
        "seed": seed,
        "factors": list(FACTORS),
        "complete": True,
        "seconds": 0.0,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def make_config(data: Path, encoder: str, batch: int, steps: int) -> dict:
    """An image run of the paper's box / Normal / L2 kind on ``data``."""
    return {
        "latent": {
            "dim": 10,
            "space": "box",
            "box": [-1.0, 1.0],
            "conditional": {"name": "normal", "scale": 0.1},
            "marginal": {"name": "uniform"},
        },
        "model": {
            "encoder": encoder,
            "input_norm": "standardize",
            "output": "unbounded",
            "similarity": "lp",
            "p": 2,
            "tau": 1.0,
        },
        "train": {"batch_size": batch, "steps": steps, "lr": 1e-4, "device": "cpu"},
        "eval": {"every": max(1, steps), "samples": 64},
        "data": {
            "source": "threedident",
            "train_dir": str(data / "train"),
            "test_dir": str(data / "test"),
            "workers": 0,
        },
    }


class Ours:
    """clinvert's step, timed by phase (the same work as ``Trainer.train_step``)."""

    def __init__(self, cfg) -> None:
        from clinvert.train import Trainer

        self.trainer = Trainer(cfg, progress=False)
        self.times: dict[str, list[float]] = {k: [] for k in PHASES}

    def step(self) -> float:
        t, exp = self.trainer, self.trainer.exp
        marks = [time.perf_counter()]
        x, x_pos = t.source.pairs(t.step)
        marks.append(time.perf_counter())
        batch = x.shape[0]
        h = t._encode(torch.cat([x, x_pos]))  # under train.precision's autocast, as in training
        marks.append(time.perf_counter())
        loss = exp.loss(h[:batch], h[batch:])
        marks.append(time.perf_counter())
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        t.optimizer.step()
        marks.append(time.perf_counter())
        t.step += 1
        for key, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True):
            self.times[key].append(b - a)
        return marks[-1] - marks[0]


class Plain:
    """A plain torch loop over the same encoder and batch, tensors already in memory."""

    def __init__(self, cfg, channels_last: bool, batch: int, size: int) -> None:
        from clinvert.experiment import init_model

        self.model = init_model(cfg, torch.device("cpu"), 3)
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.format)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.rand(2 * batch, 3, size, size, generator=gen)
        self.x = self.x.contiguous(memory_format=self.format)
        self.batch = batch

    def step(self) -> float:
        start = time.perf_counter()
        h = self.model(self.x)
        a, b = h[: self.batch], h[self.batch :]
        logits = -(torch.cdist(a, b) ** 2)
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(self.batch))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict:
    """Alternate the loops for ``args.steps`` rounds after ``args.warmup``; return medians."""
    from clinvert.config import validate_config
    from clinvert.runtime import configure_process
    from clinvert.timing import alternate, medians

    configure_process()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_dataset(data / "train", args.images, args.size, 0)
        write_dataset(data / "test", 64, args.size, 1)
        total = args.warmup + args.steps
        raw = make_config(data, args.encoder, args.batch, total + 1)
        cfg = validate_config(raw)
        bf16 = validate_config({**raw, "train": {**raw["train"], "precision": "bf16"}})
        loops = {
            "clinvert": Ours(cfg),
            "clinvert, bf16": Ours(bf16),
            "plain": Plain(cfg, False, args.batch, args.size),
            "plain, channels_last": Plain(cfg, True, args.batch, args.size),
        }
        seconds = alternate(
            {name: loop.step for name, loop in loops.items()}, args.steps, args.warmup
        )
        ours = loops["clinvert"]  # the phases of the float32 step
        phases = medians({k: v[args.warmup :] for k, v in ours.times.items()})
    med = medians(seconds)
    return {
        "encoder": args.encoder,
        "batch": args.batch,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "seconds": med,
        "images_per_second": {k: 2 * args.batch / v for k, v in med.items()},
        "phases": phases,
    }


def report(out: dict) -> None:
    """Print the measurements side by side."""
    print(
        f"image step, {out['encoder']}, batch {out['batch']} pairs of {out['size']}x{out['size']}, "
        f"{out['threads']} threads, median of {out['steps']} alternating steps"
    )
    base = out["seconds"]["plain"]
    for name, sec in out["seconds"].items():
        ips = out["images_per_second"][name]
        print(f"  {name:22s} {sec:8.3f} s/step  {ips:8.1f} images/s  {base / sec:5.2f}x plain")
    total = sum(out["phases"].values())
    shares = ", ".join(f"{k} {v:.3f} s ({v / total:.0%})" for k, v in out["phases"].items())
    print(f"  clinvert by phase: {shares}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet18", choices=("resnet18", "conv", "conv-wide"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--images", type=int, default=5000, help="training images of the dataset")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="a few tiny steps (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.size, args.steps, args.warmup, args.images = 4, 16, 2, 1, 64
    out = measure(args)
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
