"""The invertible MLP mixing g."""

from __future__ import annotations

import pytest
import torch

from clinvert.mixing import InvertibleMLP, well_conditioned_matrix


def test_mixing_is_invertible() -> None:
    g = InvertibleMLP(10, layers=3, seed=0)
    z = torch.randn(5000, 10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(g.inverse(g(z)), z, atol=2e-4, rtol=0)


def test_mixing_layers_have_unit_columns_and_bounded_condition_numbers() -> None:
    g = InvertibleMLP(10, layers=4, seed=3)
    torch.testing.assert_close(g.weights.norm(dim=1), torch.ones(4, 10))
    # The paper's rule keeps the best of 25000 draws per layer. For 10x10 matrices with unit columns
    # the median condition number is about 28 and the best of 25000 lies near 4 (measured 3.6-4.2).
    assert all(1.0 <= c < 6.0 for c in g.condition_numbers)


def _conds(weights: str, trials: int = 2000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if weights == "uniform":
        raw = 2 * torch.rand(trials, 10, 10, generator=gen, dtype=torch.float64) - 1
    else:
        raw = torch.randn(trials, 10, 10, generator=gen, dtype=torch.float64)
    return torch.linalg.cond(raw / raw.norm(dim=-2, keepdim=True))


@pytest.mark.parametrize("weights", ["uniform", "normal"])
def test_condition_threshold_rejects_ill_conditioned_draws(weights: str) -> None:
    conds = _conds(weights)
    # The same generator stream: the first quantile-0.1 pick and the best draw of the same 2000.
    first = well_conditioned_matrix(
        10, torch.Generator().manual_seed(0), 0.1, cond_trials=2000, weights=weights
    )
    best = well_conditioned_matrix(
        10, torch.Generator().manual_seed(0), 0.0, cond_trials=2000, weights=weights
    )
    assert float(torch.linalg.cond(first)) <= float(torch.quantile(conds, 0.1)) + 1e-9
    assert float(torch.linalg.cond(best)) == pytest.approx(float(conds.min()), rel=1e-9)


def test_mixing_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="mixing.cond_quantile"):
        InvertibleMLP(4, 2, cond_quantile=-0.1)
    with pytest.raises(ValueError, match="mixing.weights"):
        InvertibleMLP(4, 2, weights="laplace")
    with pytest.raises(ValueError, match="mixing.cond_trials"):
        InvertibleMLP(4, 2, cond_trials=0)


def test_mixing_buffers_are_not_shared_with_the_cache() -> None:
    a = InvertibleMLP(6, 2, seed=1)
    a.weights.mul_(0)
    b = InvertibleMLP(6, 2, seed=1)
    assert float(b.weights.abs().sum()) > 0


def test_mixing_is_frozen_and_seeded() -> None:
    a, b, c = InvertibleMLP(6, 3, seed=5), InvertibleMLP(6, 3, seed=5), InvertibleMLP(6, 3, seed=6)
    assert not any(p.requires_grad for p in a.parameters())
    torch.testing.assert_close(a.weights, b.weights)
    assert not torch.allclose(a.weights, c.weights)


def test_mixing_is_nonlinear() -> None:
    g = InvertibleMLP(10, layers=3, seed=0)
    z = torch.randn(100, 10)
    assert not torch.allclose(g(2 * z), 2 * g(z), atol=1e-3) or not torch.allclose(g(-z), -g(z))


@pytest.mark.parametrize("quantile", [0.0, 0.2])
def test_chunked_draws_pick_the_same_matrix_and_leave_the_generator_alike(
    quantile: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    import clinvert.mixing as mixing

    def pick() -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(4)
        w = well_conditioned_matrix(5, gen, quantile, cond_trials=300)
        return w, torch.rand(3, generator=gen)

    whole = pick()
    monkeypatch.setattr(mixing, "_CHUNK_ENTRIES", 25 * 7)  # 7 matrices per chunk, a ragged tail
    chunked = pick()
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=0)
    torch.testing.assert_close(chunked[1], whole[1], rtol=0, atol=0)


def _first_quartile_mixing(dim: int, layers: int, seed: int) -> torch.Tensor:
    """The mixing rule clinvert used before the paper's (written out here as it was)."""
    gen = torch.Generator().manual_seed(seed)
    mats = []
    for _ in range(layers):
        cand = torch.randn(1000, dim, dim, generator=gen, dtype=torch.float64)
        cand = cand / cand.norm(dim=-2, keepdim=True)
        cond = torch.linalg.cond(cand)
        mats.append(cand[int(torch.nonzero(cond <= torch.quantile(cond, 0.25))[0, 0])])
    return torch.stack(mats).to(torch.float32)


def test_old_run_directories_rebuild_the_mixing_they_were_trained_with(tmp_path) -> None:
    import yaml

    from clinvert.config import load_config, read_run_config, validate_config
    from clinvert.train import build_experiment

    data = load_config(None, ["latent.dim=6"]).to_dict()
    data["mixing"] = {"layers": 3, "seed": 2, "cond_quantile": 0.25, "cond_trials": 1000}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))  # no `weights`: an old run
    cfg = validate_config(read_run_config(tmp_path))
    assert cfg.mixing.weights == "normal"
    exp = build_experiment(cfg, torch.device("cpu"))
    torch.testing.assert_close(exp.mixing.weights, _first_quartile_mixing(6, 3, 2), rtol=0, atol=0)
    # A config that names its draws keeps them.
    data["mixing"]["weights"] = "uniform"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    assert validate_config(read_run_config(tmp_path)).mixing.weights == "uniform"
