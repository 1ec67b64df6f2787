"""The invertible MLP mixing g."""

from __future__ import annotations

import torch

from clinvert.mixing import InvertibleMLP, well_conditioned_matrix


def test_mixing_is_invertible() -> None:
    g = InvertibleMLP(10, layers=3, seed=0)
    z = torch.randn(5000, 10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(g.inverse(g(z)), z, atol=2e-4, rtol=0)


def test_mixing_layers_have_unit_columns_and_bounded_condition_numbers() -> None:
    g = InvertibleMLP(10, layers=4, seed=3)
    torch.testing.assert_close(g.weights.norm(dim=1), torch.ones(4, 10))
    # Every layer is at most the first quartile of random condition numbers, and the first quartile
    # of 10x10 Gaussian matrices with unit columns lies well below 50.
    assert all(1.0 <= c < 50.0 for c in g.condition_numbers)


def test_condition_threshold_rejects_ill_conditioned_draws() -> None:
    gen = torch.Generator().manual_seed(0)
    candidates = torch.randn(1000, 10, 10, generator=gen, dtype=torch.float64)
    candidates = candidates / candidates.norm(dim=-2, keepdim=True)
    median = float(torch.linalg.cond(candidates).median())
    w = well_conditioned_matrix(10, torch.Generator().manual_seed(0), cond_quantile=0.1)
    assert float(torch.linalg.cond(w)) < median


def test_mixing_is_frozen_and_seeded() -> None:
    a, b, c = InvertibleMLP(6, 3, seed=5), InvertibleMLP(6, 3, seed=5), InvertibleMLP(6, 3, seed=6)
    assert not any(p.requires_grad for p in a.parameters())
    torch.testing.assert_close(a.weights, b.weights)
    assert not torch.allclose(a.weights, c.weights)


def test_mixing_is_nonlinear() -> None:
    g = InvertibleMLP(10, layers=3, seed=0)
    z = torch.randn(100, 10)
    assert not torch.allclose(g(2 * z), 2 * g(z), atol=1e-3) or not torch.allclose(g(-z), -g(z))
