"""Reference runs that pin the training numbers across refactors of the trainer.

``tests/data/golden_runs.json`` holds the losses and scores of these runs as produced by the code
before the pair-source refactor (commit 38c69e8); ``test_golden.py`` reruns them and compares step for
step. Regenerate (only when a change of numbers is intended, and say so in the CHANGELOG) with
``python tests/golden_runs.py``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "data" / "golden_runs.json"
SMALL = [
    "--set", "train.steps=20", "--set", "train.batch_size=256", "--set", "eval.every=10",
    "--set", "eval.samples=512", "--set", "mixing.cond_trials=200", "--set", "train.device=cpu",
]  # fmt: skip
CASES: dict[str, list[str]] = {
    "sphere-vmf10-cosine": [
        "configs/synthetic/table1/sphere-uniform-vmf10__sphere-cosine-tau0.1.yaml", "--profile", "quick",
        *SMALL,
    ],
    "box-laplace-l1-selfneg": [
        "configs/synthetic/table2/box-uniform-laplace0.05__box-l1.yaml", "--profile", "quick", *SMALL,
    ],
    "box-normal-unbounded-l2": [
        "configs/synthetic/table2/box-uniform-normal0.05__unbounded-l2.yaml", "--profile", "quick",
        *SMALL,
    ],
    "box-laplace-supervised": [
        "configs/synthetic/table2/box-uniform-laplace0.05__box-l1.yaml", "--profile", "quick", *SMALL,
        "--set", "train.objective=supervised",
    ],
}  # fmt: skip


def _toy_writer():
    spec = importlib.util.spec_from_file_location(
        "_toy3did", Path(__file__).resolve().parent / "test_threedident_train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_case(tmp: Path) -> list[str]:
    """A 3DIdent-format toy run (tiny ResNet-18 run on the test suite's disc images)."""
    import yaml

    toy = _toy_writer()
    dirs = {
        "train": toy.write_toy_dataset(tmp / "train", 120, seed=1),
        "test": toy.write_toy_dataset(tmp / "test", 64, seed=2),
    }
    cfg = toy.image_config(dirs, steps=4, batch_size=8)
    cfg["eval"] = {"every": 2, "samples": 64}
    path = tmp / "image.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [str(path)]


def run_case(args: list[str], out: Path) -> dict:
    """Train one case with the command line; the numbers that must not change."""
    from clinvert.cli import main

    assert main(["train", *args, "--out", str(out), "--quiet", "--force"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    result = json.loads((out / "result.json").read_text())
    keep = ("r2", "mcc")
    return {
        "rows": [{k: r[k] for k in ("step", "loss", "r2", "mcc")} for r in rows],
        "final": {k: result["final"][k] for k in keep},
        "identity": {k: result["identity"][k] for k in keep},
    }


def all_cases(tmp: Path) -> dict[str, list[str]]:
    """Every case with its command-line arguments (the image case writes its data under ``tmp``)."""
    return {**CASES, "threedident-toy-l2": image_case(tmp)}


def main() -> None:
    import os
    import tempfile

    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        golden = {n: run_case(a, tmp_path / n) for n, a in all_cases(tmp_path).items()}
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    main()
