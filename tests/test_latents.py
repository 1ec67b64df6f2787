"""Statistical tests of the latent process. Tolerances: 6 standard errors of the estimated moment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import gamma as gamma_fn

from clinvert.latents import (
    Box,
    LatentProcess,
    Sphere,
    Unbounded,
    make_conditional,
    make_marginal,
    make_space,
    sample_gamma,
    sample_vmf,
    vmf_mean_cosine,
)

N = 200_000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_mean_close(samples: torch.Tensor, expected: float, sigmas: float = 6.0) -> None:
    x = samples.double().flatten()
    stderr = float(x.std()) / math.sqrt(x.numel())
    assert abs(float(x.mean()) - expected) <= sigmas * stderr + 1e-12, (float(x.mean()), expected)


@pytest.mark.parametrize("kappa", [1e-3, 0.1, 1.0, 10.0, 1e3, 1e5])
@pytest.mark.parametrize("dim", [3, 10])
def test_vmf_mean_resultant_length_matches_bessel_ratio(kappa: float, dim: int) -> None:
    mu = torch.randn(N, dim, generator=gen(1))
    mu = mu / mu.norm(dim=1, keepdim=True)
    z = sample_vmf(mu, kappa, gen(2))
    cosine = (z.double() * mu.double()).sum(1)
    assert_mean_close(cosine, vmf_mean_cosine(dim, kappa))


def test_vmf_samples_lie_on_the_sphere_with_input_dtype() -> None:
    mu = torch.randn(1000, 10, generator=gen(0))
    for kappa in (1e-3, 1.0, 1e5):
        z = sample_vmf(mu, kappa, gen(1))
        assert z.dtype == torch.float32
        torch.testing.assert_close(z.norm(dim=1), torch.ones(1000), atol=1e-6, rtol=0)


def test_vmf_large_kappa_tangent_spread_matches_asymptotics() -> None:
    # For large kappa, 1 - mu.z ~ Gamma((n-1)/2, 1/kappa): mean (n-1) / (2 kappa).
    dim, kappa = 10, 1e5
    mu = torch.zeros(N, dim, dtype=torch.float64)
    mu[:, 0] = 1.0
    z = sample_vmf(mu, kappa, gen(3))
    gap = 1.0 - z[:, 0]
    assert_mean_close(gap, (dim - 1) / (2 * kappa) * (1 - (dim - 3) / (4 * kappa)))


def test_vmf_agrees_with_scipy_for_a_single_mean() -> None:
    dim, kappa, num = 5, 4.0, 20_000
    mu = np.zeros(dim)
    mu[1] = 1.0
    ours = sample_vmf(torch.tensor(mu).expand(num, dim).clone(), kappa, gen(4)).numpy()
    theirs = stats.vonmises_fisher(mu, kappa).rvs(num, random_state=np.random.default_rng(5))
    # The law is determined by the cosine to mu and a uniform tangent direction: compare both.
    assert stats.ks_2samp(ours @ mu, theirs @ mu).pvalue > 1e-3
    assert stats.ks_2samp(ours[:, 0], theirs[:, 0]).pvalue > 1e-3
    np.testing.assert_allclose(ours.mean(0), theirs.mean(0), atol=6 * 1 / math.sqrt(num))


def test_vmf_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(torch.ones(2, 3), 0.0)
    with pytest.raises(ValueError, match="shape"):
        sample_vmf(torch.ones(3), 1.0)


def test_vmf_is_reproducible_with_a_generator() -> None:
    mu = torch.randn(100, 10, generator=gen(0))
    torch.testing.assert_close(sample_vmf(mu, 3.0, gen(7)), sample_vmf(mu, 3.0, gen(7)))


@pytest.mark.parametrize("shape", [0.3, 1.0, 4.5])
def test_gamma_moments(shape: float) -> None:
    x = sample_gamma(shape, N, gen(0))
    assert (x > 0).all()
    assert_mean_close(x, shape)
    assert_mean_close((x - shape) ** 2, shape)


def _noise_variance(name: str, scale: float, beta: float | None = None) -> float:
    if name == "normal":
        return scale**2
    if name == "laplace":
        return 2 * scale**2
    return scale**2 * gamma_fn(3 / beta) / gamma_fn(1 / beta)


@pytest.mark.parametrize(
    "name,params",
    [
        ("normal", {"scale": 0.5}),
        ("laplace", {"scale": 0.5}),
        ("gennorm", {"beta": 3.0, "scale": 0.5}),
    ],
)
def test_unbounded_conditional_noise_moments(name: str, params: dict) -> None:
    process = LatentProcess(
        Unbounded(4), make_marginal("normal", scale=1.0), make_conditional(name, **params)
    )
    z, z_tilde = process.sample_pairs(N // 4, gen(0))
    noise = z_tilde - z
    assert_mean_close(noise, 0.0)
    assert_mean_close(noise**2, _noise_variance(name, **params))


def test_gennorm_kurtosis_is_that_of_beta_three() -> None:
    noise = make_conditional("gennorm", beta=3.0, scale=1.0).sample(
        Unbounded(1), torch.zeros(N, 1), gen(0)
    )
    expected = gamma_fn(5 / 3) * gamma_fn(1 / 3) / gamma_fn(3 / 3) ** 2  # E[x^4] / E[x^2]^2
    ratio = float((noise**4).mean() / (noise**2).mean() ** 2)
    assert abs(ratio - expected) < 0.03


@pytest.mark.parametrize(
    "name,params",
    [
        ("normal", {"scale": 0.3}),
        ("laplace", {"scale": 0.3}),
        ("gennorm", {"beta": 3.0, "scale": 0.3}),
    ],
)
def test_box_conditional_stays_in_the_box(name: str, params: dict) -> None:
    process = LatentProcess(
        Box(10, -1.0, 2.0), make_marginal("uniform"), make_conditional(name, **params)
    )
    z, z_tilde = process.sample_pairs(20_000, gen(0))
    assert process.space.contains(z).all()
    assert process.space.contains(z_tilde).all()


def test_box_conditional_is_the_truncated_law() -> None:
    # From z = low, truncating a symmetric law leaves its one-sided half: E[z~ - low] = E|noise|,
    # which is the scale for Laplace.
    box = Box(1, 0.0, 1.0)
    z = torch.zeros(N, 1)
    z_tilde = make_conditional("laplace", scale=0.05).sample(box, z, gen(0))
    assert_mean_close(z_tilde, 0.05)
    # Far from the walls the law is untouched.
    z_tilde = make_conditional("laplace", scale=0.05).sample(box, torch.full((N, 1), 0.5), gen(1))
    assert_mean_close(z_tilde, 0.5)
    assert_mean_close((z_tilde - 0.5) ** 2, 2 * 0.05**2)


def test_box_conditional_too_wide_for_the_box_fails_clearly() -> None:
    cond = make_conditional("normal", scale=1e6)
    with pytest.raises(ValueError, match="too wide"):
        cond.sample(Box(2, 0.0, 1.0), torch.full((100, 2), 0.5), gen(0))


def test_uniform_marginals_have_the_right_moments() -> None:
    box = make_marginal("uniform").sample(Box(3, -1.0, 3.0), N, gen(0), torch.device("cpu"))
    assert_mean_close(box, 1.0)
    assert_mean_close((box - 1.0) ** 2, 16 / 12)
    sphere = make_marginal("uniform").sample(Sphere(5), N, gen(1), torch.device("cpu"))
    torch.testing.assert_close(sphere.norm(dim=1), torch.ones(N), atol=1e-5, rtol=0)
    assert_mean_close(sphere, 0.0)
    assert_mean_close(sphere**2, 1 / 5)


@pytest.mark.parametrize("name,params", [("normal", {"scale": 0.05}), ("laplace", {"scale": 0.05})])
def test_sphere_noise_conditionals_project_back(name: str, params: dict) -> None:
    process = LatentProcess(Sphere(10), make_marginal("uniform"), make_conditional(name, **params))
    z, z_tilde = process.sample_pairs(10_000, gen(0))
    torch.testing.assert_close(z_tilde.norm(dim=1), torch.ones(10_000), atol=1e-5, rtol=0)
    assert float((z * z_tilde).sum(1).mean()) > 0.9


def test_normal_marginal_on_sphere_is_not_uniform() -> None:
    z = make_marginal("normal", scale=1.0).sample(Sphere(10), N, gen(0), torch.device("cpu"))
    assert float(z[:, 0].mean()) > 0.2  # concentrated around e_1


def test_space_factory_validates() -> None:
    with pytest.raises(ValueError, match="latent.space"):
        make_space("cube", 3)
    with pytest.raises(ValueError, match="low < high"):
        make_space("box", 3, (1.0, 0.0))
    with pytest.raises(ValueError, match="vmf is only defined on the sphere"):
        make_conditional("vmf", kappa=1.0).sample(Box(2), torch.zeros(3, 2), gen(0))


# ----- one scale per latent (a diagonal law) --------------------------------------------------------
SCALES = [0.05, 0.2, 0.5]


@pytest.mark.parametrize(
    "name,params,std_per_scale",
    [
        ("normal", {}, 1.0),
        ("laplace", {}, math.sqrt(2.0)),
        # |X / s|^beta ~ Gamma(1 / beta, 1): Var X = s^2 Gamma(3 / beta) / Gamma(1 / beta)
        ("gennorm", {"beta": 1.5}, math.sqrt(gamma_fn(3 / 1.5) / gamma_fn(1 / 1.5))),
    ],
)
def test_per_latent_scales_draw_each_coordinate_at_its_own_scale(
    name: str, params: dict, std_per_scale: float
) -> None:
    process = LatentProcess(
        Unbounded(3),
        make_marginal("normal", scale=1.0),
        make_conditional(name, scale=SCALES, **params),
    )
    z, z_tilde = process.sample_pairs(N, gen(0))
    for i, s in enumerate(SCALES):
        assert_mean_close(z_tilde[:, i] - z[:, i], 0.0)
        assert_mean_close((z_tilde[:, i] - z[:, i]) ** 2, (s * std_per_scale) ** 2)


def test_per_latent_marginal_is_a_diagonal_law() -> None:
    z = make_marginal("normal", scale=SCALES).sample(Unbounded(3), N, gen(2), torch.device("cpu"))
    for i, s in enumerate(SCALES):
        assert_mean_close(z[:, i] ** 2, s**2)


def test_per_latent_box_conditional_truncates_each_coordinate_at_its_own_scale() -> None:
    # From the box centre each coordinate is Normal(0, s_i) truncated to [-1, 1]: its variance is
    # the truncated normal's (scipy), 0.774 s^2 at s = 0.5, s^2 to 1e-6 at s = 0.05.
    box = Box(3, -1.0, 1.0)
    z_tilde = make_conditional("normal", scale=SCALES).sample(box, torch.zeros(N, 3), gen(3))
    assert box.contains(z_tilde).all()
    for i, s in enumerate(SCALES):
        expected = float(stats.truncnorm(-1 / s, 1 / s, scale=s).var())
        assert_mean_close(z_tilde[:, i] ** 2, expected)


def test_per_latent_scales_are_checked() -> None:
    with pytest.raises(ValueError, match=r"normal\.scale must be > 0"):
        make_conditional("normal", scale=[0.1, -0.2])
    with pytest.raises(ValueError, match=r"normal\.scale must be > 0"):
        make_conditional("normal", scale=[])
    cond = make_conditional("laplace", scale=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"laplace\.scale has 2 entries for 3 latents"):
        cond.sample(Unbounded(3), torch.zeros(4, 3), gen(0))
    assert repr(cond) == "laplace(scale=[0.1, 0.2])"
