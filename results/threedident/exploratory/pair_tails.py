"""A label-free fold check that did not work: heavy tails of positive-pair code differences.

A code that holds gamma as gamma * sign(alpha) changes fast where alpha crosses 0, so positive pairs
that straddle alpha = 0 should differ by more than an affine code allows: heavy tails in the
whitened differences h(x~) - h(x). For each run this prints the largest and the median excess
kurtosis of those differences along their principal directions and the share of pairs beyond the
chi-square 0.999 quantile (0.001 for Gaussian differences), over 4000 positive pairs of the 200k
training images drawn with Normal(0.3) (seed 123), the same pairs for every run; the first line is
the same statistic of the latents' own differences. No label enters the statistic.

    python results/threedident/exploratory/pair_tails.py runs/s3/RUN...
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from scipy.stats import chi2

from clinvert.data.images import images_to_float, load_image_dataset
from clinvert.data.pairs import PairBatches
from clinvert.estimator import load
from clinvert.latents import NoiseLaw


def tails(d: np.ndarray) -> tuple[float, float, float]:
    """(largest excess kurtosis, median excess kurtosis, share beyond chi2 0.999) of rows of d."""
    d = d - d.mean(0)
    w, v = np.linalg.eigh(np.cov(d.T))
    keep = w > 1e-3 * w.max()
    y = d @ v[:, keep] / np.sqrt(w[keep])
    kurt = (y**4).mean(0) - 3
    beyond = ((y**2).sum(1) > chi2.ppf(0.999, y.shape[1])).mean()
    return float(kurt.max()), float(np.median(kurt)), float(beyond)


def line(name: str, stats: tuple[float, float, float]) -> str:
    """One printed row."""
    return (
        f"{name}: max kurtosis {stats[0]:.2f}, median {stats[1]:.2f}, beyond 0.999: {stats[2]:.4f}"
    )


torch.set_num_threads(1)
law = NoiseLaw("normal", scale=0.3)
pairs = PairBatches(load_image_dataset("data/s3/train64-200k"), law, 500, 123, 7)
batches = [pairs[k] for k in range(8)]
x, x_tilde, z, z_tilde = (
    np.concatenate([b[key].numpy() for b in batches]) for key in ("x", "x_tilde", "z", "z_tilde")
)
print(line("latents (reference)", tails(z_tilde - z)))
for run in sys.argv[1:]:
    est = load(run)
    d = est.transform(images_to_float(x_tilde)) - est.transform(images_to_float(x))
    print(line(run.rstrip("/").split("/")[-1], tails(d)))
