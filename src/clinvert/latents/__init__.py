"""The generative process in latent space: a space, a marginal p(z) and a conditional p(z~ | z)."""

from __future__ import annotations

import torch
from torch import Tensor

from clinvert.latents.distributions import (
    Conditional,
    Marginal,
    NoiseLaw,
    make_conditional,
    make_marginal,
    sample_gamma,
    sample_vmf,
    vmf_mean_cosine,
)
from clinvert.latents.spaces import SPACES, Box, Space, Sphere, Unbounded


class LatentProcess:
    """Pairs (z, z~): z ~ p(z) on ``space``, z~ ~ p(z~ | z).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> process = LatentProcess(Sphere(10), make_marginal("uniform"), make_conditional("vmf", kappa=1.0))
        >>> z, z_tilde = process.sample_pairs(4, g)
        >>> tuple(z.shape), tuple(z_tilde.shape)
        ((4, 10), (4, 10))
    """

    def __init__(self, space: Space, marginal: Marginal, conditional: Conditional) -> None:
        self.space = space
        self.marginal = marginal
        self.conditional = conditional

    @property
    def dim(self) -> int:
        """Latent dimension n."""
        return self.space.dim

    def sample_marginal(
        self, num: int, generator: torch.Generator | None, device: torch.device | str = "cpu"
    ) -> Tensor:
        """Draw ``num`` latents z [num, n]."""
        return self.marginal.sample(self.space, num, generator, torch.device(device))

    def sample_conditional(self, z: Tensor, generator: torch.Generator | None) -> Tensor:
        """Draw one positive partner z~ for every row of ``z`` [B, n]."""
        return self.conditional.sample(self.space, z, generator)

    def sample_pairs(
        self, num: int, generator: torch.Generator | None, device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """Draw ``num`` positive pairs (z, z~), each [num, n]."""
        z = self.sample_marginal(num, generator, device)
        return z, self.sample_conditional(z, generator)

    def __repr__(self) -> str:
        return f"LatentProcess({self.space!r}, {self.marginal!r}, {self.conditional!r})"


def make_space(name: str, dim: int, box: tuple[float, float] = (0.0, 1.0)) -> Space:
    """Build a space from its config name."""
    cls = SPACES.get(name)
    if issubclass(cls, Box):
        return cls(dim, *box)
    return cls(dim)


__all__ = [
    "Box",
    "Conditional",
    "LatentProcess",
    "Marginal",
    "NoiseLaw",
    "SPACES",
    "Space",
    "Sphere",
    "Unbounded",
    "make_conditional",
    "make_marginal",
    "make_space",
    "sample_gamma",
    "sample_vmf",
    "vmf_mean_cosine",
]
