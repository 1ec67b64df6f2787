"""ContrastiveEncoder: scikit-learn conventions, pairs and sequences, persistence, bad inputs.

The data here is made with plain numpy, as a user would: latents in a box, a Laplace conditional
kept inside the box by resampling, and a random invertible leaky-ReLU MLP as the mixing. Sizes are
small (4 latents, 800 steps of 256 pairs) so each fit takes seconds. Thresholds: MCC and R² > 0.9,
and 0.1 above the identity baseline (the observations themselves, MCC 0.68-0.76 here). Measured over
data and model seeds 0-2: pairs MCC 0.973-0.976 (R² 0.949-0.952), sequences MCC 0.957-0.973; with
400 steps the same runs ranged 0.77-0.95, too close to any threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from clinvert import ContrastiveEncoder, load
from clinvert.cli import main
from clinvert.errors import ConfigError
from clinvert.metrics import mcc

DIM = 4


def mixing(dim: int, rng: np.random.Generator, layers: int = 2):
    """A random invertible MLP: unit-norm columns, the best-conditioned of 50 draws per layer."""
    weights = []
    for _ in range(layers):
        draws = [rng.uniform(-1, 1, (dim, dim)) for _ in range(50)]
        draws = [w / np.linalg.norm(w, axis=0) for w in draws]
        weights.append(min(draws, key=np.linalg.cond))

    def g(z: np.ndarray) -> np.ndarray:
        h = z
        for i, w in enumerate(weights):
            h = h @ w
            if i < len(weights) - 1:
                h = np.where(h > 0, h, 0.2 * h)
        return h.astype(np.float32)

    return g


def box_laplace(z: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """z + Laplace noise, each coordinate resampled until it lies in [0, 1]."""
    out = z + rng.laplace(scale=scale, size=z.shape)
    bad = (out < 0) | (out > 1)
    while bad.any():
        out[bad] = z[bad] + rng.laplace(scale=scale, size=int(bad.sum()))
        bad = (out < 0) | (out > 1)
    return out


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    g = mixing(DIM, rng)
    z = rng.uniform(size=(20_000, DIM))
    z_test = rng.uniform(size=(4000, DIM))
    return g(z), g(box_laplace(z, 0.05, rng)), g(z_test), z_test


def small(**kw) -> ContrastiveEncoder:
    args = dict(output_dim=DIM, similarity="lp", p=1, output="box", steps=400, batch_size=256,
                lr=3e-3, warmup_steps=50, widths=(10, 10), verbose=False)  # fmt: skip
    args.update(kw)
    return ContrastiveEncoder(**args)


def test_fit_on_pairs_recovers_the_latents_up_to_permutation(pairs) -> None:
    x, x_pos, x_test, z_test = pairs
    enc = small(steps=800).fit(x, x_pos)
    h = enc.transform(x_test)
    assert h.shape == (len(x_test), DIM) and h.dtype == np.float32
    identity = mcc(z_test, x_test)
    assert mcc(z_test, h) > max(0.9, identity + 0.1), (mcc(z_test, h), identity)
    assert enc.score(x_test, z_test) > 0.9


def test_fit_on_sequences_with_max_delta_t() -> None:
    rng = np.random.default_rng(1)
    g = mixing(DIM, rng)
    sequences, latents = [], []
    for _ in range(20):  # reflected Laplace random walks in the box: sparse transitions
        steps = rng.laplace(scale=0.03, size=(600, DIM))
        z = np.abs(np.mod(0.5 + np.cumsum(steps, 0), 2.0) - 1.0)  # reflect at 0 and 1
        sequences.append(g(z))
        latents.append(z)
    enc = small(max_delta_t=2, steps=800).fit(sequences, Z=latents)
    assert [r["step"] for r in enc.history_][-1] == 800 and enc.history_[-1]["mcc"] is not None
    z_all, x_all = np.concatenate(latents), np.concatenate(sequences)
    assert mcc(z_all, enc.transform(x_all)) > max(0.9, mcc(z_all, x_all) + 0.1)


def test_sklearn_conventions_clone_params_and_pipeline(pairs) -> None:
    enc = ContrastiveEncoder(output_dim=3, tau=0.2, steps=7)
    params = enc.get_params()
    assert params["output_dim"] == 3 and params["tau"] == 0.2 and params["random_state"] == 0
    twin = clone(enc)
    assert twin is not enc and twin.get_params() == params
    assert enc.set_params(steps=9) is enc and enc.steps == 9
    x = pairs[0][:2000]
    pipe = Pipeline(
        [("scale", StandardScaler()), ("enc", small(steps=20)), ("pca", PCA(n_components=2))]
    )
    out = pipe.fit_transform(x)  # y is None: the rows of x are one sequence
    assert out.shape == (2000, 2)
    assert pipe.transform(x[:5]).shape == (5, 2)


def test_same_seed_same_codes_and_save_load_is_identical(pairs, tmp_path: Path) -> None:
    x, x_pos, x_test, _ = pairs
    a = small(steps=30).fit(x, x_pos)
    b = small(steps=30).fit(x, x_pos)
    np.testing.assert_array_equal(a.transform(x_test), b.transform(x_test))
    path = a.save(tmp_path / "enc.pt")
    loaded = load(path)
    np.testing.assert_array_equal(loaded.transform(x_test), a.transform(x_test))
    assert loaded.get_params()["p"] == 1 and loaded.get_params()["output"] == "box"


def test_ema_estimator_holds_the_average_and_saves_it(pairs, tmp_path: Path) -> None:
    x, x_pos, x_test, _ = pairs
    plain = small(steps=30).fit(x, x_pos)
    avg = small(steps=30, ema=0.9).fit(x, x_pos)
    assert avg.config_.train.ema == 0.9
    assert not np.array_equal(avg.transform(x_test), plain.transform(x_test))
    loaded = load(avg.save(tmp_path / "enc.pt"))
    assert loaded.get_params()["ema"] == 0.9
    np.testing.assert_array_equal(loaded.transform(x_test), avg.transform(x_test))
    with pytest.raises(ConfigError, match="^ema: "):
        small(ema=1.5).fit(x, x_pos)


def test_images_use_the_conv_encoder_and_channels_last_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    z = rng.uniform(0.2, 0.8, size=(600, 2))
    z_pos = np.clip(z + rng.normal(scale=0.03, size=z.shape), 0.2, 0.8)

    def render(c):  # a bright disc at (x, y)
        d = (xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2
        return (d < 0.03).astype(np.float32)

    enc = small(output_dim=2, steps=10, batch_size=64).fit(render(z), render(z_pos))
    assert enc.get_params()["encoder"] == "auto" and enc.config_.model.encoder == "conv"
    images = render(z)[:, None]  # [N, 1, H, W]
    codes = enc.transform(images)
    np.testing.assert_allclose(enc.transform(np.moveaxis(images, 1, -1)), codes, rtol=1e-6)


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda e, x, xp: e.fit(x, xp[:, :3]), "X_positive"),
        (lambda e, x, xp: e.fit(np.where(np.arange(len(x))[:, None] == 5, np.nan, x), xp), "X"),
        (lambda e, x, xp: e.fit(x[:100], xp[:100]), "batch_size"),
        (lambda e, x, xp: e.fit(x[:, 0], xp[:, 0]), "X"),
        (lambda e, x, xp: e.fit(x, xp, Z=np.zeros((3, 2))), "Z"),
        (lambda e, x, xp: e.set_params(tau=-1).fit(x, xp), "tau"),
        (lambda e, x, xp: e.set_params(similarity="dot").fit(x, xp), "similarity"),
    ],
)
def test_bad_inputs_to_fit_name_the_argument(pairs, call, argument) -> None:
    x, x_pos = pairs[0][:1000], pairs[1][:1000]
    with pytest.raises(ConfigError) as err:
        call(small(batch_size=256, steps=2), x, x_pos)
    message = str(err.value)
    assert message.startswith(argument + ":") and "\n" not in message, message


def test_transform_before_fit_and_wrong_width_are_refused(pairs) -> None:
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        small().transform(pairs[0])
    enc = small(steps=2).fit(pairs[0], pairs[1])
    with pytest.raises(ConfigError, match=r"^X: expected observations of shape \[4\]"):
        enc.transform(pairs[0][:, :3])


def test_load_a_run_directory_written_by_clinvert_train(tmp_path: Path) -> None:
    config = {
        "latent": {"dim": 3, "space": "sphere", "conditional": {"name": "vmf", "kappa": 10}},
        "mixing": {"layers": 2, "cond_trials": 50},
        "model": {"widths": [5, 5], "tau": 0.1},
        "train": {"batch_size": 128, "steps": 20, "lr": 1e-3, "device": "cpu"},
        "eval": {"every": 10, "samples": 512},
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    enc = load(tmp_path / "run")
    from clinvert.config import read_run_config, validate_config
    from clinvert.data.synthetic import SyntheticSource

    source = SyntheticSource(
        validate_config(read_run_config(tmp_path / "run")), torch.device("cpu")
    )
    z = source.latents("test")
    codes = enc.transform(source.mixing(z).numpy())
    assert codes.shape == (512, 3)
    assert enc.score(source.mixing(z).numpy(), z.numpy()) == pytest.approx(
        result["final"]["r2"], abs=1e-6
    )


def test_load_refuses_what_is_neither(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nothing.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not a saved ContrastiveEncoder"):
        load(tmp_path / "other.pt")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError, match="without config.yaml"):
        load(tmp_path / "dir")
