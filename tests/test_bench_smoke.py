"""The benchmarks keep running: each script's smoke mode, a few tiny steps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("encoder", ["resnet18", "conv"])
def test_image_step_benchmark_smoke(encoder, capsys, tmp_path: Path) -> None:
    bench = _module("bench_image_step")
    out = tmp_path / "m.json"
    assert bench.main(["--smoke", "--encoder", encoder, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "images/s" in text and "clinvert by phase: load" in text
    assert out.is_file()


def test_distributed_benchmark_smoke(capsys) -> None:
    import torch

    threads = torch.get_num_threads()
    bench = _module("bench_distributed")
    assert bench.main(["--smoke"]) == 0
    assert torch.get_num_threads() == threads  # later tests (golden runs) keep their thread count
    text = capsys.readouterr().out
    assert "two ranks / one process" in text and "backward" in text


def test_time_to_quality_benchmark_takes_a_profile(capsys, tmp_path: Path) -> None:
    bench = _module("bench_ttq")
    tiny = ["--set", "train.steps=2", "--set", "train.batch_size=16", "--set", "eval.samples=256"]
    args = ["--presets", "sphere-vmf1", "--profile", "15min", "--eval-every", "1", *tiny]
    assert bench.main([*args, "--out", str(tmp_path)]) == 0
    (result,) = json.loads((tmp_path / "ttq.json").read_text())
    assert result["precision"] == "bf16" and result["steps"] == 2  # the profile, then the overrides
    assert result["profile"] == "15min" and result["overrides"] == tiny[1::2]
    assert result["config"]["train"]["batch_size"] == 16
    assert "sphere-vmf1" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="profile: unknown profile 'nosuch'"):
        bench.main(["--presets", "sphere-vmf1", "--profile", "nosuch", "--out", str(tmp_path)])


def test_loss_paths_benchmark_smoke(capsys, tmp_path: Path) -> None:
    import clinvert.losses as losses

    defaults = (losses.LOGIT_BLOCK_ELEMENTS, losses.SAVED_WEIGHTS_ELEMENTS)
    bench = _module("compare_loss_paths")
    out = tmp_path / "paths.json"
    args = ["--batch", "64", "--rounds", "1", "--blocks", "256", "4096", "--json", str(out)]
    assert bench.main(args) == 0
    assert defaults == (losses.LOGIT_BLOCK_ELEMENTS, losses.SAVED_WEIGHTS_ELEMENTS)  # restored
    assert "best:" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["results"]
    assert len(row["median_ms"]) == 4  # two block sizes, saved and recomputed
