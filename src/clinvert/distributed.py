"""Data-parallel training on torch.distributed: the process group, gathered negatives, the launcher.

A distributed run is N copies of ``clinvert train`` that find each other through the usual
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``),
set by ``clinvert train --nproc N`` on one machine (:func:`launch`) or by ``torchrun`` on a cluster.
``gloo`` on CPU, ``nccl`` on CUDA.

What each rank does (see :class:`clinvert.train.Trainer`):

* draws its own shards of every global batch (:class:`clinvert.data.sources.Shards`): batch k is
  ``train.shards`` shards, shard j drawn from a stream of (seed, k, j), and rank r of N draws the
  shards r S/N .. (r+1) S/N - 1, so one process with ``train.shards: N`` draws exactly the batch
  that N processes see together;
* gathers the positives of all ranks (:func:`gather`, gradients flow back to their owners) and
  computes the InfoNCE rows of its own anchors against every column, so the loss is the
  single-process loss of the concatenated batch, each rank holding its rows' share of the mean;
* averages gradients with ``DistributedDataParallel``: the update equals the single-process one.

Only rank 0 evaluates and writes the run directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

from clinvert.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Environment variables a launcher sets for every rank.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Test hook: ``"RANK:STEP"`` makes that rank exit abruptly (code 9) when it reaches STEP.
FAULT_ENV = "CLINVERT_FAULT_INJECT"
#: Set by :func:`launch` in its ranks: the launcher reports a lost peer, the rank stays quiet.
LAUNCHER_ENV = "CLINVERT_LAUNCHER"
#: torch.distributed's switch (torchrun sets it) for ranks that join a store their launcher hosts.
AGENT_STORE_ENV = "TORCHELASTIC_USE_AGENT_STORE"
#: Exit code of a rank that stopped because another rank went away.
PEER_LOST = 3
#: How long a rank waits for a peer in a collective before giving up (a dead peer is usually seen
#: at once, as a closed connection; the timeout covers a peer that hangs).
TIMEOUT = timedelta(minutes=10)

#: Whether this process has joined a process group (see :func:`joined`).
_JOINED = False


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, number of processes, rank on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates and writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1


def world() -> World:
    """The current process group (a single process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return World()


def launched() -> bool:
    """True in a process started by a launcher (``--nproc`` or ``torchrun``) with WORLD_SIZE > 1."""
    return _env_int("WORLD_SIZE", 1) > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.lstrip("-").isdigit():
        raise ConfigError(f"{name}: must be an integer (set by the launcher), got {value!r}")
    return int(value)


def init_from_env(nproc: int | None = None) -> World:
    """Join the process group the environment describes (``env://``): gloo on CPU, nccl on CUDA.

    Args:
        nproc: the number of processes the command asked for (``--nproc``); checked against
            ``WORLD_SIZE`` when given.
    """
    missing = [v for v in ENV_VARS if v not in os.environ and v != "LOCAL_RANK"]
    if missing:
        raise ConfigError(
            f"{missing[0]}: a distributed rank needs {', '.join(ENV_VARS[:2] + ENV_VARS[3:])} "
            "in its environment (set by --nproc or torchrun)"
        )
    size = _env_int("WORLD_SIZE", 1)
    if nproc is not None and nproc > 1 and nproc != size:
        raise ConfigError(f"--nproc: {nproc} does not match WORLD_SIZE={size}")
    if dist.is_initialized():
        return world()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0) % torch.cuda.device_count())
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", timeout=TIMEOUT)
    global _JOINED
    _JOINED = True
    return world()


def joined() -> bool:
    """Whether this process joined a process group (it stays true after :func:`shutdown`): such a
    process ends with :func:`end_process`, not with the interpreter's teardown."""
    return _JOINED


def end_process(code: int) -> NoReturn:
    """End this rank's process now with exit status ``code``, skipping the interpreter's teardown.

    Call it only once the rank's work is written and closed (what :func:`clinvert.cli.run` does).
    Why: after :func:`shutdown` and after the rank's ``atexit`` handlers had run, the
    interpreter's teardown aborted finished ranks (``terminate called without an active
    exception``: a C++ thread destroyed unjoined, by all signs the process group's) in 2 of 87
    two-process runs on 2 cores, and the launcher then reported a finished run as failed.
    Standard streams are flushed first.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def shutdown(together: bool = False) -> None:
    """Leave the process group (no-op without one).

    ``together``: first meet every other rank at a barrier, so that no rank tears the group down
    while a peer still talks to it (gloo has aborted a rank with SIGABRT at such a teardown). Only
    for ranks that all finished; a rank leaving after an error must not wait for the others.
    """
    if dist.is_available() and dist.is_initialized():
        if together:
            # a peer already gone (gloo's errors are RuntimeErrors): leave anyway
            with contextlib.suppress(RuntimeError):
                dist.barrier()
        dist.destroy_process_group()


def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` [b, ...] of every rank in rank order: [N b, ...].

    Differentiable: the gradient with respect to the gathered tensor flows back to each rank's own
    ``x`` (summed over the ranks that used it), as ``torch.distributed.nn.all_gather`` defines it.
    Without a process group, ``x`` itself.
    """
    if not world().distributed:
        return x
    return _Gather.apply(x)


def _all_gather_cat(x: Tensor) -> Tensor:
    """Every rank's ``x`` [b, ...] concatenated in rank order: [N b, ...] (no autograd)."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


class _Gather(torch.autograd.Function):
    """all_gather forward; backward: each rank's slice of the sum over ranks of the gradient
    (``reduce_scatter`` on NCCL; gloo has none, so an all-reduce and a slice there)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        size, rank = dist.get_world_size(), dist.get_rank()
        grad = grad.contiguous()
        rows = grad.shape[0] // size
        if dist.get_backend() == "nccl":
            out = grad.new_empty((rows, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad)
            return out
        total = grad.clone()
        dist.all_reduce(total)
        return total[rank * rows : (rank + 1) * rows]


def gather_replicated(x: Tensor) -> Tensor:
    """Concatenate ``x`` [b, ...] of every rank in rank order: [N b, ...], for a computation that
    every rank repeats identically on the result (the replicated InfoNCE).

    Backward: this rank's slice of the gradient, times N, with no communication: every rank
    holds the whole gradient already, and DistributedDataParallel's mean over the ranks of the
    parameters' gradients then sums the ranks' contributions. Without a process group, ``x``.
    """
    if not world().distributed:
        return x
    return _GatherReplicated.apply(x)


class _GatherReplicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rows = x.shape[0]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        size, rank, rows = dist.get_world_size(), dist.get_rank(), ctx.rows
        return grad[rank * rows : (rank + 1) * rows] * size


def sum_over_ranks(x: Tensor) -> Tensor:
    """Sum of ``x`` over the ranks (a new tensor; ``x`` itself without a process group)."""
    if not world().distributed:
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another rank went away (or hung)."""
    dist_error = getattr(dist, "DistError", ())
    text = str(exc)
    return isinstance(exc, dist_error) or (
        isinstance(exc, RuntimeError)
        and any(k in text for k in ("gloo", "NCCL", "Connection", "timed out", "Timeout"))
    )


def rank_exit(exc: BaseException) -> int:
    """A rank's exit code for a lost peer: :data:`PEER_LOST`, after one line (only without
    :func:`launch`, which reports the rank that failed first itself)."""
    if not os.environ.get(LAUNCHER_ENV):
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        print(
            f"clinvert: error: rank {world().rank}: another rank went away ({first})",
            file=sys.stderr,
        )
    return PEER_LOST


def maybe_fail(step: int) -> None:
    """The fault-injection hook of the tests: exit abruptly at ``FAULT_ENV``'s rank and step."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank, _, at = spec.partition(":")
    if int(rank) == world().rank and int(at) == step:
        sys.stderr.flush()
        os._exit(9)


# ----- the launcher ------------------------------------------------------------------------------
def host_store(nproc: int) -> dist.TCPStore:
    """The rendezvous store of ``nproc`` ranks on this machine, served by this process on a free
    port (``.port``); ranks started with ``MASTER_PORT`` set to it and :data:`AGENT_STORE_ENV`
    connect to it as clients. Keep the object alive while they run."""
    return dist.TCPStore(
        "127.0.0.1", 0, nproc, is_master=True, timeout=TIMEOUT, wait_for_workers=False
    )


def launch(argv: Sequence[str], nproc: int, out: str | Path | None) -> int:
    """Run ``python -m clinvert ARGV`` as ``nproc`` ranks on this machine and wait for them.

    Each rank gets the launcher's environment plus ``RANK``/``WORLD_SIZE``/... and, unless
    ``OMP_NUM_THREADS`` is set, an equal share of the cores. Rank 0 shows the progress bar. When a
    rank fails, the others are stopped and one line says which rank, with what exit code, and how
    to continue from the last checkpoint. Returns the exit status (0 when every rank finished).
    """
    from clinvert.runtime import available_cores

    env = dict(os.environ)
    # The rendezvous store lives here, in the launcher (which only waits), as torchrun's agent
    # hosts it: served from rank 0 its daemon thread took CPU from that rank's training on every
    # step (measured on 2 cores: 17.0 against 12.8 ms for the same compute).
    store = host_store(nproc)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port), WORLD_SIZE=str(nproc))
    env[AGENT_STORE_ENV] = "True"
    env[LAUNCHER_ENV] = "1"
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, available_cores() // nproc))
    procs: list[subprocess.Popen] = []
    for rank in range(nproc):
        rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        args = list(argv) if rank == 0 else [*argv, "--quiet"]
        procs.append(subprocess.Popen([sys.executable, "-m", "clinvert", *args], env=rank_env))
    try:
        failed = _wait(procs)
    except KeyboardInterrupt:
        _stop(procs)
        print("clinvert: interrupted; every rank stopped", file=sys.stderr)
        return 130
    if failed is None:
        return 0
    rank, code = failed
    if code == 2:  # a one-line config error, already printed by the rank
        return 2
    if code == PEER_LOST:  # every failed rank lost a peer: one went away without an exit code
        what = "lost contact with the others"
    elif code < 0:
        what = f"was killed by signal {-code}"
    else:
        what = f"exited with code {code}"
    where = f"; continue with: clinvert train --resume {out} --nproc {nproc}" if out else ""
    print(
        f"clinvert: error: rank {rank} of {nproc} {what}; every rank stopped, the last checkpoint "
        f"is kept{where}",
        file=sys.stderr,
    )
    return 1


def blame(failed: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (rank, exit code) to report among ranks seen failed at the same poll.

    Blame the rank that failed first, not those that stopped because it went away: a rank's own
    exit code or a fatal signal comes before a SIGABRT (gloo aborts a rank whose peer vanished,
    before Python can say so), which comes before :data:`PEER_LOST`; ties go to the lowest rank.
    """

    def secondary(code: int) -> int:
        if code == PEER_LOST:
            return 2
        return 1 if code == -signal.SIGABRT else 0

    return min(failed, key=lambda rc: (secondary(rc[1]), rc[0]))


def _wait(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
    """Wait for every rank; at the first failure stop the others and return (rank, exit code)."""
    while True:
        codes = [p.poll() for p in procs]
        bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            _stop(procs)
            return blame(bad)
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
