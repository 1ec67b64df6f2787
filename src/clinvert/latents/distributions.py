"""Marginals p(z) and conditionals p(z~ | z) of the latent process, sampled in torch.

Everything here takes an explicit ``torch.Generator`` and samples on the device of its inputs (or the
device given), so a run is reproducible and never touches the global RNG.

* Noise laws (``normal``, ``laplace``, ``gennorm``) are centred additive noise with a ``scale``.
* On the sphere a noisy point is projected back onto it; on the box every coordinate that falls out
  is resampled until it lies inside (the product of truncated 1-D laws); on R^n noise is added as is.
* The von Mises-Fisher law uses Wood's (1994) rejection sampler, in float64.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BeforeValidator
from torch import Tensor

from clinvert.latents.spaces import Box, Space, Sphere
from clinvert.registry import CONDITIONALS, MARGINALS
from clinvert.spec import LawSpec, PositiveFloat

#: Rejection rounds before giving up on keeping a box conditional inside the box.
MAX_TRUNCATION_ROUNDS = 1000
#: Candidates drawn per pending element in one round of a vectorised rejection sampler.
_OVERSAMPLE = 4


# --------------------------------------------------------------------------------------------------
# Scalar laws with explicit generators
# --------------------------------------------------------------------------------------------------
def _rejection_fill(
    num: int,
    propose,  # Callable[[int], tuple[Tensor, Tensor]]: k -> (candidates [k], accepted [k])
    dtype: torch.dtype,
    device: torch.device,
    max_rounds: int = 10_000,
) -> Tensor:
    """Fill ``num`` values from a vectorised rejection sampler ``propose``."""
    out = torch.empty(num, dtype=dtype, device=device)
    filled = 0
    for _ in range(max_rounds):
        if filled >= num:
            return out
        candidates, accepted = propose(_OVERSAMPLE * (num - filled) + 8)
        kept = candidates[accepted][: num - filled]
        out[filled : filled + kept.numel()] = kept
        filled += kept.numel()
    if filled >= num:
        return out
    raise RuntimeError("rejection sampler did not converge; this is a bug, please report it")


def sample_gamma(
    shape: float,
    num: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Draw ``num`` samples of Gamma(shape, 1) (Marsaglia and Tsang, 2000), with an explicit generator.

    For ``shape < 1`` the boost Gamma(a) = Gamma(a + 1) * U^(1/a) is used.
    """
    if not shape > 0:
        raise ValueError(f"gamma shape must be > 0, got {shape}")
    device = torch.device(device)
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)

    def propose(k: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(k, generator=generator, device=device, dtype=dtype)
        u = torch.rand(k, generator=generator, device=device, dtype=dtype)
        v = (1.0 + c * x) ** 3
        ok = v > 0
        log_v = torch.log(torch.where(ok, v, torch.ones_like(v)))
        accept = ok & (torch.log1p(-u) < 0.5 * x * x + d - d * v + d * log_v)
        return d * v, accept

    g = _rejection_fill(num, propose, dtype, device)
    if boost:
        u = 1.0 - torch.rand(num, generator=generator, device=device, dtype=dtype)  # (0, 1]
        g = g * u ** (1.0 / shape)
    return g


def sample_beta_symmetric(
    a: float, num: int, generator: torch.Generator | None, device: torch.device | str
) -> Tensor:
    """Draw ``num`` samples of Beta(a, a) in float64 as G1 / (G1 + G2)."""
    g1 = sample_gamma(a, num, generator, device)
    g2 = sample_gamma(a, num, generator, device)
    return g1 / (g1 + g2)


def normal_noise(shape: tuple[int, ...], scale: float, generator, device) -> Tensor:
    """Centred Normal noise with standard deviation ``scale``."""
    return scale * torch.randn(shape, generator=generator, device=device)


def laplace_noise(shape: tuple[int, ...], scale: float, generator, device) -> Tensor:
    """Centred Laplace noise with scale ``scale`` (density exp(-|x|/scale) / (2 scale))."""
    exponential = -torch.log1p(-torch.rand(shape, generator=generator, device=device))
    sign = torch.where(torch.rand(shape, generator=generator, device=device) < 0.5, -1.0, 1.0)
    return scale * sign * exponential


def gennorm_noise(shape: tuple[int, ...], beta: float, scale: float, generator, device) -> Tensor:
    """Centred generalised normal noise, density proportional to exp(-|x / scale|^beta).

    If X has this law then |X / scale|^beta ~ Gamma(1 / beta, 1); beta = 2 is Normal(scale / sqrt 2),
    beta = 1 is Laplace(scale).
    """
    num = math.prod(shape)
    g = sample_gamma(1.0 / beta, num, generator, device).to(torch.float32).reshape(shape)
    sign = torch.where(torch.rand(shape, generator=generator, device=device) < 0.5, -1.0, 1.0)
    return scale * sign * g ** (1.0 / beta)


# --------------------------------------------------------------------------------------------------
# von Mises-Fisher
# --------------------------------------------------------------------------------------------------
def _sample_vmf_cosine(
    num: int, dim: int, kappa: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Wood's rejection sampler for w = mu^T z~ under vMF(kappa) on S^{dim-1}, float64 [num]."""
    m1 = dim - 1.0
    # b = (-2 kappa + sqrt(4 kappa^2 + m1^2)) / m1, written without cancellation for large kappa.
    b = m1 / (2.0 * kappa + math.sqrt(4.0 * kappa * kappa + m1 * m1))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + m1 * math.log1p(-x0 * x0) if x0 < 1 else kappa * x0

    def propose(k: int) -> tuple[Tensor, Tensor]:
        beta = sample_beta_symmetric(m1 / 2.0, k, generator, device)
        w = (1.0 - (1.0 + b) * beta) / (1.0 - (1.0 - b) * beta)
        u = 1.0 - torch.rand(k, generator=generator, device=device, dtype=torch.float64)
        accept = kappa * w + m1 * torch.log1p(-x0 * w) - c >= torch.log(u)
        return w, accept

    return _rejection_fill(num, propose, torch.float64, device)


def sample_vmf(mu: Tensor, kappa: float, generator: torch.Generator | None = None) -> Tensor:
    """Sample one point from the von Mises-Fisher law vMF(mu_i, kappa) for every row of ``mu``.

    Density on S^{n-1}: proportional to exp(kappa * mu^T z). Wood's (1994) algorithm, vectorised over
    the batch and computed in float64 so that kappa from 1e-3 to 1e5 stays accurate.

    Args:
        mu: mean directions [B, n], n >= 2 (rows are normalised here).
        kappa: concentration, > 0.
        generator: torch generator on ``mu``'s device.

    Returns:
        Samples [B, n] on the unit sphere, with ``mu``'s dtype and device.
    """
    if mu.ndim != 2 or mu.shape[1] < 2:
        raise ValueError(f"mu must have shape [B, n] with n >= 2, got {tuple(mu.shape)}")
    if not (math.isfinite(kappa) and kappa > 0):
        raise ValueError(f"kappa must be a finite number > 0, got {kappa}")
    num, dim = mu.shape
    device = mu.device
    mu64 = mu.to(torch.float64)
    mu64 = mu64 / mu64.norm(dim=1, keepdim=True)
    w = _sample_vmf_cosine(num, dim, float(kappa), generator, device)
    # A direction orthogonal to mu, uniform on the great sphere of tangents.
    v = torch.randn(num, dim, generator=generator, device=device, dtype=torch.float64)
    v = v - (v * mu64).sum(dim=1, keepdim=True) * mu64
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    tangent = torch.sqrt(torch.clamp((1.0 - w) * (1.0 + w), min=0.0))
    z = w[:, None] * mu64 + tangent[:, None] * v
    dtype = mu.dtype if mu.dtype.is_floating_point else torch.float32
    return z.to(dtype)


def vmf_mean_cosine(dim: int, kappa: float) -> float:
    """A_n(kappa) = I_{n/2}(kappa) / I_{n/2-1}(kappa) = E[mu^T z~] under vMF(mu, kappa) on S^{n-1}."""
    from scipy.special import ive

    return float(ive(dim / 2.0, kappa) / ive(dim / 2.0 - 1.0, kappa))


# --------------------------------------------------------------------------------------------------
# Marginals and conditionals
# --------------------------------------------------------------------------------------------------
class NoiseLaw:
    """A centred noise law with named parameters: normal{scale}, laplace{scale}, gennorm{beta, scale}.

    ``scale`` is one number (the same law on every coordinate) or one per latent (a diagonal
    law: coordinate ``i`` drawn with ``scale[i]``); a per-latent law draws shapes whose last axis
    has ``len(scale)`` entries.
    """

    def __init__(
        self, name: str, scale: float | Sequence[float] | np.ndarray, beta: float | None = None
    ) -> None:
        if name not in ("normal", "laplace", "gennorm"):
            raise ValueError(f"noise name must be one of normal, laplace, gennorm; got {name!r}")
        per_latent = isinstance(scale, Sequence | np.ndarray) and not isinstance(scale, str)
        scales = tuple(float(v) for v in np.ravel(scale)) if per_latent else (float(scale),)
        if not scales or not all(v > 0 and math.isfinite(v) for v in scales):
            raise ValueError(
                f"{name}.scale must be > 0 (one number or one per latent), got {scale}"
            )
        if name == "gennorm" and not (beta is not None and beta > 0):
            raise ValueError(f"gennorm.beta must be > 0, got {beta}")
        self.name, self.beta = name, beta
        self.scale: float | tuple[float, ...] = scales if per_latent else scales[0]

    @property
    def per_latent(self) -> bool:
        """Whether the law has one scale per latent (a diagonal law)."""
        return isinstance(self.scale, tuple)

    def scales(self, dim: int) -> np.ndarray:
        """The scale of each of ``dim`` coordinates (float64 [dim]).

        Raises:
            ValueError: a per-latent law whose number of scales is not ``dim``.
        """
        if not self.per_latent:
            return np.full(dim, float(self.scale))
        if len(self.scale) != dim:
            raise ValueError(f"{self.name}.scale has {len(self.scale)} entries for {dim} latents")
        return np.asarray(self.scale, dtype=np.float64)

    def sample(self, shape: tuple[int, ...], generator, device) -> Tensor:
        """Draw centred noise of the given shape."""
        if not self.per_latent:
            return self._draw(shape, float(self.scale), generator, device)
        scale = torch.as_tensor(self.scales(shape[-1]), dtype=torch.float32, device=device)
        return self._draw(shape, 1.0, generator, device) * scale

    def _draw(self, shape: tuple[int, ...], scale: float, generator, device) -> Tensor:
        if self.name == "normal":
            return normal_noise(shape, scale, generator, device)
        if self.name == "laplace":
            return laplace_noise(shape, scale, generator, device)
        return gennorm_noise(shape, float(self.beta), scale, generator, device)

    def __repr__(self) -> str:
        beta = f", beta={self.beta}" if self.name == "gennorm" else ""
        scale = list(self.scale) if self.per_latent else self.scale
        return f"{self.name}(scale={scale}{beta})"


def truncated_add(
    centre: Tensor, noise: NoiseLaw, box: Box, generator: torch.Generator | None
) -> Tensor:
    """centre + noise, every coordinate resampled until it lies in ``box`` (truncated law).

    Each round redraws only the coordinates still outside (a few per cent of them after the first
    round), so the cost is about one draw of the noise instead of one per round. A per-latent law
    redraws whole rows of noise and keeps the coordinates that were outside, so that each
    coordinate keeps its own scale.
    """
    out = centre + noise.sample(tuple(centre.shape), generator, centre.device)
    if noise.per_latent:
        for _ in range(MAX_TRUNCATION_ROUNDS):
            outside = ~box.inside(out)
            if not bool(outside.any()):
                return out
            fresh = centre + noise.sample(tuple(centre.shape), generator, centre.device)
            out = torch.where(outside, fresh, out)
    else:
        flat_out, flat_centre = out.view(-1), centre.reshape(-1)
        todo = torch.nonzero(~box.inside(flat_out)).squeeze(1)
        for _ in range(MAX_TRUNCATION_ROUNDS):
            if todo.numel() == 0:
                return out
            fresh = flat_centre[todo] + noise.sample((todo.numel(),), generator, centre.device)
            flat_out[todo] = fresh
            todo = todo[~box.inside(fresh)]
    raise ValueError(
        f"{noise!r} is too wide for the box [{box.low}, {box.high}]: coordinates still outside "
        f"after {MAX_TRUNCATION_ROUNDS} resampling rounds; use a smaller scale"
    )


def perturb(z: Tensor, noise: NoiseLaw, space: Space, generator: torch.Generator | None) -> Tensor:
    """z + noise kept in ``space``: projected on the sphere, truncated in the box, as is in R^n."""
    if isinstance(space, Box):
        return truncated_add(z, noise, space, generator)
    return space.project(z + noise.sample(tuple(z.shape), generator, z.device))


class Marginal(ABC):
    """A marginal law p(z) on a space."""

    name: str = ""

    @abstractmethod
    def sample(
        self, space: Space, num: int, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        """Draw ``num`` latents [num, space.dim]."""


class UniformMarginal(Marginal):
    """The uniform law on a bounded space (sphere or box)."""

    name = "uniform"

    def sample(self, space, num, generator, device):
        return space.uniform(num, generator, device)

    def __repr__(self) -> str:
        return "uniform()"


class NoiseMarginal(Marginal):
    """A noise law around a fixed location: 0 in R^n, the box centre (truncated), e_1 on the sphere.

    On the sphere the location is the first basis vector, so the projected law is not uniform.
    """

    def __init__(self, law: NoiseLaw) -> None:
        self.law = law
        self.name = law.name

    def sample(self, space, num, generator, device):
        loc = torch.zeros(num, space.dim, device=device)
        if isinstance(space, Sphere):
            loc[:, 0] = 1.0
        elif isinstance(space, Box):
            loc.fill_(space.centre)
        return perturb(loc, self.law, space, generator)

    def __repr__(self) -> str:
        return repr(self.law)


class Conditional(ABC):
    """A conditional law p(z~ | z) on a space: the positive partner of z."""

    name: str = ""

    @abstractmethod
    def sample(self, space: Space, z: Tensor, generator: torch.Generator | None) -> Tensor:
        """Draw one z~ for every row of ``z`` [B, dim]."""


class VMFConditional(Conditional):
    """von Mises-Fisher around z on the sphere, concentration ``kappa``."""

    name = "vmf"

    def __init__(self, kappa: float) -> None:
        if not kappa > 0:
            raise ValueError(f"conditional.kappa must be > 0, got {kappa}")
        self.kappa = float(kappa)

    def sample(self, space, z, generator):
        if not isinstance(space, Sphere):
            raise ValueError(f"conditional vmf is only defined on the sphere, got {space.name}")
        return sample_vmf(z, self.kappa, generator)

    def __repr__(self) -> str:
        return f"vmf(kappa={self.kappa})"


class NoiseConditional(Conditional):
    """z + noise, kept in the space (projected on the sphere, truncated in the box)."""

    def __init__(self, law: NoiseLaw) -> None:
        self.law = law
        self.name = law.name

    def sample(self, space, z, generator):
        return perturb(z, self.law, space, generator)

    def __repr__(self) -> str:
        return repr(self.law)


# --------------------------------------------------------------------------------------------------
# Config sections and registrations
# --------------------------------------------------------------------------------------------------
def _check_scale(value: Any) -> float | list[float]:
    """A noise law's ``scale``: one finite number > 0, or a non-empty list of them."""
    items = value if isinstance(value, list) else [value]
    ok = bool(items) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in items
    )
    if not ok:
        raise ValueError("must be a number > 0 or a list of numbers > 0 (one per latent)")
    return [float(v) for v in value] if isinstance(value, list) else float(value)


#: A noise law's scale: one number, or one per latent (a list of ``latent.dim`` numbers).
Scale = Annotated[Any, BeforeValidator(_check_scale)]


class UniformSpec(LawSpec):
    """Uniform marginal (sphere or box only)."""

    name: Literal["uniform"]


class NormalSpec(LawSpec):
    """Normal law with standard deviation ``scale``."""

    name: Literal["normal"]
    scale: Scale


class LaplaceSpec(LawSpec):
    """Laplace law with scale ``scale``."""

    name: Literal["laplace"]
    scale: Scale


class GennormSpec(LawSpec):
    """Generalised normal law, density proportional to exp(-|x / scale|^beta)."""

    name: Literal["gennorm"]
    beta: PositiveFloat
    scale: Scale


class VMFSpec(LawSpec):
    """von Mises-Fisher conditional with concentration ``kappa`` (sphere only)."""

    name: Literal["vmf"]
    kappa: PositiveFloat


@dataclass(frozen=True)
class Law:
    """A registered marginal or conditional.

    Attributes:
        spec: its config section (a :class:`~clinvert.spec.LawSpec` subclass; fields = parameters).
        build: ``build(**params) -> Marginal | Conditional``.
        spaces: the latent spaces it is defined on (None: every space).
        label: how tables write it (``"vMF"``), with parameter symbols in ``symbols``.
    """

    spec: type[LawSpec]
    build: Callable[..., Any]
    spaces: tuple[str, ...] | None = None
    label: str = ""
    symbols: dict[str, str] = field(default_factory=dict)


def _noise(cls: type) -> Callable[..., Any]:
    def build(name: str, **params: float) -> Any:
        return cls(NoiseLaw(name, **params))

    return build


_NOISE_SPECS = {"normal": (NormalSpec, "Normal", "σ"), "laplace": (LaplaceSpec, "Laplace", "λ")}
MARGINALS.register(
    "uniform", Law(UniformSpec, lambda: UniformMarginal(), ("sphere", "box"), "Uniform")
)
CONDITIONALS.register(
    "vmf", Law(VMFSpec, lambda kappa: VMFConditional(kappa), ("sphere",), "vMF", {"kappa": "κ"})
)
for _name, (_spec, _label, _symbol) in _NOISE_SPECS.items():
    for _registry, _cls in ((MARGINALS, NoiseMarginal), (CONDITIONALS, NoiseConditional)):
        _registry.register(
            _name,
            Law(_spec, partial(_noise(_cls), _name), None, _label, {"scale": _symbol}),
        )
for _registry, _cls in ((MARGINALS, NoiseMarginal), (CONDITIONALS, NoiseConditional)):
    _registry.register(
        "gennorm",
        Law(GennormSpec, partial(_noise(_cls), "gennorm"), None, "GenNorm", {"beta": "β"}),
    )


def make_marginal(name: str, **params: float) -> Marginal:
    """Build a marginal from its config name and parameters (registry ``MARGINALS``)."""
    return MARGINALS.get(name).build(**params)


def make_conditional(name: str, **params: float) -> Conditional:
    """Build a conditional from its config name and parameters (registry ``CONDITIONALS``)."""
    return CONDITIONALS.get(name).build(**params)
