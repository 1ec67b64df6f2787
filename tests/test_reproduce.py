"""The reproduction harness on a tiny table: local processes, resume/skip, Ray, aggregation, report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from clinvert.cli import main
from clinvert.config import ConfigError
from clinvert.reproduce import build_specs, table_rows

ROOT = Path(__file__).resolve().parents[1]


def tiny_row(conditional: dict, model: dict, matched: bool) -> dict:
    return {
        "matched": matched,
        "latent": {
            "dim": 3,
            "space": "box",
            "marginal": {"name": "uniform"},
            "conditional": conditional,
        },
        "model": {"widths": [4, 4], **model},
        "train": {"batch_size": 6144, "steps": 300000},
        "profiles": {
            "quick": {
                "train": {
                    "batch_size": 64,
                    "steps": 12,
                    "lr": 1e-3,
                    "device": "cpu",
                    "checkpoint_every": 6,
                },
                "eval": {"every": 6, "samples": 128},
            }
        },
    }


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    folder = tmp_path / "configs" / "table2"
    folder.mkdir(parents=True)
    rows = {
        "a-laplace__box-l1": tiny_row(
            {"name": "laplace", "scale": 0.1},
            {"output": "box", "similarity": "lp", "p": 1, "tau": 0.1},
            True,
        ),
        "b-normal__box-l2": tiny_row(
            {"name": "normal", "scale": 0.1},
            {"output": "box", "similarity": "lp", "p": 2, "tau": 0.02},
            True,
        ),
    }
    for name, data in rows.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "configs"


def test_shipped_tables_have_the_required_rows() -> None:
    t1, t2 = (
        table_rows("table1", ROOT / "configs/synthetic"),
        table_rows("table2", ROOT / "configs/synthetic"),
    )
    assert len(t1) >= 10 and len(t2) >= 5
    assert "sphere-uniform-vmf1__sphere-cosine" in t1
    assert {"box-uniform-laplace0.05__box-l1", "box-uniform-normal0.05__box-l2"} <= set(t2)
    specs = build_specs(
        "table1", Path("/tmp/x"), quick=True, seeds=5, root=ROOT / "configs/synthetic"
    )
    assert len(specs) == len(t1) * 5 * 2
    ceiling = build_specs(
        "table1",
        Path("/tmp/x"),
        quick=True,
        seeds=5,
        root=ROOT / "configs/synthetic",
        ceiling_seeds=2,
    )
    assert len(ceiling) == len(t1) * (5 + 2)
    assert {s.seed for s in ceiling if s.objective == "supervised"} == {0, 1}
    quick = specs[0].resolve()
    paper = build_specs(
        "table1", Path("/tmp/x"), quick=False, seeds=1, root=ROOT / "configs/synthetic"
    )[0].resolve()
    assert paper.train.batch_size == 6144 and paper.train.steps == 300_000
    # Same science: latent process, loss and model space; only execution (and widths) may differ.
    assert quick.latent == paper.latent
    science = ("output", "similarity", "p", "tau", "learnable_scale", "scale")
    assert all(getattr(quick.model, k) == getattr(paper.model, k) for k in science)


def test_reproduce_local_then_skip_then_report(configs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "reproduce",
        "table2",
        "--quick",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--configs",
        str(configs),
        "--workers",
        "2",
        "--quiet",
    ]
    assert main(args) == 0
    summary = json.loads((out / "table2.json").read_text())
    assert [s["row"] for s in summary] == ["a-laplace__box-l1", "b-normal__box-l2"]
    for s in summary:
        assert s["metric"] == "mcc" and s["seeds"] == [0, 1] and not s["missing"]
        assert 0 <= s["mean"] <= 1 and s["identity"] is not None and s["supervised"] is not None
    md = (out / "table2.md").read_text()
    assert "| generative process | model | matched? | identity | supervised | contrastive" in md
    assert "Machine:" in md and "Command:" in md
    for s in summary:  # every row states its own training length, not the first row's
        row_line = next(line for line in md.splitlines() if s["process"] in line)
        assert f"| {s['steps']} × {s['batch_size']} |" in row_line
    result = out / "runs" / "a-laplace__box-l1" / "seed1" / "supervised" / "result.json"
    stamp = result.stat().st_mtime_ns
    assert main(args) == 0  # everything finished: skipped, same numbers
    assert result.stat().st_mtime_ns == stamp
    assert json.loads((out / "table2.json").read_text()) == summary

    # A missing run is reported, not averaged in.
    result.unlink()
    (result.parent / "checkpoint.pt").unlink()
    assert main(args + ["--collect"]) == 0
    collected = json.loads((out / "table2.json").read_text())
    assert collected[0]["missing"] == ["supervised seed1"] and collected[1] == summary[1]
    assert "missing runs: supervised seed1" in (out / "table2.md").read_text()
    assert (
        main(
            [
                "reproduce",
                "table2",
                "--quick",
                "--seeds",
                "2",
                "--out",
                str(out),
                "--configs",
                str(configs),
                "--workers",
                "1",
                "--quiet",
                "--rows",
                "a-laplace__box-l1",
            ]
        )
        == 0
    )
    assert result.exists()

    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    for kind in ("bars", "curves", "scatter"):
        assert (out / f"table2_{kind}.png").stat().st_size > 1000


def test_reproduce_reruns_a_run_whose_row_config_changed(configs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["reproduce", "table2", "--quick", "--seeds", "1", "--out", str(out)]
    args += ["--configs", str(configs), "--workers", "1", "--quiet", "--rows", "a-laplace__box-l1"]
    assert main(args) == 0
    result = out / "runs" / "a-laplace__box-l1" / "seed0" / "contrastive" / "result.json"
    stamp = result.stat().st_mtime_ns
    row = configs / "table2" / "a-laplace__box-l1.yaml"
    data = yaml.safe_load(row.read_text())
    data["claims"] = [{"metric": "mcc", "at_least": 0.5}]  # claims never change a run: kept
    row.write_text(yaml.safe_dump(data))
    assert main(args) == 0
    assert result.stat().st_mtime_ns == stamp
    # A field of the contrastive loss only: the contrastive run is stale, the supervised one (a
    # regression on z that never reads the loss) is kept.
    supervised = result.parents[1] / "supervised" / "result.json"
    sup_stamp = supervised.stat().st_mtime_ns
    data["model"]["self_negative"] = True
    row.write_text(yaml.safe_dump(data))
    assert main(args + ["--collect"]) == 0
    assert json.loads((out / "table2.json").read_text())[0]["missing"] == ["contrastive seed0"]
    assert main(args) == 0
    assert supervised.stat().st_mtime_ns == sup_stamp
    assert result.stat().st_mtime_ns != stamp
    stamp = result.stat().st_mtime_ns
    data["profiles"]["quick"]["train"]["lr"] = 2e-3  # the setting changed: its scores are stale
    row.write_text(yaml.safe_dump(data))
    assert main(args + ["--collect"]) == 0
    assert json.loads((out / "table2.json").read_text())[0]["missing"] == [
        "contrastive seed0",
        "supervised seed0",
    ]
    assert main(args) == 0
    assert result.stat().st_mtime_ns != stamp
    assert yaml.safe_load((result.parent / "config.yaml").read_text())["train"]["lr"] == 2e-3


def test_reproduce_rejects_unknown_rows_before_running(configs: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown row 'nope'"):
        build_specs("table2", tmp_path, quick=True, seeds=1, rows=["nope"], root=configs)
    with pytest.raises(ConfigError, match="--seeds"):
        build_specs("table2", tmp_path, quick=True, seeds=0, root=configs)
    with pytest.raises(ConfigError, match="--ceiling-seeds: must be in 0..--seeds"):
        build_specs("table2", tmp_path, quick=True, seeds=2, ceiling_seeds=3, root=configs)


def test_reproduce_on_a_local_ray_instance(configs: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    assert (
        main(
            [
                "reproduce",
                "table2",
                "--quick",
                "--seeds",
                "1",
                "--out",
                str(out),
                "--configs",
                str(configs),
                "--backend",
                "ray",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads((out / "table2.json").read_text())
    assert all(s["seeds"] == [0] and not s["missing"] and not s["failed"] for s in summary)


def test_headline_runs_its_rows_and_writes_the_report(
    configs: Path, tmp_path: Path, monkeypatch
) -> None:
    import clinvert.reproduce as reproduce

    # row a has a headline profile (6 steps), row b only its quick one (12 steps)
    row_a = configs / "table2" / "a-laplace__box-l1.yaml"
    data = yaml.safe_load(row_a.read_text())
    data["profiles"]["headline"] = yaml.safe_load(yaml.safe_dump(data["profiles"]["quick"]))
    data["profiles"]["headline"]["train"]["steps"] = 6
    row_a.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(
        reproduce, "HEADLINE", {"table2": ["a-laplace__box-l1", "b-normal__box-l2"]}
    )
    monkeypatch.setattr(reproduce, "configs_root", lambda: configs)
    out = tmp_path / "headline"
    assert main(["headline", "--seeds", "1", "--out", str(out), "--workers", "1", "--quiet"]) == 0
    summary = json.loads((out / "table2.json").read_text())
    assert [s["row"] for s in summary] == ["a-laplace__box-l1", "b-normal__box-l2"]
    assert [s["steps"] for s in summary] == [6, 12] and summary[0]["seeds"] == [0]
    # no supervised ceiling by default, and the table says so
    assert all(s["supervised"] is None and not s["missing"] for s in summary)
    assert "supervised ceiling was not run" in (out / "table2.md").read_text()
    assert not (out / "runs" / "a-laplace__box-l1" / "seed0" / "supervised").exists()
    assert (out / "report.html").exists()


def test_available_cores_honours_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP_NUM_THREADS caps a sweep's cores (one worker, one thread next to another job)."""
    from clinvert.sweep import available_cores, default_workers

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = available_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert available_cores() == 1 and default_workers() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not-a-number")
    assert available_cores() == cores
