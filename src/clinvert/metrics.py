"""Identifiability scores as pure functions of (true latents z, recovered latents h).

* :func:`r2` -- affine identifiability: fit z ~ A h + b by least squares on one half of the samples,
  report R^2 on the other half, averaged over the latent dimensions.
* :func:`mcc` -- permutation identifiability: the |correlation| matrix between z and h, a Hungarian
  matching on it (``scipy.optimize.linear_sum_assignment``), the mean matched |correlation|.
* :func:`knn_r2_per_dim` -- a diagnostic, not a claim of the theory: held-out R^2 of a k-nearest-
  neighbour regression from h to each latent. High kNN R^2 with low affine R^2 means the factor is
  in h, but not linearly; both low means h has lost it.
* :func:`mlp_r2_per_dim` -- the same question with a small MLP fit on a separate (larger) set: in ten
  or more dimensions it reads smooth factors that kNN's wide neighbourhoods miss.
* :func:`fold_r2` -- a diagnostic for codes that hold a factor linearly on each side of another
  factor's middle but flipped between them (a fold): the R^2 of ``z_j * sign(z_k)``.
* :func:`linear_agreement` -- needs no latents: how well an affine map takes one code to another
  (two runs' encoders on the same observations). Codes that each hold the latents affinely are
  affine images of one another; a code that holds one factor folded (or not at all) leaves a
  direction of the other that no affine map reaches, and the worst direction's R^2 shows it.
* :func:`alignment` -- how axis-aligned a code is, whatever its width: 1 when every dimension of h
  that carries latent information depends on one latent alone, lower for mixtures (a rotation).
* :func:`random_code_scores` -- the scores the protocol gives codes that hold the latents linearly
  but in random directions: the chance level an MCC must beat before it says "aligned". With more
  outputs than latents it is high (3 latents, 10 outputs: about 0.9), since the matching picks the
  best of many random directions. :func:`chance_level` summarises them (mean, 95th percentile).

All accept numpy arrays or torch tensors of shape [N, n] (h may have another width).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.linalg import eigh
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score
from sklearn.neighbors import KNeighborsRegressor

ArrayLike = object  # numpy array or torch tensor


def _as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [N, n], got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _pair(
    z: ArrayLike, h: ArrayLike, names: tuple[str, str] = ("z", "h")
) -> tuple[np.ndarray, np.ndarray]:
    z_, h_ = _as_numpy(z, names[0]), _as_numpy(h, names[1])
    if z_.shape[0] != h_.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} need the same number of samples, "
            f"got {z_.shape[0]} and {h_.shape[0]}"
        )
    if z_.shape[0] < 4:
        raise ValueError(f"need at least 4 samples, got {z_.shape[0]}")
    return z_, h_


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out scores' random split of n samples (``seed``): (fit indices, test indices)."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2 :]


def r2_per_dim(z: ArrayLike, h: ArrayLike, seed: int = 0) -> np.ndarray:
    """Held-out R^2 of an affine fit from h to each latent dimension of z, shape [n].

    The samples are split at random (``seed``) into two halves: fit on one, score on the other.
    """
    z_, h_ = _pair(z, h)
    fit, test = _halves(z_.shape[0], seed)
    model = LinearRegression().fit(h_[fit], z_[fit])
    return np.atleast_1d(r2_score(z_[test], model.predict(h_[test]), multioutput="raw_values"))


def knn_r2_per_dim(z: ArrayLike, h: ArrayLike, k: int = 10, seed: int = 0) -> np.ndarray:
    """Held-out R^2 of a k-nearest-neighbour regression from h to each latent of z, shape [n].

    The same random halves as :func:`r2_per_dim` (fit on one, score on the other); h is
    standardised with the fit half's mean and standard deviation, so no output dimension dominates
    the distances. It measures whether each latent can be read from h at all, by any smooth map.
    """
    z_, h_ = _pair(z, h)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    fit, test = _halves(z_.shape[0], seed)
    mean, std = h_[fit].mean(0), h_[fit].std(0)
    hs = (h_ - mean) / np.where(std > 0, std, 1.0)
    model = KNeighborsRegressor(n_neighbors=min(k, len(fit))).fit(hs[fit], z_[fit])
    return np.atleast_1d(r2_score(z_[test], model.predict(hs[test]), multioutput="raw_values"))


def mlp_r2_per_dim(
    z_fit: ArrayLike,
    h_fit: ArrayLike,
    z_test: ArrayLike,
    h_test: ArrayLike,
    hidden: tuple[int, ...] = (256, 256),
    seed: int = 0,
) -> np.ndarray:
    """Held-out R^2 of a small MLP regression from h to each latent of z, shape [n].

    A diagnostic like :func:`knn_r2_per_dim`, for a separate fit set (e.g. the codes of training
    images) and test set: scikit-learn's ``MLPRegressor`` (ReLU, Adam, early stopping on a tenth of
    the fit set, ``seed``) on h standardised with the fit set's mean and standard deviation. In ten
    or more dimensions and a few thousand samples it reads a smooth factor far better than kNN
    (whose neighbourhoods are wide there), so a factor it reads and an affine fit does not is in the
    code, but not linearly.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    zf, hf = _pair(z_fit, h_fit)
    zt, ht = _pair(z_test, h_test)
    if zf.shape[1] != zt.shape[1] or hf.shape[1] != ht.shape[1]:
        raise ValueError(
            f"fit and test sets need the same widths, got z {zf.shape[1]} / {zt.shape[1]} "
            f"and h {hf.shape[1]} / {ht.shape[1]}"
        )
    mean, std = hf.mean(0), hf.std(0)
    std = np.where(std > 0, std, 1.0)
    model = MLPRegressor(
        hidden_layer_sizes=hidden, max_iter=300, early_stopping=True, random_state=seed
    )
    with warnings.catch_warnings():  # a probe at its iteration cap is still a valid lower bound
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit((hf - mean) / std, zf)
    pred = model.predict((ht - mean) / std).reshape(len(zt), -1)
    return np.atleast_1d(r2_score(zt, pred, multioutput="raw_values"))


def r2_per_dim_by_bins(
    z: ArrayLike, h: ArrayLike, by: ArrayLike, edges: ArrayLike, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out R^2 of :func:`r2_per_dim`'s affine fit, per bin of a covariate ``by``.

    The same random halves as :func:`r2_per_dim`; the fit uses the whole fit half, and each test
    sample falls in the bin ``edges[i] <= by < edges[i + 1]`` (the last bin includes its upper
    edge). A bin's R^2 is ``1 - MSE_bin / Var(z)`` with the variance of the whole test half, so the
    bins share one scale and their sample-weighted mean of ``1 - R^2`` is the overall ``1 - R^2``.

    Returns:
        (r2 [n_bins, n], counts [n_bins]); a bin without test samples has NaN R^2.
    """
    z_, h_ = _pair(z, h)
    by_ = np.asarray(by, dtype=np.float64).reshape(-1)
    edges_ = np.asarray(edges, dtype=np.float64).reshape(-1)
    if by_.shape[0] != z_.shape[0]:
        raise ValueError(f"by needs one value per sample, got {by_.shape[0]} for {z_.shape[0]}")
    if edges_.size < 2 or not np.all(np.diff(edges_) > 0):
        raise ValueError(f"edges must be at least two increasing values, got {edges_.tolist()}")
    fit, test = _halves(z_.shape[0], seed)
    model = LinearRegression().fit(h_[fit], z_[fit])
    err = (model.predict(h_[test]) - z_[test]) ** 2
    var = z_[test].var(0)
    which = np.clip(np.searchsorted(edges_, by_[test], side="right") - 1, 0, edges_.size - 2)
    inside = (by_[test] >= edges_[0]) & (by_[test] <= edges_[-1])
    r2s = np.full((edges_.size - 1, z_.shape[1]), np.nan)
    counts = np.zeros(edges_.size - 1, dtype=int)
    for b in range(edges_.size - 1):
        mask = inside & (which == b)
        counts[b] = int(mask.sum())
        if counts[b]:
            r2s[b] = 1.0 - err[mask].mean(0) / np.where(var > 0, var, 1.0)
    return r2s, counts


def fold_r2(z: ArrayLike, h: ArrayLike, seed: int = 0) -> np.ndarray:
    """Held-out R^2 of :func:`r2_per_dim`'s affine fit to folded latents, shape [n, n].

    Entry ``[j, k]`` scores the target ``(z_j - m_j) * sign(z_k - m_k)`` (``m`` the medians): a
    code that holds latent j linearly on each side of latent k's median, but with opposite signs,
    reads it there and not in z_j itself. The diagonal ``[j, j]`` scores ``|z_j - m_j|`` (latent j
    folded at its own median: the code cannot tell z_j from its mirror image). For independent
    latents symmetric about their medians these targets are uncorrelated with every affine function
    of z, so an affine code scores about 0 everywhere (sampling noise of order 1/sqrt(N)) and a high
    entry names the fold that an affine R^2 below 1 hides. Same random halves as :func:`r2_per_dim`.
    """
    z_, h_ = _pair(z, h)
    n = z_.shape[1]
    return r2_per_dim(fold_targets(z_), h_, seed).reshape(n, n)


def fold_targets(z: ArrayLike) -> np.ndarray:
    """The folded latents :func:`fold_r2` scores, shape [N, n * n]: column ``j * n + k`` is
    ``(z_j - m_j) * sign(z_k - m_k)`` (``m`` the medians), column ``j * n + j`` is ``|z_j - m_j|``."""
    z_ = _as_numpy(z, "z")
    centred = z_ - np.median(z_, axis=0)
    side = np.where(centred >= 0, 1.0, -1.0)
    n = z_.shape[1]
    targets = (centred[:, :, None] * side[:, None, :]).reshape(len(z_), n * n)  # [N, j * n + k]
    targets[:, np.arange(n) * (n + 1)] = np.abs(centred)  # the diagonal: |z_j - m_j|
    return targets


def linear_agreement(
    h_a: ArrayLike, h_b: ArrayLike, seed: int = 0, *, return_directions: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Held-out R^2 of an affine fit from code h_a to each whitened direction of code h_b, sorted
    ascending, shape [width of h_b].

    Fit ``h_b ~ A h_a + c`` on one of :func:`r2_per_dim`'s random halves; on the other, the
    generalised eigenvalues of (residual covariance, covariance of h_b) are the unexplained
    fractions of h_b's directions, from the worst-read direction to the best. Invariant to any
    invertible affine map of either code, so two runs that each invert the generator up to an
    affine map agree on every direction (1 minus their noise), while a code holding a factor
    folded, e.g. ``z_j * sign(z_k)`` where the other holds ``z_j``, leaves one direction at about 0
    (its best affine prediction from the other code is 0). Needs no true latents: the check of
    linear identifiability across seeds (Roeder et al. 2021) or against a reference encoder.
    Directions of h_b with (almost) no variance are kept out by a ridge of 1e-9 of its variance.

    With ``return_directions`` also the directions themselves, ``W`` [width of h_b, width of h_b]
    in the same order: column i projects a centred h_b onto direction i (unit variance on the
    scored half), so ``(h_b - h_b.mean(0)) @ W[:, 0]`` is the part of h_b the other code reads worst.
    """
    a_, b_ = _pair(h_a, h_b, ("h_a", "h_b"))
    fit, test = _halves(a_.shape[0], seed)
    model = LinearRegression().fit(a_[fit], b_[fit])
    residual = b_[test] - model.predict(a_[test])
    cov_b = np.atleast_2d(np.cov(b_[test], rowvar=False))
    cov_r = np.atleast_2d(np.cov(residual, rowvar=False))
    ridge = 1e-9 * max(float(np.trace(cov_b)), 1e-300) / len(cov_b)
    unexplained, directions = eigh(cov_r, cov_b + ridge * np.eye(len(cov_b)))
    read = 1.0 - unexplained
    order = np.argsort(read)
    return (read[order], directions[:, order]) if return_directions else read[order]


def r2(z: ArrayLike, h: ArrayLike, seed: int = 0) -> float:
    """Held-out affine R^2 from h to z, averaged over the latent dimensions (1 = affine inverse)."""
    return float(np.mean(r2_per_dim(z, h, seed)))


def _pearson(a: np.ndarray) -> np.ndarray:
    return a


def _spearman(a: np.ndarray) -> np.ndarray:
    return np.apply_along_axis(rankdata, 0, a)


_CORRELATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "pearson": _pearson,
    "spearman": _spearman,
}


def correlation_matrix(z: ArrayLike, h: ArrayLike, correlation: str = "pearson") -> np.ndarray:
    """[n_z, n_h] matrix of correlations between the columns of z and h (0 for constant columns)."""
    if correlation not in _CORRELATIONS:
        raise ValueError(
            f"correlation must be one of {', '.join(_CORRELATIONS)}, got {correlation!r}"
        )
    z_, h_ = _pair(z, h)
    a, b = _CORRELATIONS[correlation](z_), _CORRELATIONS[correlation](h_)
    a = a - a.mean(0)
    b = b - b.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = (a.T @ b) / np.outer(na, nb)
    return np.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0)


def mcc(z: ArrayLike, h: ArrayLike, correlation: str = "pearson") -> float:
    """Mean correlation coefficient after Hungarian matching of latent and recovered dimensions.

    1 means h is a signed permutation of z with per-dimension scaling (for Pearson) or monotone
    per-dimension maps (for Spearman).
    """
    corr = np.abs(correlation_matrix(z, h, correlation))
    rows, cols = linear_sum_assignment(-corr)
    return float(corr[rows, cols].mean())


def _standardise(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    sd = a.std(0)
    return np.divide(a, sd, out=np.zeros_like(a), where=sd > 0)


def _variance_shares(z: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each code dimension regressed on the standardised latents: the latents' shares of its
    explained variance [d, K] (rows sum to 1; 0 for a dimension that explains nothing) and its
    R^2 [d]."""
    zs, hs = _standardise(z), _standardise(h)
    coef, *_ = np.linalg.lstsq(zs, hs, rcond=None)  # [K, d]
    resid = hs - zs @ coef
    r2_code = np.clip(1.0 - resid.var(0), 0.0, 1.0) * (hs.std(0) > 0)
    power = (coef**2).T  # [d, K]
    total = power.sum(1, keepdims=True)
    shares = np.divide(power, total, out=np.zeros_like(power), where=total > 0)
    return shares, r2_code


def _purity_score(shares: np.ndarray, weights: np.ndarray) -> float:
    k = shares.shape[1]
    if weights.sum() <= 0:
        return 0.0
    if k == 1:
        return 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(shares > 0, shares * np.log(shares), 0.0)
    purity = 1.0 + plogp.sum(1) / np.log(k)
    return float((weights * purity).sum() / weights.sum())


def alignment(z: ArrayLike, h: ArrayLike, correlation: str = "pearson") -> float:
    """How axis-aligned the code ``h`` [N, d] is with the latents ``z`` [N, K], in [0, 1].

    Each code dimension h_j is regressed on the standardised latents (both ranked first for
    ``correlation="spearman"``); latent k's share of h_j's explained variance is
    p_jk = a_jk^2 / sum_k a_jk^2 (exact for independent latents), h_j's purity is
    1 - H(p_j) / log K, and the score is the purities' mean weighted by each dimension's R^2. This
    is DCI disentanglement (Eastwood & Williams, ICLR 2018) with a linear fit's variance shares as
    importances. 1: every informative dimension depends on a single latent (a permutation with
    scaling, monotone maps for Spearman); a rotation scores less (0 for 45 degrees in 2D). Unlike
    :func:`mcc`, extra output dimensions cannot raise it by chance: dimensions without latent
    information weigh nothing, and a mixed dimension counts as mixed however many there are.
    """
    if correlation not in _CORRELATIONS:
        raise ValueError(
            f"correlation must be one of {', '.join(_CORRELATIONS)}, got {correlation!r}"
        )
    z_, h_ = _pair(z, h)
    transform = _CORRELATIONS[correlation]
    shares, weights = _variance_shares(transform(z_), transform(h_))
    return _purity_score(shares, weights)


def random_code_scores(
    z: ArrayLike,
    outputs: int,
    trials: int = 200,
    correlation: str = "pearson",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`mcc` and :func:`alignment` of ``trials`` random linear codes of the latents.

    Code t is h = z_std W_t with W_t [K, outputs] of independent standard normals: it holds the
    latents linearly (affine R^2 = 1) in random directions. Its MCC is what the protocol gives a
    code that is not aligned at all, so an MCC means "aligned" only well above these values; with
    ``outputs`` > K the matching picks the best of many random directions and the level is high.
    Returns arrays ``mcc`` and ``alignment`` [trials].
    """
    z_np = _as_numpy(z, "z")
    if outputs < 1 or trials < 1:
        raise ValueError(f"outputs and trials must be >= 1, got {outputs} and {trials}")
    zs = _standardise(z_np.astype(np.float64))
    rng = np.random.default_rng(seed)
    mccs, aligned = np.empty(trials), np.empty(trials)
    for t in range(trials):
        w = rng.standard_normal((zs.shape[1], outputs))
        h = zs @ w
        mccs[t] = mcc(z_np, h, correlation)
        aligned[t] = alignment(z_np, h, correlation)
    return {"mcc": mccs, "alignment": aligned}


def chance_level(
    z: ArrayLike,
    outputs: int,
    trials: int = 100,
    correlation: str = "pearson",
    seed: int = 0,
) -> dict[str, float]:
    """Summary of :func:`random_code_scores`: mean and 95th percentile of the random codes' MCC
    and alignment, with ``outputs`` and ``trials``."""
    scores = random_code_scores(z, outputs, trials, correlation, seed)
    return {
        "outputs": int(outputs),
        "trials": int(trials),
        "mcc": float(scores["mcc"].mean()),
        "mcc_p95": float(np.percentile(scores["mcc"], 95)),
        "alignment": float(scores["alignment"].mean()),
        "alignment_p95": float(np.percentile(scores["alignment"], 95)),
    }


#: Metric registry: name -> function(z, h) -> float.
METRICS: dict[str, Callable[..., float]] = {"r2": r2, "mcc": mcc}


def mcc_per_dim(z: ArrayLike, h: ArrayLike, correlation: str = "pearson") -> np.ndarray:
    """The matched |correlation| of every latent dimension of z after the Hungarian matching of
    :func:`mcc`, shape [n_z] (NaN for a dimension left unmatched when h is narrower than z)."""
    corr = np.abs(correlation_matrix(z, h, correlation))
    rows, cols = linear_sum_assignment(-corr)
    out = np.full(corr.shape[0], np.nan)
    out[rows] = corr[rows, cols]
    return out


def embed_latents(latents: np.ndarray, periodic: np.ndarray) -> np.ndarray:
    """Coordinates of latents [N, n] in which distances and linear fits make sense: linear factors
    as they are, then the angle factors as (cos, sin) columns (all cosines, then all sines)."""
    latents = np.asarray(latents, dtype=np.float32)
    periodic = np.asarray(periodic, dtype=bool)
    if not periodic.any():
        return np.ascontiguousarray(latents)
    angles = latents[:, periodic]
    parts = [latents[:, ~periodic], np.cos(angles), np.sin(angles)]
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def factor_scores(
    z: ArrayLike,
    h: ArrayLike,
    factors: list[str],
    periodic: np.ndarray | None = None,
    correlation: str = "pearson",
) -> dict[str, object]:
    """R^2, MCC, and per-factor R^2 / MCC / kNN R^2 of codes ``h`` against named latents ``z``.

    An angle factor (``periodic[i]``) is scored through its (cos, sin) embedding: its R^2 is the
    mean over the two columns, and MCC is computed over the embedded columns (no per-factor MCC
    then). Returns ``r2``, ``mcc``, ``r2_per_dim``, ``r2_per_factor``, ``knn_r2_per_factor`` and,
    without angles, ``mcc_per_factor``.
    """
    z_np = _as_numpy(z, "z")
    periodic = np.zeros(len(factors), bool) if periodic is None else np.asarray(periodic, bool)
    if not periodic.any():
        per_dim = r2_per_dim(z_np, h)
        out: dict[str, object] = {
            "r2": float(per_dim.mean()),
            "mcc": mcc(z_np, h, correlation),
            "r2_per_dim": [float(v) for v in per_dim],
        }
        per = mcc_per_dim(z_np, h, correlation)
        out["r2_per_factor"] = dict(zip(factors, out["r2_per_dim"], strict=True))
        out["mcc_per_factor"] = {f: float(v) for f, v in zip(factors, per, strict=True)}
        knn = knn_r2_per_dim(z_np, h)
        out["knn_r2_per_factor"] = {f: float(v) for f, v in zip(factors, knn, strict=True)}
        return out
    target = embed_latents(z_np, periodic)
    per_dim = r2_per_dim(target, h)
    r2_factor = columns_per_factor(per_dim, factors, periodic)
    return {
        "r2": float(np.mean(list(r2_factor.values()))),
        "mcc": mcc(target, h, correlation),
        "r2_per_dim": list(r2_factor.values()),
        "r2_per_factor": r2_factor,
        "knn_r2_per_factor": columns_per_factor(knn_r2_per_dim(target, h), factors, periodic),
    }


def columns_per_factor(
    cols: ArrayLike, factors: list[str], periodic: np.ndarray | None = None
) -> dict[str, float]:
    """Scores of :func:`embed_latents`'s columns as one score per named factor.

    A linear factor keeps its column's score; an angle factor (``periodic[i]``) gets the mean of
    its (cos, sin) columns' scores.
    """
    values_in = [float(v) for v in np.asarray(cols, dtype=np.float64).reshape(-1)]
    periodic = np.zeros(len(factors), bool) if periodic is None else np.asarray(periodic, bool)
    linear = [f for f, p in zip(factors, periodic, strict=True) if not p]
    angles = [f for f, p in zip(factors, periodic, strict=True) if p]
    if len(values_in) != len(linear) + 2 * len(angles):
        raise ValueError(
            f"need {len(linear) + 2 * len(angles)} column scores for {len(factors)} factors "
            f"({len(angles)} angles), got {len(values_in)}"
        )
    # an angle's two columns (cos, sin) follow the linear factors: average them
    values = dict(zip(linear, values_in[: len(linear)], strict=True))
    k = len(angles)
    for i, name in enumerate(angles):
        values[name] = 0.5 * (values_in[len(linear) + i] + values_in[len(linear) + k + i])
    return {f: float(values[f]) for f in factors}
