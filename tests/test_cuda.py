"""The GPU path: skipped without a CUDA device (this project's CI has none), run on one as
``pytest tests/test_cuda.py``. Precision on the CPU and the GPU benchmark's notice run everywhere."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from clinvert.config import validate_config
from clinvert.losses import info_nce
from clinvert.train import Trainer
from small_configs import box_l1

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _config(device: str, precision: str = "fp32", steps: int = 6) -> dict:
    return box_l1(4, 32, 256, steps, tau=0.5, eval_samples=512, device=device, precision=precision)


def _first_losses(device: str, precision: str) -> list[float]:
    trainer = Trainer(validate_config(_config(device, precision)), progress=False)
    out = []
    for _ in range(3):
        loss, bad = trainer.train_step()
        trainer.step += 1
        assert int(bad) == 0
        out.append(float(loss))
    return out


def test_bf16_autocast_keeps_the_loss_of_fp32_on_the_cpu() -> None:
    # bfloat16 keeps 8 bits of mantissa: the encoder's outputs differ by ~2^-8 relative, and the
    # loss (computed in float32 from them) by about as much
    fp32, bf16 = _first_losses("cpu", "fp32"), _first_losses("cpu", "bf16")
    assert bf16 == pytest.approx(fp32, rel=2e-2)
    assert fp32 != bf16  # autocast did run in bfloat16


def test_gpu_benchmark_says_in_one_line_that_there_is_no_device(capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCHMARKS / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    if torch.cuda.is_available():
        assert bench.main(["--batch", "512", "--steps", "2", "--cases", "l1"]) == 0
        assert "of peak" in capsys.readouterr().out
    else:
        assert bench.main([]) == 0
        assert capsys.readouterr().out.strip().count("\n") == 0


@cuda
@pytest.mark.parametrize(
    ("similarity", "p", "tau"), [("cosine", 2.0, 0.1), ("lp", 1.0, 1.0), ("lp", 2.0, 0.05)]
)
@pytest.mark.parametrize("offset", [None, 8])
def test_fused_infonce_on_cuda_equals_the_cpu(similarity, p, tau, offset) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 6, generator=gen, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(
        torch.randn(24 if offset else 16, 6, generator=gen, dtype=torch.float64), dim=1
    )
    kw = {"similarity": similarity, "p": p, "tau": tau, "self_negative": True, "offset": offset}
    got = []
    for device in ("cpu", "cuda"):
        x, y = a.to(device).requires_grad_(), b.to(device).requires_grad_()
        loss = info_nce(x, y, **kw)
        loss.backward()
        got.append((loss.detach().cpu(), x.grad.cpu(), y.grad.cpu()))
    for cpu, gpu in zip(got[0], got[1], strict=True):
        torch.testing.assert_close(gpu, cpu, rtol=1e-9, atol=1e-12)


@cuda
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_training_on_cuda_at_each_precision(precision: str) -> None:
    fp32 = _first_losses("cpu", "fp32")
    got = _first_losses("cuda", precision)
    assert got == pytest.approx(fp32, rel=2e-2 if precision == "bf16" else 2e-3)
