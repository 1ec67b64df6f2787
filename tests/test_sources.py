"""The pair-source seam, the registries, the engine's callbacks and the safe loading of checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clinvert.callbacks import Callback, CSVLogger
from clinvert.cli import main
from clinvert.config import ConfigError, validate_config
from clinvert.data.arrays import ArraysSource
from clinvert.registry import ENCODERS, SIMILARITIES, SOURCES, Registry, RegistryError
from clinvert.rundir import load_checkpoint
from clinvert.train import Trainer

TINY_MODEL = {"widths": [4, 4], "output": "box", "similarity": "lp", "p": 1, "tau": 0.1}
TINY_TRAIN = {"batch_size": 64, "steps": 12, "lr": 1e-3, "device": "cpu", "checkpoint_every": 6}
#: A synthetic run of 4 steps on 3 latents (a second or two).
TINY_SYNTHETIC = {
    "latent": {"dim": 3},
    "mixing": {"layers": 2, "cond_trials": 20},
    "model": {"widths": [4], "tau": 0.1},
    "train": {**TINY_TRAIN, "steps": 4},
    "eval": {"every": 2, "samples": 64},
}


def arrays_config(data: dict, **model) -> dict:
    return {
        "latent": {"dim": 3},
        "model": {**TINY_MODEL, **model},
        "train": TINY_TRAIN,
        "eval": {"every": 6, "samples": 200},
        "data": {"source": "arrays", **data},
    }


@pytest.fixture()
def npy(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    z = rng.uniform(size=(500, 3))
    mix = rng.normal(size=(3, 5))
    paths = {}
    for name, arr in {
        "x": np.tanh(z @ mix),
        "x_pos": np.tanh(np.clip(z + rng.laplace(scale=0.05, size=z.shape), 0, 1) @ mix),
        "z": z,
        "seq1": np.tanh(z[:300] @ mix),
        "seq2": np.tanh(z[300:] @ mix),
        "z1": z[:300],
        "z2": z[300:],
    }.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], arr.astype(np.float32))
    return paths


def write(tmp_path: Path, config: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


# ----- registries ----------------------------------------------------------------------------------
def test_registry_names_register_and_refuse_duplicates() -> None:
    reg: Registry[int] = Registry("model.widget")
    reg.register("a", 1)
    assert reg.get("a") == 1 and reg.names() == ["a"] and "a" in reg
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a", 2)
    with pytest.raises(RegistryError, match=r"^model.widget: unknown name 'b', allowed: a$"):
        reg.get("b")
    assert set(SOURCES.names()) >= {"synthetic", "threedident", "arrays"}
    assert set(ENCODERS.names()) >= {"mlp", "resnet18", "conv", "conv-wide"}


@pytest.mark.parametrize("self_negative", [False, True])
def test_a_registered_similarity_takes_the_plain_path_with_the_same_values(self_negative) -> None:
    from clinvert.losses import (
        cosine_similarity_matrix,
        info_nce,
        lp_similarity_matrix,
        register_similarity,
    )

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    a = torch.nn.functional.normalize(a, dim=1)
    b = a + 0.3 * torch.randn(64, 5, generator=gen, dtype=torch.float64)
    b = torch.nn.functional.normalize(b, dim=1)
    try:
        register_similarity("plain_cosine_test", cosine_similarity_matrix)
        register_similarity("plain_lp_test", lp_similarity_matrix)
        for fused, plain, p in (("cosine", "plain_cosine_test", 2.0), ("lp", "plain_lp_test", 1.0)):
            a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
            want = info_nce(a1, b, similarity=fused, p=p, tau=0.2, self_negative=self_negative)
            got = info_nce(a2, b, similarity=plain, p=p, tau=0.2, self_negative=self_negative)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
            want.backward()
            got.backward()
            torch.testing.assert_close(a2.grad, a1.grad, rtol=1e-8, atol=1e-10)
    finally:
        SIMILARITIES.unregister("plain_cosine_test")
        SIMILARITIES.unregister("plain_lp_test")


PLUGIN = """
import torch
import clinvert


@clinvert.register_similarity("neg_sq_l2_plugin")
def neg_sq_l2(a, b, p):
    return -torch.cdist(a, b) ** 2


@clinvert.register_encoder("tiny_plugin", inputs="vector")
def tiny(in_dim, out_dim, **options):
    return torch.nn.Sequential(torch.nn.Linear(in_dim, 16), torch.nn.ReLU(), torch.nn.Linear(16, out_dim))
"""


def test_a_registered_similarity_and_encoder_train_from_yaml(
    tmp_path: Path, npy, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    config = arrays_config(
        {"x": str(npy["x"]), "x_positive": str(npy["x_pos"]), "z": str(npy["z"])},
        similarity="neg_sq_l2_plugin",
        encoder="tiny_plugin",
        output="unbounded",
    )
    config["plugins"] = ["my_plugin.py"]
    try:
        assert main(["train", str(write(tmp_path, config)), "--out", "run", "--quiet"]) == 0
        result = json.loads((tmp_path / "run" / "result.json").read_text())
        assert result["status"] == "finished" and result["config"]["plugins"] == ["my_plugin.py"]
        assert result["config"]["model"]["similarity"] == "neg_sq_l2_plugin"
        rows = [
            json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        ]
        assert rows[-1]["loss"] < rows[1]["loss"] + 1.0 and np.isfinite(rows[-1]["loss"])
        # the same name without the plugin is refused with the allowed names
        del config["plugins"]
        SIMILARITIES.unregister("neg_sq_l2_plugin")
        ENCODERS.unregister("tiny_plugin")
        with pytest.raises(ConfigError, match=r"^model.encoder: unknown name, allowed: mlp"):
            validate_config(config)
    finally:
        SIMILARITIES.unregister("neg_sq_l2_plugin")
        ENCODERS.unregister("tiny_plugin")
        import sys

        for name in [m for m in sys.modules if m.startswith("clinvert_plugin_")]:
            del sys.modules[name]


def test_a_plugin_that_fails_to_import_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(
        ConfigError, match=r"^plugins: importing 'broken.py' failed \(RuntimeError: boom\)"
    ):
        validate_config({"plugins": ["broken.py"]})
    with pytest.raises(ConfigError, match="plugins: importing 'no_such_module_x'"):
        validate_config({"plugins": ["no_such_module_x"]})


# ----- arrays source -------------------------------------------------------------------------------
def test_arrays_pairs_and_sequences_train_from_npy_files(tmp_path: Path, npy) -> None:
    pairs = arrays_config({"x": str(npy["x"]), "x_positive": str(npy["x_pos"]), "z": str(npy["z"])})
    assert (
        main(["train", str(write(tmp_path, pairs)), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    )
    result = json.loads((tmp_path / "p" / "result.json").read_text())
    assert result["data"]["pairs"] == "x / x_positive" and result["data"]["rows"] == 500
    assert result["identity"]["r2"] is not None and result["final"]["mcc"] > 0
    seqs = arrays_config(
        {"x": [str(npy["seq1"]), str(npy["seq2"])], "z": [str(npy["z1"]), str(npy["z2"])],
         "max_delta_t": 3}
    )  # fmt: skip
    out = tmp_path / "s"
    assert main(["train", str(write(tmp_path, seqs, "s.yaml")), "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["data"]["positive_pairs"] == 498 and result["data"]["max_delta_t"] == 3
    # resumable: continuing the finished run to more steps works from its checkpoint
    assert main(["train", "--resume", str(out), "--steps", "18", "--quiet"]) == 0
    assert json.loads((out / "result.json").read_text())["steps"] == 18


def test_arrays_without_latents_train_and_say_there_is_nothing_to_score(
    tmp_path: Path, npy, capsys
) -> None:
    config = arrays_config({"x": str(npy["x"]), "x_positive": str(npy["x_pos"])})
    assert (
        main(["train", str(write(tmp_path, config)), "--out", str(tmp_path / "n"), "--quiet"]) == 0
    )
    result = json.loads((tmp_path / "n" / "result.json").read_text())
    assert result["final"]["r2"] is None and np.isfinite(result["final"]["loss"])
    assert "no ground-truth latents" in capsys.readouterr().out


def test_arrays_batches_are_a_function_of_seed_and_step(npy) -> None:
    cfg = validate_config(
        arrays_config({"x": [str(npy["seq1"]), str(npy["seq2"])], "max_delta_t": 4})
    )
    a, b = (ArraysSource(cfg, torch.device("cpu")) for _ in range(2))
    for step in (0, 7, 3):
        ia, ja = a.indices(step)
        ib, jb = b.indices(step)
        assert torch.equal(ia, ib) and torch.equal(ja, jb)
    i, j = a.indices(5)
    dt = j - i
    assert ((dt >= 1) & (dt <= 4)).all()
    assert ((i < 300) == (j < 300)).all()  # the partner is in the anchor's own sequence
    assert len(set(i.tolist())) == len(i)  # no repeated anchor (sampled without replacement)


def test_arrays_errors_name_the_field(tmp_path: Path, npy) -> None:
    missing = arrays_config({"x": str(tmp_path / "nope.npy")})
    assert main(["train", str(write(tmp_path, missing)), "--out", str(tmp_path / "m")]) == 2
    assert not (tmp_path / "m").exists()
    cfg = validate_config(arrays_config({"x": str(npy["x"]), "x_positive": str(npy["z"])}))
    with pytest.raises(ConfigError, match=r"^data.x_positive: must have the shape of data.x"):
        ArraysSource(cfg, torch.device("cpu"))
    cfg = validate_config(arrays_config({"x": str(npy["x"])}, encoder="conv", input_norm="none"))
    with pytest.raises(ConfigError, match=r"^model.encoder: conv encodes images"):
        ArraysSource(cfg, torch.device("cpu"))
    big = arrays_config({"x": str(npy["x"]), "x_positive": str(npy["x_pos"])})
    big["train"] = {**TINY_TRAIN, "batch_size": 600}
    with pytest.raises(ConfigError, match=r"^train.batch_size: 600 is more than the 500"):
        ArraysSource(validate_config(big), torch.device("cpu"))


# ----- the engine ----------------------------------------------------------------------------------
class Rows(Callback):
    def __init__(self) -> None:
        self.rows, self.ended, self.closed = [], None, False

    def on_eval(self, trainer, row, scores) -> None:
        self.rows.append((row["step"], sorted(scores)))

    def on_end(self, trainer, result) -> None:
        self.ended = result["status"]

    def on_close(self, trainer) -> None:
        self.closed = True


def test_trainer_runs_in_memory_with_callbacks_and_writes_nothing(
    tmp_path: Path, npy, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    cfg = validate_config(
        arrays_config({"x": str(npy["x"]), "x_positive": str(npy["x_pos"]), "z": str(npy["z"])})
    )
    rows = Rows()
    result = Trainer(cfg, progress=False, callbacks=[rows, CSVLogger(tmp_path / "log.csv")]).run()
    assert result["status"] == "finished" and rows.ended == "finished" and rows.closed
    assert [s for s, _ in rows.rows] == [0, 6, 12] and "r2_per_dim" in rows.rows[-1][1]
    assert set(os.listdir(tmp_path)) - before == {"log.csv"}
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 4  # header + 3 rows


def test_result_json_is_self_describing(tmp_path: Path) -> None:
    config = dict(TINY_SYNTHETIC)
    assert (
        main(["train", str(write(tmp_path, config)), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    )
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["config"] == yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert result["versions"]["clinvert"] and "git_commit" in result["versions"]


def test_tensorboard_event_files_appear_when_enabled(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    config = {**TINY_SYNTHETIC, "log": {"tensorboard": True}}
    assert (
        main(["train", str(write(tmp_path, config)), "--out", str(tmp_path / "tb"), "--quiet"]) == 0
    )
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "lr", "r2", "mcc", "r2_per_dim/0", "final/r2", "identity/mcc"} <= tags
    assert [e.step for e in acc.Scalars("r2")] == [0, 2, 4]


# ----- safe loading --------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_holding_code_is_refused_never_executed(tmp_path: Path) -> None:
    config = dict(TINY_SYNTHETIC)
    run = tmp_path / "run"
    assert main(["train", str(write(tmp_path, config)), "--out", str(run), "--quiet"]) == 0
    marker = tmp_path / "executed"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["hook"] = _Payload(marker)
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(ConfigError, match="refused unread") as err:
        load_checkpoint(run / "checkpoint.pt")
    assert "\n" not in str(err.value)
    assert main(["train", "--resume", str(run), "--steps", "6", "--quiet"]) == 2
    from clinvert import load

    with pytest.raises(ConfigError, match="refused unread"):
        load(run)
    torch.save(_Payload(marker), tmp_path / "estimator.pt")
    with pytest.raises(ConfigError, match="refused unread"):
        load(tmp_path / "estimator.pt")
    assert not marker.exists()
