"""``clinvert train CONFIG --recipe NAME``: phases trained in turn, each from the weights of the one
before, continued where they stopped, refused in one line when malformed or stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from clinvert.cli import main
from clinvert.recipe import plan, read_recipe_record
from small_configs import box_l1

BASE = box_l1(4, 8, 64, 20, eval_every=10, lr=1e-2, device="cpu", checkpoint_every=5)
PROFILES = {"short": {"train": {"steps": 10}}, "slow": {"train": {"lr": 5e-3}}}
RECIPES = {"two": [{"profile": "short"}, {"profile": "slow", "set": {"train.steps": 15}}]}


def _write(tmp_path: Path, recipes: object = None, **extra: object) -> Path:
    path = tmp_path / "recipe-config.yaml"
    data = {**BASE, "profiles": PROFILES, "recipes": RECIPES if recipes is None else recipes}
    path.write_text(yaml.safe_dump({**data, **extra}))
    return path


def _result(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def _rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "wall_seconds"} for x in lines]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """The recipe ``two`` trained once, and its config."""
    tmp = tmp_path_factory.mktemp("recipe")
    cfg = _write(tmp)
    out = tmp / "out"
    assert main(["train", str(cfg), "--recipe", "two", "--out", str(out), "--quiet"]) == 0
    return cfg, out


def test_each_phase_is_the_run_its_commands_would_make(trained, tmp_path: Path) -> None:
    cfg, out = trained
    first, second = out / "1-short", out / "2-slow"
    assert _result(first)["steps"] == 10 and _result(second)["steps"] == 15
    saved = yaml.safe_load((second / "config.yaml").read_text())
    assert saved["train"]["init_from"] == str(first) and saved["train"]["lr"] == 5e-3
    # phase 2 by hand: the profile, the phase's set, the first phase's weights
    by_hand = tmp_path / "by-hand"
    args = ["--profile", "slow", "--set", "train.steps=15", "--set", f"train.init_from={first}"]
    assert main(["train", str(cfg), *args, "--out", str(by_hand), "--quiet"]) == 0
    assert _rows(by_hand) == _rows(second)
    assert _result(by_hand)["final"] == _result(second)["final"]
    record = read_recipe_record(out)
    assert [p["phase"] for p in record["phases"]] == ["1-short", "2-slow"]
    assert [p["status"] for p in record["phases"]] == ["finished", "finished"]
    assert record["phases"][1]["r2"] == _result(second)["final"]["r2"]
    assert record["phases"][1]["init_from"] == str(first)


def test_the_same_command_again_keeps_finished_phases(trained, capsys) -> None:
    cfg, out = trained
    before = {p: (out / p / "metrics.jsonl").read_text() for p in ("1-short", "2-slow")}
    stamp = (out / "2-slow" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["train", str(cfg), "--recipe", "two", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before, kept") == 2
    assert {p: (out / p / "metrics.jsonl").read_text() for p in before} == before
    assert (out / "2-slow" / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_an_interrupted_recipe_resumes_and_ends_like_an_uninterrupted_one(
    trained, tmp_path: Path, capsys
) -> None:
    cfg, full = trained
    out = tmp_path / "out"
    # the first phase stopped after step 5 (a checkpoint, no result), as a killed run leaves it
    first = ["train", str(cfg), "--profile", "short", "--out", str(out / "1-short")]
    assert main([*first, "--stop-at", "5", "--quiet"]) == 0
    assert main(["train", str(cfg), "--recipe", "two", "--out", str(out), "--quiet"]) == 0
    assert "resuming from its checkpoint" in capsys.readouterr().out
    assert [p["status"] for p in read_recipe_record(out)["phases"]] == ["finished"] * 2
    for phase in ("1-short", "2-slow"):
        assert _rows(out / phase) == _rows(full / phase)
        assert _result(out / phase)["final"] == _result(full / phase)["final"]


def test_set_reaches_every_phase_and_init_from_only_the_first(tmp_path: Path) -> None:
    cfg = _write(tmp_path)
    phases = plan(cfg, "two", tmp_path / "out", ["train.seed=3", "train.init_from=elsewhere"])
    assert [p.cfg.train.seed for p in phases] == [3, 3]
    assert phases[0].cfg.train.init_from == "elsewhere"
    assert phases[1].cfg.train.init_from == str(tmp_path / "out" / "1-short")
    assert phases[1].cfg.train.steps == 15 and phases[1].overrides == ("train.steps=15",)


def test_a_config_with_recipes_still_trains_one_profile(tmp_path: Path) -> None:
    cfg = _write(tmp_path)
    assert (
        main(["train", str(cfg), "--profile", "short", "--out", str(tmp_path / "r"), "--quiet"])
        == 0
    )
    assert _result(tmp_path / "r")["steps"] == 10


@pytest.mark.parametrize(
    ("recipes", "args", "message"),
    [
        (
            None,
            ["--recipe", "three"],
            "--recipe: unknown recipe 'three', defined in this config: two",
        ),
        ({"x": []}, ["--recipe", "x"], "recipes.x: must be a non-empty list of phases"),
        (
            {"x": [{"profile": "short", "sett": {}}]},
            ["--recipe", "x"],
            "recipes.x[0]: unknown key 'sett'; allowed: name, profile, set",
        ),
        (
            {"x": [{"profile": "nope"}]},
            ["--recipe", "x"],
            "recipe x, phase 1-nope: profile: unknown profile 'nope'",
        ),
        (
            {"x": [{"profile": "short"}, {"name": "a/b"}]},
            ["--recipe", "x"],
            "recipes.x[1].name: must be a folder name without '/', got 'a/b'",
        ),
        (
            {"x": [{"profile": "short"}, {"set": {"train.lr": -1}}]},
            ["--recipe", "x"],
            "recipe x, phase 2-base: train.lr",
        ),
        (None, ["--recipe", "two", "--profile", "short"], "--profile: not with --recipe"),
        (None, ["--recipe", "two", "--nproc", "2"], "--nproc: --recipe trains in one process"),
    ],
)
def test_bad_recipes_are_one_line_and_write_nothing(
    tmp_path: Path, capsys, recipes, args, message
) -> None:
    cfg = _write(tmp_path, recipes)
    out = tmp_path / "out"
    assert main(["train", str(cfg), *args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not out.exists()


def test_a_recipe_under_torchrun_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    # every rank of torchrun would train the whole recipe into the same folders
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    args = ["train", str(_write(tmp_path)), "--recipe", "two", "--out", str(out), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "WORLD_SIZE: --recipe trains in one process, not under torchrun" in err, err
    assert "\n" not in err and not out.exists()


def test_a_later_phase_without_its_data_is_refused_before_the_first_trains(
    tmp_path: Path, capsys, toy
) -> None:
    from test_threedident_train import image_config

    data = image_config(toy)
    data["profiles"] = {"more": {"data": {"train_dir": str(tmp_path / "missing")}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**data, "recipes": {"r": [{}, {"profile": "more"}]}}))
    assert main(["train", str(path), "--recipe", "r", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "recipe r, phase 2-more: data.train_dir" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_stale_phase_is_refused_and_force_trains_every_phase_again(
    tmp_path: Path, capsys
) -> None:
    cfg = _write(tmp_path)
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--recipe", "two", "--out", str(out), "--quiet"]) == 0
    changed = ["--set", "train.seed=1"]
    assert main(["train", str(cfg), "--recipe", "two", "--out", str(out), *changed, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds a run made from another config than phase 1-short's" in err and "--force" in err
    args = ["train", str(cfg), "--recipe", "two", "--out", str(out), *changed, "--force", "--quiet"]
    assert main(args) == 0
    for phase in ("1-short", "2-slow"):
        assert yaml.safe_load((out / phase / "config.yaml").read_text())["train"]["seed"] == 1


def test_the_shipped_3dident_recipe_chains_its_three_phases(tmp_path: Path, toy) -> None:
    """``best`` of ``threedident/s3-box-normal-conv``, cut to two steps a phase on the toy images."""
    out = tmp_path / "best"
    small = {
        "data.train_dir": str(toy["train"]),
        "data.test_dir": str(toy["test"]),
        "data.workers": 0,
        "train.steps": 2,
        "train.batch_size": 8,
        "train.device": "cpu",
        "eval.every": 2,
        "eval.samples": 96,
    }
    sets = [x for k, v in small.items() for x in ("--set", f"{k}={v}")]
    config = "threedident/s3-box-normal-conv"
    assert main(["train", config, "--recipe", "best", "--out", str(out), *sets, "--quiet"]) == 0
    record = read_recipe_record(out)
    names = [p["phase"] for p in record["phases"]]
    assert names == ["1-diagonal-mild", "2-wide", "3-polish"]
    assert [p["status"] for p in record["phases"]] == ["finished"] * 3
    for before, phase in zip(names, names[1:], strict=False):
        saved = yaml.safe_load((out / phase / "config.yaml").read_text())
        assert saved["train"]["init_from"] == str(out / before)
        assert saved["data"]["train_dir"] == str(toy["train"])  # --set beats the phase's own
    first = yaml.safe_load((out / names[0] / "config.yaml").read_text())
    assert first["latent"]["conditional"]["scale"][3:6] == [0.1, 0.1, 0.1]


def test_config_prints_every_phase_as_train_would_run_it(tmp_path: Path, capsys) -> None:
    cfg = _write(tmp_path)
    out = str(tmp_path / "o")
    assert main(["config", str(cfg), "--recipe", "two", "--out", out, "--set", "train.seed=4"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["train"]["steps"] for d in docs] == [10, 15]
    assert [d["train"]["seed"] for d in docs] == [4, 4]
    assert docs[1]["train"]["init_from"] == str(Path(out) / "1-short")
    assert main(["config", str(cfg), "--recipe", "two", "--profile", "short"]) == 2
    assert "--profile: not with --recipe" in capsys.readouterr().err
