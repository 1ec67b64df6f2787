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


@pytest.mark.parametrize("encoder", ["resnet18", "conv", "conv-wide"])
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


def test_noise_scale_estimator_is_unbiased_on_known_gradients() -> None:
    import torch

    bench = _module("noise_scale")
    # per-pair gradients g_i = G + e_i with |G|^2 = 4 and tr(Sigma) = 3 * 100; a batch's mean has
    # E|G_B|^2 = 4 + 300 / B
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([2.0, 0.0, 0.0])

    def sq_norms(batch: int, n: int) -> torch.Tensor:
        g = mean + 10 * torch.randn(n, batch, 3, generator=gen, dtype=torch.float64)
        return g.mean(1).pow(2).sum(1)

    est = bench.noise_scale(sq_norms(8, 20000), sq_norms(256, 20000), 8, 256)
    # standard errors over 20000 batches: about 2 for tr(Sigma), 0.02 for |G|^2, 1 for B_noise
    assert abs(est["trace_covariance"] - 300) < 15
    assert abs(est["true_gradient_sq_norm"] - 4) < 0.5
    assert 60 < est["b_noise"] < 90  # 75 in expectation


def test_noise_scale_benchmark_smoke(capsys, tmp_path: Path) -> None:
    from clinvert.config import validate_config
    from clinvert.train import train
    from small_configs import box_l1

    train(validate_config(box_l1(3, 16, 32, 2)), tmp_path / "run", progress=False)
    bench = _module("noise_scale")
    args = ["--small", "8", "--big", "32", "--small-batches", "3", "--big-batches", "2"]
    out = tmp_path / "ns.json"
    assert bench.main([str(tmp_path / "run" / "checkpoint.pt"), *args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["step"] == 2 and result["small"] == 8 and "b_noise" in result
    assert "B_noise" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="checkpoint"):
        bench.main([str(tmp_path / "nosuch.pt")])


def test_neighbours_benchmark_smoke(capsys, tmp_path: Path) -> None:
    bench = _module("bench_neighbours")
    out = tmp_path / "nn.json"
    assert bench.main(["--smoke", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {(r["dims"], r["batch"]) for r in rows} == {
        (d, b) for d in (10, 16) for b in ("pairs, k=2", "anchors, k=1")
    }
    assert all(r.get("same", True) for r in rows)  # both exact searches agree
    assert "faiss / kdtree" in capsys.readouterr().out
