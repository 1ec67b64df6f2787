"""Runs that survive crashes, bad input and bad numbers (issue 6): SIGKILL + resume, non-finite
guards, corrupted checkpoints, and a config fuzz test."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clinvert.cli import main
from clinvert.config import validate_config
from clinvert.train import Trainer

TINY = {
    "latent": {
        "dim": 4,
        "space": "box",
        "marginal": {"name": "uniform"},
        "conditional": {"name": "laplace", "scale": 0.1},
    },
    "mixing": {"cond_trials": 20},
    "model": {"output": "box", "similarity": "lp", "p": 1.0, "widths": [4, 4]},
    "train": {"batch_size": 64, "steps": 30, "lr": 1e-3, "device": "cpu", "checkpoint_every": 10},
    "eval": {"every": 10, "samples": 256},
}


def with_train(**train) -> dict:
    return {**TINY, "train": {**TINY["train"], **train}}


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str, env: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "clinvert.cli", *args]


def metrics_without_wall(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]


def test_sigkill_mid_run_then_resume_ends_exactly_like_an_uninterrupted_run(tmp_path: Path) -> None:
    # checkpoint_every is not a multiple of eval.every: the resumed run must also restore the running
    # loss average of the interrupted evaluation window.
    cfg = write_config(
        tmp_path / "c.yaml", with_train(steps=3000, batch_size=128, checkpoint_every=70)
    )
    data = yaml.safe_load(cfg.read_text())
    data["eval"]["every"] = 100
    write_config(cfg, data)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(cli("train", str(cfg), "--out", str(ref), "--quiet"), env=env, check=True)

    proc = subprocess.Popen(
        cli("train", str(cfg), "--out", str(killed), "--quiet"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    metrics = killed / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        started = (killed / "checkpoint.pt").exists() and metrics.exists()
        if started and len(metrics.read_text().splitlines()) >= 4:  # past step 300: mid-run
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists(), "the run finished before it could be killed"
    state = torch.load(killed / "checkpoint.pt", weights_only=False)
    assert 0 < state["step"] < 3000

    out = subprocess.run(
        cli("train", "--resume", str(killed), "--quiet"), env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    a = json.loads((ref / "result.json").read_text())
    b = json.loads((killed / "result.json").read_text())
    assert b["status"] == "finished" and b["steps"] == 3000
    assert b["final"] == a["final"]
    assert metrics_without_wall(killed) == metrics_without_wall(ref)
    assert not list(killed.glob(".*.tmp")), "a temporary file was left behind"


def _nan_at(step: int, original):
    def loss(self):
        value = original(self)
        return value * float("nan") if self.step + 1 == step else value

    return loss


def test_non_finite_loss_stops_the_run_keeps_the_last_checkpoint_and_marks_it_failed(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(Trainer, "contrastive_loss", _nan_at(15, Trainer.contrastive_loss))
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", TINY)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(["train", str(cfg), "--out", str(run), "--quiet"]) == 1
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "failed" and "final" not in result
    assert "non-finite loss at step 15" in result["error"]
    assert "step 10 kept" in result["error"]
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 10
    steps = [r["step"] for r in metrics_without_wall(run)]
    assert steps == [0, 10]  # no row computed from the poisoned parameters


def test_non_finite_gradient_is_caught_even_when_the_loss_is_finite(
    tmp_path: Path, monkeypatch
) -> None:
    original = Trainer.train_step

    def poisoned(self):
        if self.step + 1 == 7:
            param = next(self.exp.model.parameters())
            handle = param.register_hook(lambda g: g * float("inf"))
            try:
                return original(self)
            finally:
                handle.remove()
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    cfg = validate_config(TINY)
    result = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert result["status"] == "failed"
    assert "non-finite gradient at step 7" in result["error"]
    assert "no checkpoint had been written" in result["error"]


def test_failed_and_missing_runs_are_reported_not_averaged(tmp_path: Path) -> None:
    from clinvert.reproduce import aggregate, build_specs, render_markdown

    root = tmp_path / "configs"
    (root / "table2").mkdir(parents=True)
    write_config(
        root / "table2" / "row.yaml", {**TINY, "claims": [{"metric": "mcc", "at_least": 0.95}]}
    )
    specs = build_specs("table2", tmp_path / "out", quick=False, seeds=3, root=root)
    ok = {
        "status": "finished",
        "final": {"mcc": 0.9, "r2": 0.8},
        "identity": {"mcc": 0.4, "r2": 0.6},
    }
    bad = {"status": "failed", "error": "non-finite loss at step 5", "identity": ok["identity"]}
    results = {s: (bad if s.seed == 1 and s.objective == "contrastive" else ok) for s in specs}
    del results[next(s for s in specs if s.seed == 2 and s.objective == "contrastive")]
    (row,) = aggregate("table2", specs, results)
    assert row["seeds"] == [0] and row["mean"] == pytest.approx(0.9)
    assert row["failed"] == ["contrastive seed1"] and row["missing"] == ["contrastive seed2"]
    text = render_markdown("table2", [row], "cmd", quick=False)
    assert "FAILED runs: contrastive seed1" in text and "missing runs: contrastive seed2" in text
    assert row["claims"] == [
        {
            "claim": "MCC ≥ 0.95",
            "metric": "mcc",
            "value": pytest.approx(0.9),
            "holds": False,
            "at_least": 0.95,
            "at_most": None,
        }
    ]
    assert row["values"] == [pytest.approx(0.9)]  # the finished seeds' scores, for the dots
    assert "MCC ≥ 0.95 ✗ short" in text and "MCC ≥ 0.95, measured 0.900" in text


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"not a checkpoint"),
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        lambda p: torch.save({"step": 3}, p),
    ],
    ids=["garbage", "truncated", "wrong-content"],
)
def test_corrupted_checkpoint_gives_a_clear_one_line_error(tmp_path: Path, damage) -> None:
    cfg = write_config(tmp_path / "c.yaml", with_train(steps=10))
    run = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", str(cfg), "--out", str(run), "--quiet"]) == 0
    damage(run / "checkpoint.pt")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", "--resume", str(run), "--steps", "20", "--quiet"]) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "checkpoint" in lines[0] and "Traceback" not in lines[0]
    assert json.loads((run / "result.json").read_text())["steps"] == 10  # untouched


def test_resume_refuses_a_checkpoint_whose_metrics_were_truncated(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", with_train(steps=20))
    run = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", str(cfg), "--out", str(run), "--quiet"]) == 0
    (run / "metrics.jsonl").write_text("")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", "--resume", str(run), "--steps", "30", "--quiet"]) == 2
    assert "metrics.jsonl" in err.getvalue()


# ----- config fuzz -------------------------------------------------------------------------------
def _leaf_paths(node: dict, prefix: tuple = ()) -> list[tuple]:
    paths = []
    for key, value in node.items():
        if isinstance(value, dict):
            paths += _leaf_paths(value, prefix + (key,))
        paths.append(prefix + (key,))
    return paths


FUZZ_BASE = {
    **TINY,
    "train": {**TINY["train"], "steps": 3, "batch_size": 16},
    "eval": {"every": 2, "samples": 64},
}
# Resolved leaves of the base plus a few that only exist for other choices, and unknown keys.
PATHS = sorted(
    set(_leaf_paths(validate_config(FUZZ_BASE).to_dict()))
    | {
        ("latent", "conditional", "kappa"),
        ("latent", "conditional", "beta"),
        ("latent", "marginal", "scale"),
        ("model", "colour"),
        ("bogus",),
    }
)
VALUES = [
    -1, 0, 1, 2, 3, 0.5, 1e-3, -0.5, 2.5, True, None, "abc", "", [], [2], [1, 2], [0.5, -1], {},
    float("nan"), float("inf"), "sphere", "box", "unbounded", "lp", "cosine", "vmf", "normal",
    "laplace", "gennorm", "uniform", "spearman", "cosine_schedule", "cpu", "cuda", "adamw",
    "supervised", {"name": "normal", "scale": 0.1}, {"name": "vmf", "kappa": 2.0},
    {"name": "gennorm", "beta": 3.0, "scale": 0.2}, {"name": "uniform"}, {"name": "bogus"},
]  # fmt: skip


def _mutate(base: dict, path: tuple, value) -> dict:
    data = json.loads(json.dumps(base))
    node = data
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if value == "<delete>":
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return data


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(st.sampled_from(PATHS), st.sampled_from([*VALUES, "<delete>"])),
        min_size=0,
        max_size=3,
    )
)
def test_fuzzed_configs_run_or_fail_validation_cleanly(mutations) -> None:
    data = FUZZ_BASE
    for path, value in mutations:
        data = _mutate(data, path, value)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.yaml"
        cfg.write_text(yaml.safe_dump(data))
        run = Path(tmp) / "run"
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(["train", str(cfg), "--out", str(run), "--quiet"])
        message = err.getvalue()
        if code == 2:
            lines = message.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("clinvert: error: "), message
            assert not run.exists(), "validation failed after the run directory was written"
        else:
            result = json.loads((run / "result.json").read_text())
            assert (code, result["status"]) in {(0, "finished"), (1, "failed")}, result


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)
def test_keep_freed_memory_applies_on_glibc_and_is_idempotent() -> None:
    """The allocator setting the CPU trainer applies: accepted by glibc, harmless when repeated."""
    from clinvert.runtime import keep_freed_memory

    assert keep_freed_memory() is True
    assert keep_freed_memory() is True
    torch.ones(8 * 2**20).sum()  # allocation and free still work
