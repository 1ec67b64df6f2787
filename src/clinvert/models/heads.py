"""Output heads: put the encoder's output into the model's latent space.

* ``sphere``: divide by the norm, times a radius (fixed, or learnable: the cosine InfoNCE optimum has
  r^2 = kappa * tau).
* ``box``: sigmoid times a per-dimension bound (fixed, or learnable), so outputs lie in [0, bound]^d.
* ``unbounded``: identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SphereHead(nn.Module):
    """h -> r * h / ||h||."""

    def __init__(self, dim: int, radius: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        if not radius > 0:
            raise ValueError(f"model.radius must be > 0, got {radius}")
        log_radius = torch.tensor(float(radius)).log()
        if learnable:
            self.log_radius = nn.Parameter(log_radius)
        else:
            self.register_buffer("log_radius", log_radius)

    @property
    def radius(self) -> float:
        """Current radius."""
        return float(self.log_radius.exp())

    def forward(self, h: Tensor) -> Tensor:
        """[B, d] -> [B, d] on the sphere of the current radius."""
        return self.log_radius.exp() * h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class BoxHead(nn.Module):
    """h -> bound * sigmoid(h), per-dimension bound (learnable or fixed)."""

    def __init__(self, dim: int, bound: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        if not bound > 0:
            raise ValueError(f"model.bound must be > 0, got {bound}")
        log_bound = torch.full((dim,), float(bound)).log()
        if learnable:
            self.log_bound = nn.Parameter(log_bound)
        else:
            self.register_buffer("log_bound", log_bound)

    def forward(self, h: Tensor) -> Tensor:
        """[B, d] -> [B, d] in the box [0, bound]."""
        return self.log_bound.exp() * torch.sigmoid(h)


class UnboundedHead(nn.Identity):
    """Leave the output in R^d."""

    def __init__(self, dim: int, **_: object) -> None:
        super().__init__()


HEADS: dict[str, type[nn.Module]] = {
    "sphere": SphereHead,
    "box": BoxHead,
    "unbounded": UnboundedHead,
}
