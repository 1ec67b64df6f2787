"""The oracle of ``clinvert threedident objective``: what a 3DIdent config's InfoNCE rewards."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clinvert.cli import main
from clinvert.config import validate_config
from clinvert.data.images import load_image_dataset
from clinvert.data.pairs import PairBatches
from clinvert.data.threedident.objective import (
    embedded_columns,
    oracle_loss,
    oracle_pull,
    oracle_rows,
    pair_latents,
)
from clinvert.latents import NoiseLaw
from clinvert.losses import InfoNCE
from clinvert.metrics import embed_latents
from test_threedident_train import image_config


def _cfg(toy: dict[str, Path], scale: float | list[float] = 0.1, batch: int = 8):
    raw = image_config(toy)
    raw["latent"]["conditional"] = {"name": "normal", "scale": scale}
    raw["train"]["batch_size"] = batch
    return validate_config(raw)


def test_embedded_columns_follow_embed_latents() -> None:
    periodic = np.array([False] * 3 + [True] * 4 + [False] * 3)
    assert embedded_columns(list(range(10)), np.zeros(10, bool)) == list(range(10))
    base = np.zeros((1, 10), np.float32)
    for factor in range(10):
        moved = base.copy()
        moved[0, factor] = 0.7
        changed = np.flatnonzero(embed_latents(moved, periodic) != embed_latents(base, periodic))
        # A linear factor owns one column; an angle its cosine and its sine (which both move).
        assert embedded_columns([factor], periodic) == changed.tolist()
    assert len(embedded_columns(list(range(10)), periodic)) == 14


def test_an_encoder_without_factors_scores_chance() -> None:
    gen = torch.Generator().manual_seed(0)
    z = [torch.rand(16, 10, generator=gen) for _ in range(3)]
    loss, _ = oracle_loss(z, z, InfoNCE("lp", p=2.0), [])
    assert loss == pytest.approx(math.log(16), abs=1e-6)  # every logit equal
    own, _ = oracle_loss(z, z, InfoNCE("lp", p=2.0, self_negative=True), [])
    assert own == pytest.approx(math.log(17), abs=1e-6)  # the anchor itself joins the negatives


@pytest.mark.parametrize("scale", [0.1, [0.3] * 3 + [0.05] * 3 + [0.3] * 4])
def test_snapped_pairs_are_the_training_pairs(toy, scale) -> None:
    cfg = _cfg(toy, scale)
    latents, periodic, factors = pair_latents(cfg, 2)
    assert not periodic.any() and len(factors) == 10
    pairs = PairBatches(load_image_dataset(toy["train"]), NoiseLaw("normal", scale=scale), 8, 0)
    for k in range(2):
        batch = pairs[k]  # what the 3DIdent source trains on at step k
        assert torch.equal(latents["snapped"][0][k], batch["z"])
        assert torch.equal(latents["snapped"][1][k], batch["z_tilde"])
        query, query_tilde = pairs.sample_latents(k)
        assert torch.equal(latents["exact"][0][k], query)
        assert torch.equal(latents["exact"][1][k], query_tilde)


def test_pull_is_the_curvature_of_the_loss_at_a_missing_factor(toy) -> None:
    latents, _, _ = pair_latents(_cfg(toy), 3)
    z, z_tilde = latents["snapped"]
    kept, dropped, scale = [0, 1, 2, 6, 7, 8, 9], [3, 4, 5], 2.0
    pull = oracle_pull(z, z_tilde, InfoNCE("lp", p=2.0), kept, dropped, scale)

    # Reference: the plain InfoNCE of -||a - b||^2, differentiated twice by autograd at eps = 0.
    eps = torch.zeros((), dtype=torch.float64, requires_grad=True)
    total = 0.0
    for a, b in zip(z, z_tilde, strict=True):
        a, b = a.double(), b.double()
        fa = torch.cat([a[:, kept] * scale, a[:, dropped] * eps], dim=1)
        fb = torch.cat([b[:, kept] * scale, b[:, dropped] * eps], dim=1)
        logits = -((fa[:, None, :] - fb[None, :, :]) ** 2).sum(-1)
        total = total + torch.nn.functional.cross_entropy(logits, torch.arange(len(a))) / len(z)
    (first,) = torch.autograd.grad(total, eps, create_graph=True)
    (second,) = torch.autograd.grad(first, eps)
    assert float(first.detach()) == pytest.approx(0.0, abs=1e-12)  # a saddle: no first-order pull
    assert pull > 0 and pull == pytest.approx(-float(second), rel=1e-4)


def test_tight_exact_positives_leave_nothing_to_reward(toy) -> None:
    # 8 pairs in 7 dimensions, z~ within about 0.01 * sqrt(7) of z: the seven kept factors tell
    # every positive from the negatives, so a larger scale drives the loss to 0 without the rest.
    rows = {r.pairing: r for r in oracle_rows(_cfg(toy, scale=0.01), batches=4)}
    exact = rows["exact"]
    assert exact.full < 1e-3 and exact.dropped < 1e-3 and abs(exact.reward) < 1e-3
    assert exact.distance == pytest.approx(0.01 * math.sqrt(10), rel=0.15)
    # Snapped to 200 images in ten dimensions, the same pairs are far apart and every factor
    # counts: dropping three raises the loss, and the full oracle beats a constant encoder.
    snapped = rows["snapped"]
    assert snapped.distance > 10 * exact.distance
    assert snapped.full < snapped.dropped < snapped.chance
    assert snapped.reward > 0.05
    assert snapped.chance == pytest.approx(math.log(8))


def test_objective_command_prints_both_pairings(toy, tmp_path, capsys) -> None:
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(image_config(toy)))
    out = tmp_path / "objective.md"
    args = ["threedident", "objective", str(config), "--batches", "2", "--drop", "pos_x,hue_spot"]
    assert main([*args, "--set", "train.batch_size=16", "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert "without pos_x, hue_spot" in rows[0]
    assert [r.split("|")[2].strip() for r in rows[2:]] == ["snapped", "exact"]
    assert all("2 × 16" in r for r in rows[2:])
    diagonal = [
        "--set",
        "latent.conditional.scale=[0.2, 0.2, 0.2, 0.05, 0.05, 0.05, 0.2, 0.2, 0.2, 0.2]",
    ]
    assert main([*args, *diagonal, "--out", str(out)]) == 0
    assert "normal(scale=[0.2, 0.2, 0.2, 0.05, 0.05, 0.05, 0.2, 0.2, 0.2, 0.2])" in out.read_text()


def test_objective_command_refuses_bad_input(toy, tmp_path, capsys) -> None:
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(image_config(toy)))
    assert main(["threedident", "objective", str(config), "--drop", "rot_delta"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("clinvert: error: --drop: factors must be among pos_x") and "\n" not in err
    )
    assert main(["threedident", "objective", str(config), "--batches", "0"]) == 2
    assert "--batches: must be an integer >= 1" in capsys.readouterr().err
    assert main(["threedident", "objective", "examples/box-uniform-laplace0.1__box-l1"]) == 2
    assert "data.source: the oracle needs a 3DIdent config" in capsys.readouterr().err
