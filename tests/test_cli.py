"""The ``clinvert`` command: help, clean errors, and end-to-end runs with the run directory contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from clinvert.cli import main

TINY = {
    "latent": {
        "dim": 4,
        "space": "box",
        "marginal": {"name": "uniform"},
        "conditional": {"name": "laplace", "scale": 0.1},
    },
    "model": {"output": "box", "similarity": "lp", "p": 1.0, "widths": [4, 4]},
    "train": {"batch_size": 64, "steps": 20, "lr": 1e-3, "device": "cpu", "checkpoint_every": 10},
    "eval": {"every": 10, "samples": 256},
}


def write_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clinvert.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args", [["--help"], ["train", "--help"], ["demo", "--help"], ["config", "--help"]]
)
def test_help_is_useful(args) -> None:
    out = run_cli(*args)
    assert out.returncode == 0
    assert "usage: clinvert" in out.stdout
    if args == ["train", "--help"]:
        assert "--resume" in out.stdout and "--set" in out.stdout and "examples:" in out.stdout


def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, {"latent": {"space": "box", "conditional": {"name": "vmf", "kappa": 1}}}
    )
    out = run_cli("train", str(cfg), "--out", str(tmp_path / "run"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "latent.conditional.name" in lines[0] and "Traceback" not in out.stderr
    )
    assert not (tmp_path / "run").exists()


def test_bad_override_is_one_line(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, TINY)
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--set", "model.tau=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "clinvert: error: model.tau: input should be greater than 0, got -1"
    assert not (tmp_path / "r").exists()


def test_train_writes_the_run_directory_and_is_deterministic(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, TINY)
    for name in ("a", "b"):
        assert main(["train", str(cfg), "--out", str(tmp_path / name), "--quiet"]) == 0
    run = tmp_path / "a"
    for name in ("config.yaml", "metrics.jsonl", "result.json", "checkpoint.pt"):
        assert (run / name).is_file(), name
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "finished" and result["steps"] == 20 and result["seed"] == 0
    assert set(result["final"]) >= {"r2", "mcc"} and set(result["identity"]) >= {"r2", "mcc"}
    assert result["wall_seconds"] > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20]
    other = json.loads((tmp_path / "b" / "result.json").read_text())
    assert other["final"] == result["final"]
    assert (tmp_path / "b" / "metrics.jsonl").read_text().count("r2") == 3


def test_finished_run_is_not_overwritten_without_force(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, TINY)
    out = str(tmp_path / "run")
    assert main(["train", str(cfg), "--out", out, "--quiet"]) == 0
    assert main(["train", str(cfg), "--out", out, "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["train", str(cfg), "--out", out, "--quiet", "--force"]) == 0


def test_resume_continues_to_the_same_result(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, TINY)
    assert main(["train", str(cfg), "--out", str(tmp_path / "full"), "--quiet"]) == 0
    short = write_config(tmp_path, {**TINY, "train": {**TINY["train"], "steps": 10}})
    assert main(["train", str(short), "--out", str(tmp_path / "part"), "--quiet"]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--steps", "20", "--quiet"]) == 0
    full = json.loads((tmp_path / "full" / "result.json").read_text())
    part = json.loads((tmp_path / "part" / "result.json").read_text())
    assert part["steps"] == 20 and part["final"] == full["final"]


def test_stop_at_pauses_and_resume_ends_exactly_like_an_uninterrupted_run(
    tmp_path: Path, capsys
) -> None:
    # a cosine schedule: pausing must not shorten it (--steps on resume would)
    data = {**TINY, "train": {**TINY["train"], "schedule": "cosine", "warmup_steps": 2}}
    cfg = write_config(tmp_path, data)
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert main(["train", str(cfg), "--out", full, "--quiet"]) == 0
    assert main(["train", str(cfg), "--out", part, "--quiet", "--stop-at", "10"]) == 0
    printed = capsys.readouterr().out
    assert "paused at step 10 of 20" in printed and f"clinvert train --resume {part}" in printed
    assert not (tmp_path / "part" / "result.json").exists()  # paused, not finished
    assert torch.load(Path(part) / "checkpoint.pt", weights_only=True)["step"] == 10
    # not past the checkpoint: one line, exit 2
    assert main(["train", "--resume", part, "--quiet", "--stop-at", "10"]) == 2
    assert "--stop-at: must be above the step training starts from (10)" in capsys.readouterr().err
    assert main(["train", "--resume", part, "--quiet"]) == 0

    def rows(run: str) -> list[dict]:
        lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "wall_seconds"} for x in lines]

    assert rows(part) == rows(full) and [r["step"] for r in rows(part)] == [0, 10, 20]
    a = json.loads((tmp_path / "full" / "result.json").read_text())
    b = json.loads((tmp_path / "part" / "result.json").read_text())
    assert b["status"] == "finished" and b["steps"] == 20 and b["final"] == a["final"]
    # a finished run resumed to more steps and paused again no longer claims its old finish
    assert main(["train", "--resume", part, "--steps", "30", "--stop-at", "25", "--quiet"]) == 0
    assert not (tmp_path / "part" / "result.json").exists()


def test_stop_at_below_one_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, TINY)
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--stop-at", "0"]) == 2
    assert capsys.readouterr().err.strip() == "clinvert: error: --stop-at: must be >= 1, got 0"
    assert not (tmp_path / "r").exists()


def test_config_command_prints_the_resolved_config(capsys) -> None:
    assert main(["config", "--set", "latent.conditional.kappa=10"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["latent"]["conditional"] == {"name": "vmf", "kappa": 10.0}


def test_alignment_rescores_finished_runs_against_random_codes(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, TINY)
    assert main(["train", str(cfg), "--out", str(tmp_path / "runs" / "a"), "--quiet"]) == 0
    out = tmp_path / "alignment.json"
    assert main(["alignment", str(tmp_path / "runs"), "--trials", "5", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert len(records) == 1
    rec = records[0]
    # the re-encoded test set is the one the run scored at its end
    assert rec["mcc"] == pytest.approx(rec["mcc_recorded"], abs=1e-6)
    assert 0.0 <= rec["alignment"] <= 1.0 and rec["outputs"] == rec["latents"] == 4
    assert rec["random_mcc_mean"] <= rec["random_mcc_p95"] <= 1.0
    table = out.with_suffix(".md").read_text()
    assert table.startswith("| run |") and "| contrastive | 1 | 4 |" in table
    assert "random-code MCC" in capsys.readouterr().out
