"""R^2 and MCC on maps whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clinvert.metrics import (
    alignment,
    columns_per_factor,
    correlation_matrix,
    knn_r2_per_dim,
    mcc,
    mlp_r2_per_dim,
    r2,
    r2_per_dim,
    random_code_scores,
)


@pytest.fixture
def z() -> np.ndarray:
    return np.random.default_rng(0).uniform(size=(4000, 10))


def signed_permutation(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.eye(n)[rng.permutation(n)] * rng.choice([-1, 1], n) * rng.uniform(0.2, 5.0, n)


def random_rotation(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def test_r2_is_one_for_affine_maps(z) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 10))
    assert r2(z, z @ a + 3.0) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(r2_per_dim(z, z @ a), 1.0, atol=1e-9)


def test_r2_is_held_out_and_low_for_noise(z) -> None:
    noise = np.random.default_rng(2).normal(size=(4000, 50))
    # In-sample, 50 noise features would explain ~50/2000 of the variance; held out it is <= 0.
    assert r2(z, noise) < 0.01


def test_mcc_is_one_for_signed_permutations_with_scaling(z) -> None:
    rng = np.random.default_rng(3)
    assert mcc(z, z @ signed_permutation(10, rng) + 1.0) == pytest.approx(1.0, abs=1e-12)
    assert mcc(z, np.exp(z) @ np.eye(10)[::-1], correlation="spearman") == pytest.approx(1.0)


def test_mcc_is_clearly_below_one_for_a_random_rotation(z) -> None:
    rng = np.random.default_rng(4)
    h = z @ random_rotation(10, rng)
    assert r2(z, h) == pytest.approx(1.0, abs=1e-9)
    assert mcc(z, h) < 0.8


def test_metrics_accept_tensors(z) -> None:
    t = torch.from_numpy(z).float()
    assert mcc(t, t) == pytest.approx(1.0, abs=1e-6)
    assert r2(t, t * 2) == pytest.approx(1.0, abs=1e-6)


def test_constant_columns_count_as_uncorrelated(z) -> None:
    h = z.copy()
    h[:, 0] = 1.0
    assert correlation_matrix(z, h)[0, 0] == 0.0
    assert mcc(z, h) == pytest.approx(0.9, abs=0.01)


def test_metrics_reject_bad_input(z) -> None:
    with pytest.raises(ValueError, match="same number of samples"):
        mcc(z, z[:10])
    with pytest.raises(ValueError, match="shape"):
        r2(z[:, 0], z[:, 0])
    with pytest.raises(ValueError, match="non-finite"):
        r2(z, np.full_like(z, np.nan))
    with pytest.raises(ValueError, match="correlation must be"):
        mcc(z, z, correlation="kendall")


def test_knn_r2_sees_nonlinear_codes_that_the_affine_fit_misses() -> None:
    # z uniform in [-1, 1]^3 and h = z^3 per coordinate: corr(z, z^3) = E z^4 / sqrt(E z^2 E z^6)
    # = (1/5) / sqrt(1/21), so the affine R^2 is 21/25 = 0.84, while z is a smooth function of h.
    # A column of noise in place of z_2 carries nothing: its kNN R^2 is about 0 (or below).
    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 1, size=(4000, 3))
    cubed = z**3
    affine = r2_per_dim(z, cubed)
    np.testing.assert_allclose(affine, 0.84, atol=0.03)
    # measured 0.93-0.94: the neighbours of the sparse tails (|z| near 1) are farther apart
    assert (knn_r2_per_dim(z, cubed) > np.maximum(0.9, affine + 0.05)).all()
    lost = np.column_stack([z[:, 0], z[:, 1], rng.normal(size=4000)])
    knn = knn_r2_per_dim(z, lost)
    assert (knn[:2] > 0.9).all() and knn[2] < 0.05
    with pytest.raises(ValueError, match="k must be"):
        knn_r2_per_dim(z, cubed, k=0)


def test_mlp_r2_reads_a_ten_dimensional_nonlinear_code_that_knn_blurs() -> None:
    # Ten latents uniform in [-1, 1], coded coordinate-wise as z^3 (affine R^2 21/25 = 0.84, see
    # above) and mixed by a rotation, so no single output is one factor. Every z_i is a smooth
    # function of h; an MLP fit on 3000 codes reads it on 1000 others, while kNN's neighbourhoods
    # in ten dimensions average over a wide region. A noise column in place of z_9 reads as ~0.
    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 1, size=(4000, 10))
    mix = random_rotation(10, rng)
    h = (z**3) @ mix
    lost = np.column_stack([z[:, :9] ** 3, rng.normal(size=4000)]) @ mix
    fit, test = slice(0, 3000), slice(3000, 4000)
    mlp = mlp_r2_per_dim(z[fit], h[fit], z[test], h[test], hidden=(64, 64))
    affine = r2_per_dim(z[test], h[test])
    np.testing.assert_allclose(affine, 0.84, atol=0.05)
    assert (mlp > 0.95).all(), mlp  # measured 0.989-0.994
    assert (knn_r2_per_dim(z, h) < mlp - 0.05).all()  # measured 0.68-0.71, below the affine fit
    blind = mlp_r2_per_dim(z[fit], lost[fit], z[test], lost[test], hidden=(64, 64))
    assert (blind[:9] > 0.9).all() and blind[9] < 0.05
    with pytest.raises(ValueError, match="same widths"):
        mlp_r2_per_dim(z[fit], h[fit], z[test, :9], h[test])


def test_columns_per_factor_averages_an_angles_cos_and_sin() -> None:
    factors, periodic = ["a", "b", "c"], np.array([False, True, True])
    # embed_latents' order: the linear factor, then the cosines (b, c), then the sines (b, c)
    cols = [0.9, 0.2, 0.4, 0.6, 0.8]
    assert columns_per_factor(cols, factors, periodic) == pytest.approx(
        {"a": 0.9, "b": 0.4, "c": 0.6}
    )
    assert columns_per_factor([0.1, 0.2, 0.3], factors) == pytest.approx(
        {"a": 0.1, "b": 0.2, "c": 0.3}
    )
    with pytest.raises(ValueError, match="need 5 column scores"):
        columns_per_factor(cols[:4], factors, periodic)


def test_alignment_is_one_for_permutations_and_unmoved_by_dead_outputs(z) -> None:
    rng = np.random.default_rng(6)
    h = z @ signed_permutation(10, rng)
    assert alignment(z, h) == pytest.approx(1.0, abs=1e-9)
    # monotone maps per dimension are aligned for Spearman
    assert alignment(z, np.exp(3 * z), correlation="spearman") == pytest.approx(1.0, abs=1e-9)
    # constant and pure-noise outputs weigh (almost) nothing: noise of N samples explains ~K/N
    padded = np.c_[h, np.ones(len(z)), rng.normal(size=(len(z), 5))]
    assert alignment(z, padded) == pytest.approx(1.0, abs=0.01)


def test_alignment_is_zero_for_a_45_degree_rotation() -> None:
    # h = (z1 + z2, z2 - z1) / sqrt 2: each output splits its variance 1/2 : 1/2 (entropy log 2);
    # the sample correlation of the independent z1, z2 (~ 1/sqrt N) perturbs the shares by ~1e-2
    z = np.random.default_rng(7).uniform(size=(4000, 2))
    c = np.sqrt(0.5)
    h = z @ np.array([[c, c], [-c, c]])
    assert alignment(z, h) == pytest.approx(0.0, abs=1e-3)
    assert mcc(z, h) == pytest.approx(c, abs=0.03)


def test_random_codes_fool_mcc_with_many_outputs_but_not_alignment() -> None:
    """With 3 latents, the MCC of a random linear code rises with its width (the matching picks the
    best of more random directions); its alignment does not move."""
    z = np.random.default_rng(8).uniform(size=(2000, 3))
    narrow = random_code_scores(z, outputs=3, trials=40, seed=0)
    wide = random_code_scores(z, outputs=10, trials=40, seed=0)
    assert narrow["mcc"].shape == (40,) and wide["alignment"].shape == (40,)
    assert wide["mcc"].mean() > narrow["mcc"].mean() + 0.1
    assert wide["mcc"].mean() > 0.85
    # the standard error of a 40-trial mean of alignment is about 0.1 / sqrt(40) < 0.02
    assert abs(wide["alignment"].mean() - narrow["alignment"].mean()) < 0.1
    assert wide["alignment"].mean() < 0.6
    again = random_code_scores(z, outputs=10, trials=40, seed=0)
    np.testing.assert_array_equal(again["mcc"], wide["mcc"])
    with pytest.raises(ValueError, match="outputs and trials"):
        random_code_scores(z, outputs=0)


def test_fold_r2_names_a_fold_that_the_affine_r2_only_shows_as_missing() -> None:
    """z_1 held as z_1 * sign(z_0) and z_2 as |z_2|: the affine R² of both is about 0, the folds
    read them at about 1; an affine code (a random mixing) scores about 0 on every fold, its
    targets being uncorrelated with every affine function of independent symmetric latents (the
    held-out R² of such a target is -d/N-ish, sampling noise well under 0.02 at N = 4000)."""
    from clinvert.metrics import fold_r2, r2_per_dim

    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 1, size=(4000, 3))
    folded = np.c_[z[:, 0], z[:, 1] * np.sign(z[:, 0]), np.abs(z[:, 2])]
    folded += 0.01 * rng.normal(size=folded.shape)
    assert (np.abs(r2_per_dim(z, folded)[1:]) < 0.02).all()
    folds = fold_r2(z, folded)
    assert folds.shape == (3, 3) and folds[1, 0] > 0.95 and folds[2, 2] > 0.95
    # the fold of z_1 at z_0 lets z_0 * sign(z_1) be read in part too (sign(z_0 z_1) is in h)
    assert 0.3 < folds[0, 1] < 0.8
    affine = z @ rng.normal(size=(3, 5)) + 0.01 * rng.normal(size=(4000, 5))
    assert np.abs(fold_r2(z, affine)).max() < 0.02


def test_linear_agreement_reads_affine_images_folds_and_noise_as_the_math_says() -> None:
    """Two noisy affine codes of z ~ U[-1, 1]^10 (variance 1/3, noise variance s² = 1/30 per
    output, orthogonal mixings): each whitened direction of one is read from the other at R²
    ((1/3) / (1/3 + s²))² = (10/11)² ≈ 0.826 (the recoverable share of z, times the share of the
    direction that is z). A code holding z_2 as z_2 * sign(z_0) leaves one direction that no
    affine map of an affine code reaches (its best prediction is 0), the others at 1; an affine
    image of a code agrees with it at 1 everywhere."""
    from clinvert.metrics import linear_agreement

    rng = np.random.default_rng(0)
    n, d, s2 = 4000, 10, 1 / 30
    z = rng.uniform(-1, 1, size=(n, d))
    a, b = (np.linalg.qr(rng.normal(size=(d, d)))[0] for _ in range(2))
    h_a = z @ a + np.sqrt(s2) * rng.normal(size=(n, d))
    h_b = z @ b + np.sqrt(s2) * rng.normal(size=(n, d))
    spectrum = linear_agreement(h_a, h_b)
    assert spectrum.shape == (d,) and (np.diff(spectrum) >= 0).all()
    # the mean over directions has a standard error of order d / (N/2) well under 0.01
    assert spectrum.mean() == pytest.approx((10 / 11) ** 2, abs=0.01)
    assert spectrum[0] > 0.75 and spectrum[-1] < 0.9
    folded = z.copy()
    folded[:, 2] = z[:, 2] * np.sign(z[:, 0])
    for spectrum in (linear_agreement(z @ a, folded @ b), linear_agreement(folded @ b, z @ a)):
        assert abs(spectrum[0]) < 0.02 and spectrum[1] > 0.999
    # the worst direction of the folded code is its fold: the projection is ±z_2 * sign(z_0)
    _, directions = linear_agreement(z @ a, folded @ b, return_directions=True)
    worst = (folded @ b - (folded @ b).mean(0)) @ directions[:, 0]
    assert (
        abs(np.corrcoef(worst, folded[:, 2])[0, 1]) > 0.99
    )  # up to the eigenvector's sampling error
    wider = np.c_[h_a @ rng.normal(size=(d, d)) + 3.0, h_a[:, :2]]  # 12 outputs, rank 10
    assert linear_agreement(h_a, wider)[-10:] == pytest.approx(np.ones(10), abs=1e-9)
    assert linear_agreement(wider, h_a) == pytest.approx(np.ones(d), abs=1e-9)
    with pytest.raises(ValueError, match="same number of samples"):
        linear_agreement(h_a, h_b[:10])
    with pytest.raises(ValueError, match="at least 4"):
        linear_agreement(h_a[:3], h_b[:3])


def test_r2_by_bins_splits_the_held_out_error_of_one_fit() -> None:
    """Noise that grows with a covariate shows in the late bins only; the bins' errors add up to
    the overall one (sample-weighted), and a single bin is :func:`r2_per_dim` itself."""
    from clinvert.metrics import r2_per_dim, r2_per_dim_by_bins

    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 1, size=(4000, 3))
    by = np.abs(z[:, 1])
    h = z + rng.normal(size=z.shape) * np.where(by > 0.8, 0.5, 0.02)[:, None]
    edges = (0.0, 0.4, 0.8, 1.0)
    r2s, counts = r2_per_dim_by_bins(z, h, by, edges)
    assert counts.sum() == 2000 and r2s.shape == (3, 3)
    assert (r2s[:2] > 0.95).all() and (r2s[2] < 0.6).all()
    whole = r2_per_dim(z, h)
    weighted = 1 - (counts[:, None] * (1 - r2s)).sum(0) / counts.sum()
    np.testing.assert_allclose(weighted, whole, rtol=0, atol=1e-12)  # one variance for all bins
    single, n = r2_per_dim_by_bins(z, h, by, (0.0, 1.0))
    np.testing.assert_allclose(single[0], whole, rtol=0, atol=1e-12)
    assert n.tolist() == [2000]
    with pytest.raises(ValueError, match="edges"):
        r2_per_dim_by_bins(z, h, by, (0.5, 0.5))
