"""Output heads: put the encoder's output into the model's latent space (registry ``HEADS``).

A head is ``cls(dim, scale, learnable)``: ``scale`` is the radius, the bound or the output scale.

* ``sphere``: divide by the norm, times a radius (fixed, or learnable: the cosine InfoNCE optimum has
  r^2 = kappa * tau).
* ``box``: sigmoid times a per-dimension bound (fixed, or learnable), so outputs lie in [0, bound]^d.
* ``unbounded``: a global scale times h (fixed 1, i.e. the identity, by default; or learnable). The
  encoder could rescale its output anyway, so the model space and the loss's minimisers are
  unchanged; a learnable scale starting small lets a run with a small tau start unsaturated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clinvert.registry import HEADS


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


class UnboundedHead(nn.Module):
    """h -> scale * h in R^d (scale fixed or learnable; scale 1 fixed is the identity)."""

    def __init__(self, dim: int, scale: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"model.scale must be > 0, got {scale}")
        log_scale = torch.tensor(float(scale)).log()
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:  # not in the state dict: checkpoints of fixed-scale runs stay as they were
            self.register_buffer("log_scale", log_scale, persistent=False)
        self.identity = not learnable and scale == 1.0

    def forward(self, h: Tensor) -> Tensor:
        """[B, d] -> [B, d]."""
        return h if self.identity else self.log_scale.exp() * h


HEADS.register("sphere", SphereHead)
HEADS.register("box", BoxHead)
HEADS.register("unbounded", UnboundedHead)
