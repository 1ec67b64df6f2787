"""Identifiability scores as pure functions of (true latents z, recovered latents h).

* :func:`r2` -- affine identifiability: fit z ~ A h + b by least squares on one half of the samples,
  report R^2 on the other half, averaged over the latent dimensions.
* :func:`mcc` -- permutation identifiability: the |correlation| matrix between z and h, a Hungarian
  matching on it (``scipy.optimize.linear_sum_assignment``), the mean matched |correlation|.
* :func:`knn_r2_per_dim` -- a diagnostic, not a claim of the theory: held-out R^2 of a k-nearest-
  neighbour regression from h to each latent. High kNN R^2 with low affine R^2 means the factor is
  in h, but not linearly; both low means h has lost it.

Both accept numpy arrays or torch tensors of shape [N, n] (h may have another width).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
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


def _pair(z: ArrayLike, h: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    z_, h_ = _as_numpy(z, "z"), _as_numpy(h, "h")
    if z_.shape[0] != h_.shape[0]:
        raise ValueError(
            f"z and h need the same number of samples, got {z_.shape[0]} and {h_.shape[0]}"
        )
    if z_.shape[0] < 4:
        raise ValueError(f"need at least 4 samples, got {z_.shape[0]}")
    return z_, h_


def r2_per_dim(z: ArrayLike, h: ArrayLike, seed: int = 0) -> np.ndarray:
    """Held-out R^2 of an affine fit from h to each latent dimension of z, shape [n].

    The samples are split at random (``seed``) into two halves: fit on one, score on the other.
    """
    z_, h_ = _pair(z, h)
    order = np.random.default_rng(seed).permutation(z_.shape[0])
    half = z_.shape[0] // 2
    fit, test = order[:half], order[half:]
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
    order = np.random.default_rng(seed).permutation(z_.shape[0])
    half = z_.shape[0] // 2
    fit, test = order[:half], order[half:]
    mean, std = h_[fit].mean(0), h_[fit].std(0)
    hs = (h_ - mean) / np.where(std > 0, std, 1.0)
    model = KNeighborsRegressor(n_neighbors=min(k, half)).fit(hs[fit], z_[fit])
    return np.atleast_1d(r2_score(z_[test], model.predict(hs[test]), multioutput="raw_values"))


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
    linear = [f for f, p in zip(factors, periodic, strict=True) if not p]
    angles = [f for f, p in zip(factors, periodic, strict=True) if p]

    def per_factor(cols: list[float]) -> dict[str, float]:
        # an angle's two columns (cos, sin) follow the linear factors: average them
        values = dict(zip(linear, cols[: len(linear)], strict=True))
        k = len(angles)
        for i, name in enumerate(angles):
            values[name] = 0.5 * (cols[len(linear) + i] + cols[len(linear) + k + i])
        return {f: float(values[f]) for f in factors}

    r2_factor = per_factor([float(v) for v in per_dim])
    return {
        "r2": float(np.mean(list(r2_factor.values()))),
        "mcc": mcc(target, h, correlation),
        "r2_per_dim": list(r2_factor.values()),
        "r2_per_factor": r2_factor,
        "knn_r2_per_factor": per_factor(list(knn_r2_per_dim(target, h))),
    }
