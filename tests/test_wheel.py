"""The package outside its checkout: the wheel is built, installed into a fresh virtual environment
and run from another directory, where only what the wheel carries can be found.

The fresh environment gets clinvert from the wheel alone (``--no-deps``) and its dependencies
(torch and the rest, gigabytes to install again) through a ``.pth`` line pointing at the test
environment's site-packages; an editable clinvert there is not importable that way (its finder is
a ``.pth`` hook that only site directories run), and the test checks that the clinvert it runs is
the wheel's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("wheel")
    wheels = base / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
         "-w", str(wheels), "-q"],
        capture_output=True, text=True, timeout=300, cwd=base,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("clinvert-*.whl"))
    env = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
         str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    work = base / "elsewhere"  # not the checkout: no configs/ folder here
    work.mkdir()
    return env, work


def _run(installed: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess:
    env, work = installed
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    clean["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [str(env / "bin" / "clinvert"), *args],
        capture_output=True, text=True, timeout=600, cwd=work, env=clean,
    )  # fmt: skip


def test_the_installed_package_is_the_wheel(installed) -> None:
    env, work = installed
    where = subprocess.run(
        [str(env / "bin" / "python"), "-c", "import clinvert; print(clinvert.__file__)"],
        capture_output=True, text=True, cwd=work, check=True,
    ).stdout  # fmt: skip
    assert str(env) in where and str(ROOT / "src") not in where
    version = _run(installed, "--version")
    assert version.returncode == 0 and version.stdout.startswith("clinvert 0.")


def test_shipped_configs_train_reproduce_and_report_outside_the_checkout(installed) -> None:
    _, work = installed
    listed = _run(installed, "configs", "list", "synthetic/table1")
    assert (
        listed.returncode == 0
        and "synthetic/table1/sphere-uniform-vmf10__sphere-cosine-tau0.1" in listed.stdout
    )
    row = "sphere-uniform-vmf10__sphere-cosine-tau0.1"
    trained = _run(
        installed, "train", f"table1/{row}", "--profile", "quick", "--out", "run",
        "--set", "train.steps=20", "--set", "eval.every=10", "--set", "train.batch_size=128",
        "--quiet",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    result = json.loads((work / "run" / "result.json").read_text())
    assert result["status"] == "finished" and result["versions"]["clinvert"].startswith("0.")
    # a table of shipped rows: nothing ran yet, so the collected table lists the row as missing
    table = _run(installed, "reproduce", "table1", "--quick", "--rows", row, "--seeds", "1",
                 "--out", "tables", "--collect")  # fmt: skip
    assert (work / "tables" / "table1.json").is_file(), table.stderr
    assert json.loads((work / "tables" / "table1.json").read_text())[0]["row"] == row
    report = _run(installed, "report", "tables")
    assert report.returncode == 0, report.stderr
    assert (work / "tables" / "report.html").is_file()
