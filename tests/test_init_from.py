"""train.init_from: a fresh run starts from another run's weights, with its own optimiser and
schedule; a missing or ill-fitting source is refused in one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from clinvert.cli import main
from clinvert.rundir import load_checkpoint
from small_configs import box_l1


def _config(tmp_path: Path, name: str, steps: int, width: int = 8, **train) -> Path:
    path = tmp_path / f"{name}.yaml"
    cfg = box_l1(
        4, width, 64, steps, eval_every=10, lr=1e-2, device="cpu", checkpoint_every=10, **train
    )
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("source")
    assert main(["train", str(_config(tmp, "a", 20)), "--out", str(tmp / "a"), "--quiet"]) == 0
    return tmp / "a"


@pytest.mark.parametrize("ema", [None, 0.9])
def test_a_run_starts_from_the_source_weights(source: Path, tmp_path: Path, ema) -> None:
    extra = {"ema": ema} if ema else {}
    cfg = _config(tmp_path, "b", 0, **extra)
    out = tmp_path / "b"
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--set",
                 f"train.init_from={source}"]) == 0  # fmt: skip
    a, b = load_checkpoint(source / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0)
    # the same weights on the same held-out samples: the same scores
    ra = json.loads((source / "result.json").read_text())["final"]
    rb = json.loads((out / "result.json").read_text())["final"]
    assert rb["r2"] == pytest.approx(ra["r2"], abs=1e-12)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["init_from"] == str(source)


def test_a_run_from_a_checkpoint_file_trains_with_a_fresh_schedule(
    source: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, "c", 10, schedule="cosine", warmup_steps=5)
    out = tmp_path / "c"
    ckpt = source / "checkpoint.pt"
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--set",
                 f"train.init_from={ckpt}"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = json.loads((source / "metrics.jsonl").read_text().splitlines()[-1])
    assert rows[0]["step"] == 0 and rows[0]["r2"] == pytest.approx(last["r2"], abs=1e-12)
    assert rows[0]["lr"] < 1e-2  # the warmup starts again
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 10


@pytest.mark.parametrize(
    ("init", "width", "message"),
    [
        ("missing-run", 8, "train.init_from: file not found"),
        ("SOURCE", 16, "does not fit this run's model"),
    ],
)
def test_a_bad_source_is_refused_in_one_line_before_anything_is_written(
    source: Path, tmp_path: Path, capsys, init: str, width: int, message: str
) -> None:
    init = str(source) if init == "SOURCE" else str(tmp_path / init)
    cfg = _config(tmp_path, "d", 10, width=width)
    out = tmp_path / "d"
    code = main(["train", str(cfg), "--out", str(out), "--quiet", "--set",
                 f"train.init_from={init}"])  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0 and len(err) == 1 and message in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_a_trainer_built_directly_refuses_a_bad_source_before_writing(tmp_path: Path) -> None:
    from clinvert.config import ConfigError, load_config
    from clinvert.train import Trainer

    cfg = load_config(str(_config(tmp_path, "e", 10)), [f"train.init_from={tmp_path / 'none'}"])
    out = tmp_path / "e"
    with pytest.raises(ConfigError, match="train.init_from: file not found"):
        Trainer(cfg, out, progress=False).run()
    assert not (out / "config.yaml").exists()
