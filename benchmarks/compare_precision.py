"""One preset's training step in float32 and with the encoder under bfloat16 autocast, alternating.

Prints the median milliseconds of each and their ratio (the loss, the weights and the evaluation
stay float32 either way; see ``train.precision``), and writes them to a JSON file. Not part of
``make bench``.

    python benchmarks/compare_precision.py OUT.json [--preset fast/sphere-vmf1] [--steps 15] \
        [--profile NAME] [--set model.widths=[10,20,20,10] ...]
"""

from __future__ import annotations

import argparse
import functools
import json

import torch


def main(argv: list[str] | None = None) -> int:
    """Measure; returns the exit status."""
    from clinvert.config import load_config
    from clinvert.io import write_json
    from clinvert.runtime import configure_process
    from clinvert.timing import alternate, medians
    from clinvert.train import Trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file for the medians")
    parser.add_argument("--preset", default="fast/sphere-vmf1")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--profile", help="a profile of the preset (a YAML config's `profiles:`)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config field in both cases (repeatable)",
    )
    args = parser.parse_args(argv)
    configure_process()
    trainers = {}
    for precision in ("fp32", "bf16"):
        overrides = [*args.set, f"train.precision={precision}", "train.device=cpu"]
        cfg = load_config(args.preset, overrides, profile=args.profile)
        trainers[precision] = Trainer(cfg, progress=False)

    def step(trainer: Trainer) -> None:
        trainer.train_step()
        trainer.step += 1

    cases = {p: functools.partial(step, t) for p, t in trainers.items()}
    med = medians(alternate(cases, args.steps, warmup=5))
    out = {
        "preset": args.preset,
        "profile": args.profile,
        "overrides": args.set,
        "threads": torch.get_num_threads(),
        "median_ms": {p: round(1000 * m, 2) for p, m in med.items()},
        "ratio_fp32_over_bf16": round(med["fp32"] / med["bf16"], 3),
    }
    print(json.dumps(out))
    write_json(args.out, out)  # atomic, as every result file of the project
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
