"""Latent spaces: where z lives, how to sample it uniformly and how to project back onto it.

A space knows its support (``contains``), how to draw uniform samples (``uniform``) and how to map a
point that left the support back onto it (``project``; only the sphere has a projection, the box keeps
samples inside by truncated resampling in :mod:`clinvert.latents.distributions`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from clinvert.registry import SPACES


class Space(ABC):
    """A latent space of dimension ``dim``."""

    name: str = ""

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"latent.dim must be >= 1, got {dim}")
        self.dim = dim

    @abstractmethod
    def contains(self, z: Tensor) -> Tensor:
        """Boolean mask [B] telling which rows of ``z`` [B, dim] lie in the space."""

    def uniform(self, num: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """Draw ``num`` points uniformly from the space (float32 [num, dim])."""
        raise ValueError(f"latent.marginal: uniform is not defined on the {self.name} space")

    def project(self, z: Tensor) -> Tensor:
        """Map ``z`` [B, dim] back onto the space (identity where the space has no projection)."""
        return z

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class Sphere(Space):
    """The unit hypersphere S^{dim-1} in R^dim."""

    name = "sphere"

    def contains(self, z: Tensor) -> Tensor:
        return (z.norm(dim=-1) - 1.0).abs() < 1e-4

    def uniform(self, num: int, generator: torch.Generator, device: torch.device) -> Tensor:
        # A standard normal vector is rotation invariant, so its direction is uniform on the sphere.
        z = torch.randn(num, self.dim, generator=generator, device=device)
        return self.project(z)

    def project(self, z: Tensor) -> Tensor:
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class Box(Space):
    """The axis-aligned box [low, high]^dim."""

    name = "box"

    def __init__(self, dim: int, low: float = 0.0, high: float = 1.0) -> None:
        super().__init__(dim)
        if not high > low:
            raise ValueError(f"latent.box must be [low, high] with low < high, got [{low}, {high}]")
        self.low = float(low)
        self.high = float(high)

    @property
    def width(self) -> float:
        """Side length of the box."""
        return self.high - self.low

    @property
    def centre(self) -> float:
        """Centre coordinate of the box (the same in every dimension)."""
        return 0.5 * (self.low + self.high)

    def contains(self, z: Tensor) -> Tensor:
        return ((z >= self.low) & (z <= self.high)).all(dim=-1)

    def inside(self, z: Tensor) -> Tensor:
        """Element-wise mask of coordinates that lie inside [low, high]."""
        return (z >= self.low) & (z <= self.high)

    def uniform(self, num: int, generator: torch.Generator, device: torch.device) -> Tensor:
        u = torch.rand(num, self.dim, generator=generator, device=device)
        return self.low + self.width * u

    def __repr__(self) -> str:
        return f"Box(dim={self.dim}, low={self.low}, high={self.high})"


class Unbounded(Space):
    """All of R^dim."""

    name = "unbounded"

    def contains(self, z: Tensor) -> Tensor:
        return torch.isfinite(z).all(dim=-1)


for _space in (Sphere, Box, Unbounded):
    SPACES.register(_space.name, _space)
