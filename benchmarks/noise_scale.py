"""Gradient noise scale of a checkpoint: the batch beyond which a bigger one stops paying.

The simple noise scale B_noise = tr(Σ) / |G|² (McCandlish et al., 2018, "An empirical model of
large-batch training"), with G the true gradient and Σ the per-pair gradient covariance, estimated
without bias from the mean squared gradient norm at two batch sizes, since E|G_B|² = |G|² + tr(Σ)/B:

    |G|²  = (B_big |G_big|² - B_small |G_small|²) / (B_big - B_small)
    tr(Σ) = (|G_small|² - |G_big|²) / (1/B_small - 1/B_big)

The gradients are those of the run's own loss on its own training stream (the batches of steps 0, 1,
...), with the model's weights from the checkpoint. Well below B_noise, doubling the batch nearly
halves the steps a given progress needs (the pairs needed stay the same, so the cost per pair
decides); well above it, a bigger batch only costs. Used to size the batch of the hard row's 15-minute
recipe (benchmarks/README.md). Not part of ``make bench``.

    python benchmarks/noise_scale.py RUN/checkpoint.pt [--small 256 --big 4096] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def squared_norms(checkpoint: dict, batch: int, batches: int) -> torch.Tensor:
    """|G_B|² of the checkpoint's loss on each of the first ``batches`` training batches of size
    ``batch`` (float64, [batches])."""
    from clinvert.config import deep_merge, validate_config
    from clinvert.train import Trainer

    cfg = validate_config(
        deep_merge(checkpoint["config"], {"train": {"batch_size": batch, "device": "cpu"}})
    )
    trainer = Trainer(cfg, progress=False)
    trainer.exp.model.load_state_dict(checkpoint["model"])
    params = [p for p in trainer.exp.model.parameters() if p.requires_grad]
    norms = []
    for step in range(batches):  # the source serves its batches in order
        trainer.step = step
        grads = torch.autograd.grad(trainer.contrastive_loss(), params)
        norms.append(sum(float(g.double().pow(2).sum()) for g in grads))
    return torch.tensor(norms, dtype=torch.float64)


def noise_scale(small: torch.Tensor, big: torch.Tensor, b_small: int, b_big: int) -> dict:
    """The unbiased |G|², tr(Σ) and B_noise from the squared norms at two batch sizes."""
    n_small, n_big = float(small.mean()), float(big.mean())
    g2 = (b_big * n_big - b_small * n_small) / (b_big - b_small)
    trace = (n_small - n_big) / (1 / b_small - 1 / b_big)
    return {
        "sq_norm_small": n_small,
        "sq_norm_big": n_big,
        "true_gradient_sq_norm": g2,
        "trace_covariance": trace,
        "b_noise": trace / g2 if g2 > 0 else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    """Estimate and print; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a run's checkpoint.pt")
    parser.add_argument("--small", type=int, default=256, help="the small batch size")
    parser.add_argument("--big", type=int, default=4096, help="the big batch size")
    parser.add_argument("--small-batches", type=int, default=64)
    parser.add_argument("--big-batches", type=int, default=16)
    parser.add_argument("--json", help="write the estimate here")
    args = parser.parse_args(argv)
    if not 0 < args.small < args.big:
        raise SystemExit(f"--small/--big: need 0 < small < big, got {args.small} and {args.big}")
    from clinvert.errors import ConfigError
    from clinvert.rundir import load_checkpoint

    path = Path(args.checkpoint)
    try:
        checkpoint = load_checkpoint(path)
    except ConfigError as err:
        raise SystemExit(str(err)) from None
    small = squared_norms(checkpoint, args.small, args.small_batches)
    big = squared_norms(checkpoint, args.big, args.big_batches)
    out = {
        "checkpoint": str(path),
        "step": int(checkpoint["step"]),
        "small": args.small,
        "big": args.big,
        "small_batches": args.small_batches,
        "big_batches": args.big_batches,
        **noise_scale(small, big, args.small, args.big),
    }
    print(
        f"step {out['step']}: |G|^2 {out['true_gradient_sq_norm']:.3e}, "
        f"tr(Sigma) {out['trace_covariance']:.3e}, B_noise {out['b_noise']:.0f} pairs"
    )
    if args.json:
        from clinvert.io import write_json

        write_json(args.json, out)
    else:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
