"""train.ema: the weights' moving average is what a run evaluates, saves and resumes, and it leaves
training itself untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from clinvert.cli import main
from clinvert.config import ConfigError, validate_config
from clinvert.ema import WeightEMA
from clinvert.rundir import load_checkpoint
from small_configs import box_l1


def _config(tmp_path: Path, name: str, steps: int = 20, **train) -> Path:
    path = tmp_path / f"{name}.yaml"
    cfg = box_l1(
        4, 8, 64, steps, eval_every=10, lr=1e-2, device="cpu", checkpoint_every=10, **train
    )
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_average_follows_its_recurrence_and_buffers_are_copied() -> None:
    model = torch.nn.BatchNorm1d(3)  # parameters and buffers, integer ones included
    ema = WeightEMA(model, 0.9)
    expected = model.weight.detach().clone()
    for k in range(5):
        with torch.no_grad():
            model.weight.add_(k + 1.0)
        model(torch.randn(8, 3))  # moves the running statistics
        ema.update(model)
        expected = 0.9 * expected + 0.1 * model.weight.detach()
        torch.testing.assert_close(ema.module.weight, expected)
    assert torch.equal(ema.module.running_mean, model.running_mean)
    assert int(ema.module.num_batches_tracked) == 5 and ema.updates == 5
    assert not any(p.requires_grad for p in ema.module.parameters())
    other = WeightEMA(torch.nn.BatchNorm1d(3), 0.9)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.module.weight, ema.module.weight)
    assert other.updates == 5


def test_decay_outside_the_open_unit_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match="train.ema"):
        validate_config({"train": {"ema": 1.0}})
    with pytest.raises(ValueError, match="train.ema"):
        WeightEMA(torch.nn.Linear(2, 2), 0.0)
    assert "ema" not in validate_config({}).to_dict()["train"]  # configs read as before


def test_a_run_with_ema_trains_the_same_weights_evaluates_their_average_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    plain, avg, part = tmp_path / "plain", tmp_path / "avg", tmp_path / "part"
    assert main(["train", str(_config(tmp_path, "p")), "--out", str(plain), "--quiet"]) == 0
    assert main(["train", str(_config(tmp_path, "a", ema=0.8)), "--out", str(avg), "--quiet"]) == 0
    half = _config(tmp_path, "h", ema=0.8, steps=10)
    assert main(["train", str(half), "--out", str(part), "--quiet"]) == 0
    assert main(["train", "--resume", str(part), "--steps", "20", "--quiet"]) == 0

    raw, averaged = load_checkpoint(plain / "checkpoint.pt"), load_checkpoint(avg / "checkpoint.pt")
    for key, value in raw["model"].items():  # the average does not touch training
        assert torch.equal(value, averaged["model"][key]), key
    assert averaged["ema"]["updates"] == 20 and "ema" not in raw
    results = {p.name: json.loads((p / "result.json").read_text()) for p in (plain, avg, part)}
    assert results["avg"]["final"] != results["plain"]["final"]  # scored on the average
    assert results["part"]["final"] == results["avg"]["final"]  # resumed exactly, average too
    assert results["avg"]["config"]["train"]["ema"] == 0.8

    # tools that reload a run score the average too: alignment re-encodes the test set
    out = tmp_path / "alignment.json"
    assert main(["alignment", str(avg), "--trials", "2", "--out", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    assert record["mcc"] == pytest.approx(record["mcc_recorded"], abs=1e-6)
