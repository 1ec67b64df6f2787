"""Process-wide runtime facts and settings: the cores a process may use, and the C runtime's
malloc thresholds that a CPU training loop benefits from.

A training step on the CPU allocates and frees the same large tensors every step (at batch 6144
each activation of the paper's encoder is 24.6 MB). glibc's malloc by default serves blocks above
its (dynamic) mmap threshold with fresh ``mmap`` pages and returns freed memory at the top of the
heap to the kernel once it exceeds the trim threshold, so every step faults tens of MiB of new pages
back in: measured 45-75 MiB and 20-50 ms of system time per cosine step at batch 6144 on this
project's 2-core machine, against ~0 with the thresholds raised (step 0.347 -> 0.325 s, mean of
three alternating processes, 2 threads).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc's ``mallopt`` parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks below this come from the heap (reused between steps) rather than fresh mmap pages.
MMAP_THRESHOLD = 256 * 2**20
#: Free memory at the top of the heap is returned to the kernel only beyond this.
TRIM_THRESHOLD = 1024 * 2**20

_applied = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds so that freed tensors are reused, not re-faulted.

    Process-wide and idempotent. The cost: up to :data:`TRIM_THRESHOLD` of freed memory stays
    mapped to the process (a training run's peak is reached every step anyway). Returns True when
    applied (Linux with glibc), False where the C library has no ``mallopt`` (macOS, musl, Windows).
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _applied = ok
    return ok


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by ``OMP_NUM_THREADS`` when that is set.

    ``OMP_NUM_THREADS=1 clinvert reproduce ...`` thus keeps a sweep to one core (one worker with one
    thread) next to another job, instead of splitting the whole machine between its workers.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    cap = os.environ.get("OMP_NUM_THREADS", "").strip()
    if cap.isdigit() and int(cap) > 0:
        cores = min(cores, int(cap))
    return max(1, cores)


def configure_process() -> None:
    """Process-wide CPU settings for training, applied once by the command line (and by sweep
    workers), never by constructing a trainer:

    * flush denormal floats to zero (x86 FTZ/DAZ). At a small tau the softmax weights of far
      negatives underflow into the denormal range, where every CPU multiply costs ~100x: an L3
      (tau = 1.25e-4) step at B = 512 took 1.0 s with denormals and 0.15 s without. Values below
      1.2e-38 are far under float32's rounding of the loss. No effect on GPUs.
    * :func:`keep_freed_memory`.
    """
    import torch

    torch.set_flush_denormal(True)
    keep_freed_memory()
