"""The mixing g for synthetic data: an invertible, frozen MLP with controlled conditioning.

g(z) = W_L a(W_{L-1} ... a(W_1 z)), with square bias-free W_l, a = LeakyReLU(0.2) between layers and
none after the last. Every W_l has unit-norm columns and is well conditioned: for each layer we draw
``cond_trials`` random matrices, take the ``cond_quantile`` quantile of their condition numbers as a
threshold, and keep the first draw under it (the paper's rejection rule).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NEGATIVE_SLOPE = 0.2


def _unit_columns(w: Tensor) -> Tensor:
    return w / w.norm(dim=-2, keepdim=True)


def well_conditioned_matrix(
    dim: int, generator: torch.Generator, cond_quantile: float = 0.25, cond_trials: int = 1000
) -> Tensor:
    """A random [dim, dim] matrix with unit-norm columns whose condition number is at most the
    ``cond_quantile`` quantile of ``cond_trials`` random draws (float64, on the CPU)."""
    candidates = _unit_columns(
        torch.randn(cond_trials, dim, dim, generator=generator, dtype=torch.float64)
    )
    cond = torch.linalg.cond(candidates)
    threshold = torch.quantile(cond, cond_quantile)
    first_ok = int(torch.nonzero(cond <= threshold)[0, 0])
    return candidates[first_ok]


class InvertibleMLP(nn.Module):
    """The frozen invertible MLP g: R^n -> R^n.

    Args:
        dim: latent dimension n.
        layers: number of linear layers L (>= 1).
        seed: seed of the weights (independent of the training seed, so that all seeds of a table
            row can share one mixing when wanted).
        cond_quantile: quantile of random condition numbers that a layer must not exceed.
        cond_trials: number of random draws behind that quantile.

    Example:
        >>> g = InvertibleMLP(10, layers=3, seed=0)
        >>> z = torch.randn(5, 10)
        >>> torch.allclose(g.inverse(g(z)), z, atol=1e-4)
        True
    """

    def __init__(
        self,
        dim: int,
        layers: int = 3,
        seed: int = 0,
        cond_quantile: float = 0.25,
        cond_trials: int = 1000,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"mixing.layers must be >= 1, got {layers}")
        if not 0.0 < cond_quantile <= 1.0:
            raise ValueError(f"mixing.cond_quantile must be in (0, 1], got {cond_quantile}")
        generator = torch.Generator().manual_seed(seed)
        weights = [
            well_conditioned_matrix(dim, generator, cond_quantile, cond_trials)
            for _ in range(layers)
        ]
        self.register_buffer("weights", torch.stack(weights).to(torch.float32))
        self.requires_grad_(False)

    @property
    def condition_numbers(self) -> list[float]:
        """Condition number of every layer's weight matrix."""
        return [float(c) for c in torch.linalg.cond(self.weights.double())]

    def forward(self, z: Tensor) -> Tensor:
        """x = g(z) for z [B, n]."""
        x = z
        last = len(self.weights) - 1
        for i, w in enumerate(self.weights):
            x = x @ w.T
            if i < last:
                x = nn.functional.leaky_relu(x, NEGATIVE_SLOPE)
        return x

    def inverse(self, x: Tensor) -> Tensor:
        """z = g^{-1}(x) for x [B, n] (exact up to floating point)."""
        z = x.double()
        for i, w in enumerate(reversed(self.weights.double())):
            if i > 0:
                z = torch.where(z >= 0, z, z / NEGATIVE_SLOPE)
            z = torch.linalg.solve(w, z.T).T
        return z.to(x.dtype)
