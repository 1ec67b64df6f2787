"""Side-by-side timing: cases measured in alternation within one process.

A CPU's speed drifts (other processes, frequency, caches); measuring case A for a minute and then case
B for a minute folds that drift into their ratio. Alternating them round by round exposes both to the
same conditions, and the median of each resists the odd slow round. ``benchmarks/`` uses this for
every ratio it prints.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def alternate(
    cases: Mapping[K, Callable[[], float | None]], rounds: int, warmup: int = 2
) -> dict[K, list[float]]:
    """Run every case once per round, in the mapping's order, for ``warmup + rounds`` rounds.

    A case either returns the seconds it measured itself (to time only a part of what it does) or
    ``None``, and is then timed whole. Returns each case's seconds over the ``rounds`` timed rounds
    (the first ``warmup`` rounds are discarded).
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds} and {warmup}")
    seconds: dict[K, list[float]] = {name: [] for name in cases}
    for round_ in range(warmup + rounds):
        for name, case in cases.items():
            start = time.perf_counter()
            measured = case()
            took = time.perf_counter() - start if measured is None else measured
            if round_ >= warmup:
                seconds[name].append(took)
    return seconds


def medians(seconds: Mapping[K, list[float]]) -> dict[K, float]:
    """The median of each case's samples (as returned by :func:`alternate`)."""
    return {name: statistics.median(values) for name, values in seconds.items()}
