"""clinvert.timing: cases alternate round by round, warm-up rounds are dropped, self-timed cases count."""

from __future__ import annotations

import pytest

from clinvert.timing import alternate, medians


def test_cases_alternate_and_warmup_rounds_are_dropped() -> None:
    calls: list[str] = []
    reported = iter([9.0, 9.0, 1.0, 3.0, 2.0])  # the first two are warm-up rounds

    def a() -> float:
        calls.append("a")
        return next(reported)

    def b() -> None:
        calls.append("b")

    seconds = alternate({"a": a, "b": b}, rounds=3, warmup=2)
    assert calls == ["a", "b"] * 5  # one of each per round, in the mapping's order
    assert seconds["a"] == [1.0, 3.0, 2.0]  # what the case measured itself
    assert len(seconds["b"]) == 3 and all(0 <= s < 1 for s in seconds["b"])  # timed whole
    assert medians(seconds)["a"] == 2.0


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        alternate({"a": lambda: None}, rounds=0)
