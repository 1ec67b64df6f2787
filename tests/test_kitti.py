"""KITTI Masks: the restricted pickle reader, the walking-mask generator, the temporal pair source,
SlowVAE, and the fetch command's behaviour without a network. Files are made here in exactly the
published format (a pickled dict of two lists of numpy arrays)."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clinvert.cli import main
from clinvert.config import ConfigError, load_config, validate_config
from clinvert.data.kitti import load_kitti_masks, write_kitti_masks
from clinvert.data.kitti.fetch import fetch_kitti_masks
from clinvert.data.kitti.masks import mask_factors
from clinvert.data.kitti.walkers import WalkerSpec, factor_walks, make_walkers, transition_stats
from clinvert.models.slowvae import SlowVAE, gaussian_laplace_kl
from clinvert.reproduce import random_code_level


def published(n_seq: int = 6, length: int = 12, seed: int = 0) -> dict:
    """A dict exactly as the published file holds it (bool masks, float32 latents)."""
    masks, latents = make_walkers(WalkerSpec(sequences=n_seq, length=length, seed=seed))
    return {"pedestrians": masks, "pedestrians_latents": latents}


@pytest.fixture(scope="module")
def walkers(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kitti") / "walkers.pickle"
    masks, latents = make_walkers(WalkerSpec(sequences=40, length=30, seed=3))
    return write_kitti_masks(path, masks, latents)


def test_published_format_round_trip(tmp_path: Path) -> None:
    obj = published()
    path = tmp_path / "kitti_peds_v2.pickle"
    path.write_bytes(pickle.dumps(obj))  # numpy's own pickling, the default protocol
    data = load_kitti_masks(path)
    assert len(data.masks) == 6 and data.frames == 72
    for got, want in zip(data.masks, obj["pedestrians"], strict=True):
        assert got.dtype == np.bool_ and np.array_equal(got, want)
    assert all(z.dtype == np.float32 and z.shape == (12, 3) for z in data.latents)
    # integer 0/1 masks (as some tools save them) are accepted as masks
    obj["pedestrians"] = [m.astype(np.uint8) for m in obj["pedestrians"]]
    path.write_bytes(pickle.dumps(obj, protocol=2))
    assert np.array_equal(load_kitti_masks(path).masks[0], published()["pedestrians"][0])


class _Payload:
    def __reduce__(self):  # noqa: ANN204 - what a malicious pickle does
        return (subprocess.call, (["touch", str(_Payload.marker)],))


def test_a_pickle_carrying_code_is_refused_and_never_run(tmp_path: Path) -> None:
    _Payload.marker = tmp_path / "pwned"
    obj = published(2, 3)
    obj["extra"] = _Payload()
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ConfigError, match="refused global subprocess.call") as err:
        load_kitti_masks(path)
    assert "\n" not in str(err.value) and str(err.value).startswith("data.path: ")
    assert not _Payload.marker.exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.pop("pedestrians_latents"), "missing key 'pedestrians_latents'"),
        (lambda o: o["pedestrians"].pop(), "5 mask sequences but 6 latent"),
        (lambda o: o["pedestrians"].__setitem__(0, np.zeros((12, 32, 32), bool)), r"\[T, 64, 64\]"),
        (lambda o: o["pedestrians"].__setitem__(1, np.full((12, 64, 64), 2, np.uint8)), "bool"),
        (lambda o: o["pedestrians_latents"].__setitem__(2, np.zeros((11, 3))), r"\[12, 3\]"),
        (lambda o: o["pedestrians_latents"][3].__setitem__((0, 0), np.nan), "finite"),
    ],
)
def test_malformed_files_are_refused_in_one_line(tmp_path: Path, mutate, message) -> None:
    obj = published()
    mutate(obj)
    path = tmp_path / "bad.pickle"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ConfigError, match=message) as err:
        load_kitti_masks(path)
    assert "\n" not in str(err.value)


def test_truncated_missing_and_foreign_files(tmp_path: Path) -> None:
    good = tmp_path / "good.pickle"
    good.write_bytes(pickle.dumps(published(2, 3)))
    cut = tmp_path / "cut.pickle"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(ConfigError, match="truncated"):
        load_kitti_masks(cut)
    with pytest.raises(ConfigError, match="file not found"):
        load_kitti_masks(tmp_path / "nothing.pickle")
    other = tmp_path / "list.pickle"
    other.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ConfigError, match="must hold a dict"):
        load_kitti_masks(other)


def test_walks_are_uniform_and_laplace_steps_heavy_tailed() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    u = factor_walks(WalkerSpec(sequences=n, length=25, scale=0.1), rng)
    assert u.min() >= 0 and u.max() <= 1
    # reflected symmetric walks started uniform stay uniform: at the last frame, over n independent
    # walks, mean 1/2 (std 0.289 / sqrt n = 0.002) and variance 1/12 (std sqrt((1/80 - 1/144) / n)
    # = 0.0005); 4 standard deviations each, and a Kolmogorov-Smirnov test against U(0, 1)
    last = u[:, -1]
    assert np.abs(last.mean(0) - 0.5).max() < 4 * 0.289 / math.sqrt(n)
    assert np.abs(last.var(0) - 1 / 12).max() < 4 * math.sqrt((1 / 80 - 1 / 144) / n)
    from scipy.stats import kstest

    assert min(kstest(last[:, k], "uniform").pvalue for k in range(3)) > 1e-3
    lap = transition_stats([w for w in make_walkers(WalkerSpec(sequences=150, length=30))[1]])
    nor = make_walkers(WalkerSpec(sequences=150, length=30, transition="normal"))[1]
    nor = transition_stats(nor)
    # position steps: Laplace kurtosis 6, Gaussian 3 (measured 5.4-6.7 and 3.0-3.1)
    assert min(lap["kurtosis"][:2]) > 4.5 and max(nor["kurtosis"][:2]) < 3.8


def test_masks_are_in_frame_walk_and_their_factors_are_measured() -> None:
    masks, latents = make_walkers(WalkerSpec(sequences=30, length=20, seed=1))
    m = np.concatenate(masks)
    assert not (m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())
    assert m.sum((1, 2)).min() > 30  # never empty
    # the figure's shape changes between frames (legs and arms swing)
    assert (masks[0][1:] != masks[0][:-1]).any((1, 2)).all()
    assert np.allclose(np.concatenate(latents), mask_factors(m))
    assert np.array_equal(mask_factors(m[:1]), mask_factors(m[:1].astype(np.uint8)))


def kitti_config(path: Path, **over) -> dict:
    cfg = {
        "name": "kitti-test",
        "latent": {
            "dim": 10,
            "space": "box",
            "box": [-1.0, 1.0],
            "marginal": {"name": "uniform"},
            "conditional": {"name": "laplace", "scale": 0.1},
        },
        "model": {
            "encoder": "conv",
            "input_norm": "none",
            "output": "box",
            "similarity": "lp",
            "p": 1,
            "tau": 1.0,
            "self_negative": True,
        },
        "train": {"batch_size": 32, "steps": 6, "lr": 1e-4, "checkpoint_every": 3},
        "eval": {"every": 3, "samples": 300, "correlation": "spearman"},
        "data": {"source": "kitti", "path": str(path), "max_delta_t": 3},
    }
    for key, value in over.items():
        cfg[key] = {**cfg[key], **value}
    return cfg


def test_pairs_are_frames_of_one_sequence_at_most_max_delta_t_apart(walkers: Path) -> None:
    from clinvert.data.kitti.source import KittiSource

    source = KittiSource(validate_config(kitti_config(walkers)), torch.device("cpu"))
    seq_of = np.repeat(np.arange(40), 30)
    gaps = []
    for step in range(20):
        i, j = (t.numpy() for t in source.indices(step))
        assert (seq_of[i] == seq_of[j]).all()
        gaps.append(j - i)
    gaps = np.concatenate(gaps)
    assert gaps.min() >= 1 and gaps.max() <= 3
    assert set(np.unique(gaps)) == {1, 2, 3}
    fields = source.result_fields()["data"]
    assert fields["sequences"] == 40 and fields["factors"] == ["com_y", "com_x", "area"]


def write_cfg(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_infonce_and_slowvae_train_and_resume_exactly(walkers: Path, tmp_path: Path) -> None:
    for objective in ("contrastive", "slowvae"):
        cfg = kitti_config(walkers, train={"objective": objective, "lr": 1e-3})
        path = write_cfg(tmp_path, cfg)
        full, part = tmp_path / f"{objective}-full", tmp_path / f"{objective}-part"
        assert main(["train", str(path), "--out", str(full), "--quiet"]) == 0
        short = kitti_config(walkers, train={"objective": objective, "lr": 1e-3, "steps": 3})
        assert main(["train", str(write_cfg(tmp_path, short)), "--out", str(part), "--quiet"]) == 0
        assert main(["train", "--resume", str(part), "--steps", "6", "--quiet"]) == 0
        a = json.loads((full / "result.json").read_text())
        b = json.loads((part / "result.json").read_text())
        assert a["final"] == b["final"], objective
        assert a["data"]["max_delta_t"] == 3 and 0 <= a["final"]["mcc"] <= 1


def test_channels_last_weights_change_layout_not_arithmetic(walkers: Path) -> None:
    """``model.memory_format: channels_last`` gives the same initial weights, loss and gradients
    (float32 convolutions summed in another order). The decoder's last bias gradient sums
    B x 64 x 64 = 1.3e5 terms (worst-case relative error n * eps = 8e-3, measured 5e-4) and some
    entries cancel to ~1e-6, so the whole gradient is compared, within 1e-3 of its norm."""
    from clinvert.experiment import build_experiment
    from clinvert.train import Trainer

    for objective in ("contrastive", "slowvae"):
        grads = []
        for fmt in ("contiguous", "channels_last"):
            cfg = kitti_config(
                walkers, model={"memory_format": fmt}, train={"objective": objective}
            )
            trainer = Trainer(build_experiment(validate_config(cfg)), progress=False)
            model = trainer.exp.model
            convs = [p for p in model.parameters() if p.dim() == 4]
            assert convs and all(
                p.is_contiguous(memory_format=torch.channels_last) for p in convs
            ) == (fmt == "channels_last")
            loss = {"contrastive": trainer.contrastive_loss, "slowvae": trainer.slowvae_loss}
            value = loss[objective]()
            value.backward()
            grads.append((value.detach(), [p.grad.clone() for p in model.parameters()]))
        (l0, g0), (l1, g1) = grads
        torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-5)
        a, b = torch.cat([g.flatten() for g in g0]), torch.cat([g.flatten() for g in g1])
        assert float((b - a).norm()) <= 1e-3 * float(a.norm()), objective


def test_config_errors_name_the_field(walkers: Path, tmp_path: Path, capsys) -> None:
    missing = kitti_config(tmp_path / "nothing.pickle")
    assert main(["train", str(write_cfg(tmp_path, missing)), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("clinvert: error: data.path: file not found")
    bad = kitti_config(walkers, train={"objective": "slowvae"}, model={"encoder": "resnet18"})
    assert main(["train", str(write_cfg(tmp_path, bad)), "--out", str(tmp_path / "r")]) == 2
    assert "model.encoder: SlowVAE" in capsys.readouterr().err
    narrow = kitti_config(walkers, train={"objective": "supervised"}, model={"output_dim": 2})
    assert main(["train", str(write_cfg(tmp_path, narrow)), "--out", str(tmp_path / "r")]) == 2
    assert (
        "model.output_dim: the supervised objective regresses the 3 latent columns"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "r").exists()


def test_gaussian_laplace_kl_matches_monte_carlo() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.0, 0.4, -1.3, 2.0], dtype=torch.float64)
    logvar = torch.tensor([0.0, -2.0, 0.5, -4.0], dtype=torch.float64)
    centre = torch.tensor([0.0, 0.1, 0.2, 2.1], dtype=torch.float64)
    rate = 6.0
    n = 400_000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z)
    log_p = torch.distributions.Laplace(centre, torch.full_like(centre, 1 / rate)).log_prob(z)
    samples = log_q - log_p
    mc, se = samples.mean(0), samples.std(0) / math.sqrt(n)
    exact = gaussian_laplace_kl(mu, logvar, centre, rate)
    assert (torch.abs(exact - mc) < 5 * se).all(), (exact, mc, se)


def test_slowvae_codes_are_posterior_means_and_loss_is_finite() -> None:
    torch.manual_seed(0)
    model = SlowVAE(1, 10)
    x = (torch.rand(4, 1, 64, 64) > 0.8).float()
    assert model(x).shape == (4, 10)
    gen = torch.Generator().manual_seed(1)
    a = model.loss(x, x.flip(0), generator=gen)
    b = model.loss(x, x.flip(0), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(a) and a == b  # the noise comes from the generator only
    assert SlowVAE(1, 10).decoder(torch.zeros(2, 10), size=(48, 48)).shape == (2, 1, 48, 48)


def test_fetch_without_network_says_what_to_place_where(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from clinvert.cli import main; from clinvert.data.kitti import fetch; "
            "fetch.RECORD_API = 'http://127.0.0.1:9/api'; sys.exit(main(['kitti', 'fetch', '--out', "
            f"{str(tmp_path / 'k')!r}]))",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "by hand and place it at" in lines[0]
        and "kitti_peds_v2.pickle" in lines[0]
    )
    assert not (tmp_path / "k" / "kitti_peds_v2.pickle.part").exists()


def test_fetch_checks_the_checksum_and_the_format(tmp_path: Path) -> None:
    src = tmp_path / "served.pickle"
    src.write_bytes(pickle.dumps(published(2, 3)))
    api = tmp_path / "record.json"
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    api.write_text(
        json.dumps({"files": [{"key": "kitti_peds_v2.pickle", "checksum": f"md5:{md5}"}]})
    )
    got = fetch_kitti_masks(tmp_path / "a", url=src.as_uri(), api=api.as_uri(), progress=False)
    assert got.read_bytes() == src.read_bytes()
    api.write_text(json.dumps({"files": [{"key": "kitti_peds_v2.pickle", "checksum": "md5:00"}]}))
    with pytest.raises(ConfigError, match="checksum mismatch"):
        fetch_kitti_masks(tmp_path / "b", url=src.as_uri(), api=api.as_uri(), progress=False)
    assert not list((tmp_path / "b").iterdir())


def test_generate_and_stats_commands(tmp_path: Path, capsys) -> None:
    out = tmp_path / "w.pickle"
    assert main(["kitti", "generate", "--out", str(out), "--sequences", "4", "--length", "8"]) == 0
    assert "4 sequences, 32 frames" in capsys.readouterr().out
    assert load_kitti_masks(out).frames == 32
    from clinvert.io import _FILE_MODE

    assert out.stat().st_mode & 0o777 == _FILE_MODE  # as open() would, not mkstemp's 0600
    assert main(["kitti", "stats", str(out)]) == 0
    assert "kurtosis" in capsys.readouterr().out
    assert main(["kitti", "generate", "--out", str(out), "--scale", "0"]) == 2
    assert capsys.readouterr().err.startswith("clinvert: error: scale:")


def test_reproduce_kitti_points_every_row_at_one_file(walkers: Path, tmp_path: Path) -> None:
    root = tmp_path / "configs"
    (root / "kitti").mkdir(parents=True)
    for row in ("laplace-box-dt1", "slowvae-dt1"):
        cfg = yaml.safe_load((Path("configs/kitti") / f"{row}.yaml").read_text())
        cfg["profiles"]["quick"]["train"].update(steps=4, warmup_steps=1, checkpoint_every=2)
        cfg["profiles"]["quick"]["eval"] = {"every": 2, "samples": 200}
        (root / "kitti" / f"{row}.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    args = ["reproduce", "kitti", "--quick", "--seeds", "1", "--workers", "1", "--quiet"]
    args += ["--configs", str(root), "--data", str(walkers), "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "kitti.json").read_text())
    assert [s["row"] for s in summary] == ["laplace-box-dt1", "slowvae-dt1"]
    assert all(s["mean"] is not None and s["supervised"] is not None for s in summary)
    assert summary[1]["model"].startswith("SlowVAE")
    assert summary[0]["process"] == f"{walkers.name}, pairs Δt ≤ 1"  # the data, not the model's law
    assert (out / "runs" / "slowvae-dt1" / "seed0" / "slowvae" / "result.json").is_file()
    run = json.loads(
        (out / "runs" / "laplace-box-dt1" / "seed0" / "contrastive" / "result.json").read_text()
    )
    assert run["data"]["path"] == str(walkers.resolve())
    table = (out / "kitti.md").read_text()
    assert "SlowVAE" in table and "MCC" in table and "| random codes |" in table
    # the chance level of MCC on these 200 frames with ten outputs: high, the same for both rows
    level = summary[0]["random_code"]
    assert level == summary[1]["random_code"] and level["outputs"] == 10
    assert 0.7 < level["mcc"] <= level["mcc_p95"] <= 1.0 and level["alignment"] < 0.7
    # a table collected where the data file is not: the column is empty instead of failing
    row = root / "kitti" / "laplace-box-dt1.yaml"
    missing = load_config(row, [f"data.path={tmp_path / 'gone.pickle'}"], profile="quick")
    assert random_code_level(missing) is None
    assert main(["report", str(out)]) == 0  # the HTML table and curves (no synthetic scatter)
    assert "kitti: MCC" in (out / "report.html").read_text()
    assert (out / "kitti_curves.png").is_file() and not (out / "kitti_scatter.png").exists()
    assert main(["reproduce", "table2", "--data", str(walkers), "--out", str(out)]) == 2


def test_mcc_protocol_on_padded_outputs_with_spearman() -> None:
    from clinvert.metrics import mcc

    rng = np.random.default_rng(0)
    z = rng.uniform(size=(2000, 3))
    h = rng.normal(size=(2000, 10))  # ten outputs, seven of them noise
    # factor 0 -> output 7 through a monotone nonlinear map, factor 1 -> output 2 negated,
    # factor 2 -> output 5 cubed: Spearman sees each as perfect, Pearson does not
    h[:, 7], h[:, 2], h[:, 5] = np.exp(4 * z[:, 0]), -z[:, 1], (z[:, 2] - 0.5) ** 3
    assert mcc(z, h, "spearman") == pytest.approx(1.0, abs=1e-12)
    assert mcc(z, h, "pearson") < 0.97
    # each factor is matched to a distinct output: two copies of one factor cannot both count
    h2 = rng.normal(size=(2000, 10))
    h2[:, 0] = h2[:, 1] = z[:, 0]
    # factor 0 scores 1, factors 1 and 2 only the best chance correlation among the 8 noise
    # columns left (each |rho| ~ 1/sqrt(2000) = 0.022; the largest of 8 below 0.1)
    assert 1 / 3 <= mcc(z, h2, "spearman") < (1 + 2 * 0.1) / 3


@pytest.mark.parametrize("config", sorted(p.name for p in Path("configs/kitti").glob("*.yaml")))
def test_every_kitti_config_trains_end_to_end(config: str, walkers: Path, tmp_path: Path) -> None:
    cfg = yaml.safe_load((Path("configs/kitti") / config).read_text())
    cfg["data"]["path"] = str(walkers)
    cfg["train"].update(steps=2, checkpoint_every=2, batch_size=16)
    cfg["eval"].update(every=2, samples=100)
    path = write_cfg(tmp_path, cfg)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "finished" and 0 <= result["final"]["mcc"] <= 1
    assert result["config"]["eval"]["correlation"] == "spearman"
