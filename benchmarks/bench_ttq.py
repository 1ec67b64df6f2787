"""Time to quality: wall time and steps until a preset reaches its target score.

Trains each preset of ``configs/synthetic/fast/`` and evaluates on a fixed set of fresh samples every
``--eval-every`` steps (evaluation time is measured separately and not counted as training time).
Stops at the target (``claims`` of the preset: ``at_least``), at the end of the preset's own schedule
(``train.steps``: a cosine decay must finish inside the time it is given) or when the budget is spent, and
prints, per preset: reached or not, training seconds and steps to the target (or the best score
within the budget), and writes the curve of the score over training time to a PNG.

    python benchmarks/bench_ttq.py [--presets sphere-vmf10,box-laplace-l1] [--budget-minutes 15]
                                   [--set train.steps=30000 ...] [--out benchmarks/results]

``--set`` overrides preset fields (as ``clinvert train --set`` does), e.g. a longer schedule for the
hard row: ``--presets sphere-vmf1 --set train.steps=30000 --budget-minutes 60``; ``--profile``
selects a profile of the presets, e.g. the hard row's 15-minute recipe: ``--presets sphere-vmf1
--profile 15min``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from clinvert.config import ConfigError, RunConfig, load_config
from clinvert.io import write_bytes, write_json

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "synthetic" / "fast"


def run_preset(name: str, cfg: RunConfig, budget_s: float, eval_every: int) -> dict:
    """Train preset ``name`` (its validated config ``cfg``) until its claim holds or ``budget_s`` of
    training time is spent."""
    from clinvert.runtime import configure_process
    from clinvert.train import Trainer

    configure_process()  # as `clinvert train` does
    (claim,) = cfg.claims
    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="ttq-"), progress=False)
    curve, train_s, eval_s, best = [], 0.0, 0.0, float("-inf")
    reached = None
    while trainer.step < cfg.train.steps and train_s < budget_s:
        start = time.perf_counter()
        for _ in range(min(eval_every, cfg.train.steps - trainer.step)):
            trainer.train_step()
            trainer.step += 1
        train_s += time.perf_counter() - start
        start = time.perf_counter()
        score = trainer.evaluate("eval")[claim.metric]
        eval_s += time.perf_counter() - start
        best = max(best, score)
        point = {"step": trainer.step, "train_seconds": round(train_s, 2), "score": score}
        shown = ""
        if trainer.ema is not None:  # the score is the average's: the raw weights' beside it
            raw = trainer.source.encode(trainer.exp.model, "eval")
            point["raw_score"] = trainer.source.score(raw, "eval")[claim.metric]
            shown = f"  (raw weights {point['raw_score']:.4f})"
        curve.append(point)
        print(
            f"  {name}: step {trainer.step:6d}  {train_s:7.1f} s  {claim.metric} {score:.4f}{shown}",
            flush=True,
        )
        if claim.holds(score):
            reached = {"step": trainer.step, "train_seconds": train_s, "score": score}
            break
    return {
        "preset": name,
        "target": claim.describe(),
        "metric": claim.metric,
        "reached": reached,
        "best": best,
        "steps": trainer.step,
        "train_seconds": train_s,
        "eval_seconds": eval_s,
        "batch_size": cfg.train.batch_size,
        "schedule_steps": cfg.train.steps,
        "precision": cfg.train.precision,
        "threads": torch.get_num_threads(),
        "config": cfg.to_dict(),  # the resolved recipe: profile and overrides applied
        "curve": curve,
    }


def plot(results: list[dict]) -> bytes:
    """Score over training time for every preset, with its target."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        xs = [c["train_seconds"] / 60 for c in r["curve"]]
        ax.plot(xs, [c["score"] for c in r["curve"]], label=f"{r['preset']} ({r['target']})")
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("score on fresh samples (R² or MCC)")
    ax.set_ylim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (0)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", help="comma-separated preset names (default: all)")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=15.0,
        help="cap per preset (default 15, the target); a preset also stops at its own train.steps",
    )
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument(
        "--profile", help="a profile the presets define (e.g. sphere-vmf1's `15min`)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset field"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    available = {p.stem: p for p in sorted(PRESETS.glob("*.yaml"))}
    names = [n.strip() for n in args.presets.split(",")] if args.presets else list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        sys.exit(f"bench_ttq: error: --presets: unknown {unknown[0]!r}, allowed: {list(available)}")
    if args.budget_minutes <= 0 or args.eval_every < 1:
        sys.exit("bench_ttq: error: --budget-minutes must be > 0 and --eval-every >= 1")
    print(f"time to quality, {torch.get_num_threads()} threads, budget {args.budget_minutes} min")
    try:  # every preset and override validated before any training starts
        configs = {n: load_config(available[n], args.set, args.profile) for n in names}
    except ConfigError as err:  # names the bad field and what is allowed
        sys.exit(f"bench_ttq: error: {err}")
    results = [
        {
            **run_preset(n, cfg, 60 * args.budget_minutes, args.eval_every),
            "profile": args.profile,
            "overrides": args.set,
        }
        for n, cfg in configs.items()
    ]
    print(f"\n{'preset':28s}{'target':>12s}{'reached':>9s}{'minutes':>9s}{'steps':>8s}{'best':>8s}")
    for r in results:
        hit = r["reached"]
        minutes = (hit["train_seconds"] if hit else r["train_seconds"]) / 60
        steps = hit["step"] if hit else r["steps"]
        print(
            f"{r['preset']:28s}{r['target']:>12s}{'yes' if hit else 'NO':>9s}{minutes:9.1f}"
            f"{steps:8d}{r['best']:8.4f}"
        )
    out = Path(args.out)
    write_json(out / "ttq.json", results)
    write_bytes(out / "ttq_curves.png", plot(results))
    print(f"curves: {out / 'ttq_curves.png'}; data: {out / 'ttq.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
