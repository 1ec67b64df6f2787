"""Existing configs give the numbers they gave before the pair-source refactor, step for step.

The reference (``tests/data/golden_runs.json``) was recorded by ``tests/golden_runs.py`` with the
code at 38c69e8: four table rows at a small size (cosine, L1 with a learnable box and self-negatives,
unbounded L2, the supervised objective) and a 3DIdent-format run with ResNet-18.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import golden_runs

REFERENCE = json.loads(golden_runs.GOLDEN.read_text())
#: Same code path, same machine class: only float reduction order may differ (thread count).
RTOL, ATOL = 1e-5, 1e-6


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_training_numbers_match_the_code_before_the_refactor(case, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(golden_runs.ROOT)
    args = golden_runs.all_cases(tmp_path)[case]
    got = golden_runs.run_case(args, tmp_path / case)
    want = REFERENCE[case]
    assert len(got["rows"]) == len(want["rows"])
    for g, w in zip(got["rows"], want["rows"], strict=True):
        assert g["step"] == w["step"]
        for key in ("loss", "r2", "mcc"):
            assert _close(g[key], w[key]), (case, g["step"], key, g[key], w[key])
    for part in ("final", "identity"):
        for key in ("r2", "mcc"):
            assert _close(got[part][key], want[part][key]), (case, part, key)


def test_reference_file_is_present() -> None:
    assert Path(golden_runs.GOLDEN).is_file() and len(REFERENCE) == 5
