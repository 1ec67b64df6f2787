"""Data-parallel step on this machine: two gloo ranks against one process, phase by phase.

Both sides train the same config with the same global batch (``train.shards: 2``, so one process
draws exactly the batch of the two ranks), one torch thread per process, measured in the same run:

* **one process**: ``Trainer.objective`` (pairs, encoder, InfoNCE), ``backward``, ``Adam.step``;
* **two ranks**: the same through ``DistributedDataParallel`` (each rank half the batch, the
  embeddings gathered, the gradients all-reduced in the backward), plus the all-reduce of the
  logged loss where the loss is per rank (``train.distributed_loss: rows``).

Printed: the median milliseconds of each phase and of the whole step, and the ratio of the step
times. On a CPU of few cores, communication over gloo costs about what the halved batch saves;
the benchmark says how much here. ``--smoke`` runs a few tiny steps (the test suite does).

    python benchmarks/bench_distributed.py [--config table1/ROW] [--profile quick] [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

PHASES = ("forward", "backward", "loss sync", "optimizer")


def measure(
    rank: int, world: int, port: int, config: str, profile: str, steps: int, out: dict
) -> None:
    """Median seconds per phase of ``steps`` training steps (after 10 of warm-up) on this rank."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _measure(rank, world, config, profile, steps, out)
    finally:
        torch.set_num_threads(previous)  # the caller's process (a test session) keeps its threads


def _measure(rank: int, world: int, config: str, profile: str, steps: int, out: dict) -> None:
    if world > 1:
        dist.init_process_group("gloo")
    from clinvert import distributed
    from clinvert.config import load_config
    from clinvert.train import Trainer

    cfg = load_config(config, ["train.shards=2", "train.device=cpu"], profile)
    trainer = Trainer(cfg, progress=False)
    if world > 1:
        trainer._distribute(False)
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    for i in range(steps + 10):
        t0 = time.perf_counter()
        loss = trainer.objective(trainer.step)
        t1 = time.perf_counter()
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        if world > 1 and not trainer.loss_is_global:  # as Trainer.train_step does
            distributed.sum_over_ranks(torch.stack([loss.detach(), loss.detach()]))
        t3 = time.perf_counter()
        trainer.optimizer.step()
        trainer.scheduler.step()
        trainer.step += 1
        t4 = time.perf_counter()
        if i >= 10:
            for phase, a, b in zip(PHASES, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=True):
                times[phase].append(b - a)
    if rank == 0:
        out.update({p: statistics.median(v) for p, v in times.items()})
    if world > 1:
        # both ranks leave together: a rank that tore its gloo pairs down while the other was still
        # closing them once aborted ("terminate called without an active exception") in CI
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="table1/sphere-uniform-vmf10__sphere-cosine-tau0.1")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--smoke", action="store_true", help="a few steps of a small batch")
    # one rank of the two-rank side (this script started again by itself)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = 3 if args.smoke else args.steps
    if args.rank is not None:
        out: dict = {}
        measure(args.rank, 2, args.port, args.config, args.profile, steps, out)
        if args.rank == 0:
            Path(args.result).write_text(json.dumps(out))
        from clinvert.distributed import end_process

        end_process(0)  # not the interpreter's teardown, which has aborted finished ranks
    from clinvert.distributed import AGENT_STORE_ENV, host_store

    one: dict = {}
    measure(0, 1, 0, args.config, args.profile, steps, one)
    with tempfile.TemporaryDirectory() as tmp:
        # the ranks' store is served from here, as `clinvert train --nproc` does
        result, store = Path(tmp) / "two.json", host_store(2)
        common = ["--config", args.config, "--profile", args.profile, "--steps", str(steps)]
        common += ["--port", str(store.port), "--result", str(result)]
        env = {**os.environ, AGENT_STORE_ENV: "True"}
        procs = [
            subprocess.Popen([sys.executable, __file__, *common, "--rank", str(r)], env=env)
            for r in range(2)
        ]
        if any(p.wait() != 0 for p in procs):
            print("bench_distributed: error: a rank failed (see above)")
            return 1
        two = json.loads(result.read_text())
    print(f"{args.config} ({args.profile}), global batch from train.batch_size, one thread each")
    print(f"{'phase':12s}{'one process ms':>16s}{'two ranks ms':>14s}")
    for phase in PHASES:
        print(f"{phase:12s}{one[phase] * 1e3:>16.2f}{two[phase] * 1e3:>14.2f}")
    total_one, total_two = sum(one.values()), sum(two.values())
    print(f"{'step':12s}{total_one * 1e3:>16.2f}{total_two * 1e3:>14.2f}")
    print(f"two ranks / one process: {total_two / total_one:.2f}x the step time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
