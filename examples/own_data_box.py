"""Your own paired data, a box and a Laplace conditional: ContrastiveEncoder with an L1 box model.

The observations are made with plain numpy (clinvert never sees the latents or the mixing): ten
latents uniform in [0, 1]^10, a positive partner moved by Laplace noise (scale 0.05, resampled until it
stays in the box), both mixed by a random invertible leaky-ReLU MLP (three layers, each the
best-conditioned of 1000 draws). The theory predicts codes equal to the latents up to a permutation
and per-dimension scaling: MCC near 1.

Run: python examples/own_data_box.py
"""

import time

import numpy as np

import clinvert
from clinvert.metrics import mcc

rng = np.random.default_rng(0)
n = 10


def random_layer() -> np.ndarray:
    draws = rng.uniform(-1, 1, size=(1000, n, n))
    draws /= np.linalg.norm(draws, axis=1, keepdims=True)  # unit-norm columns
    return draws[np.argmin(np.linalg.cond(draws))]


weights = [random_layer() for _ in range(3)]


def g(z: np.ndarray) -> np.ndarray:
    """The mixing: linear, leaky ReLU, linear, leaky ReLU, linear."""
    for i, w in enumerate(weights):
        z = z @ w
        if i < len(weights) - 1:
            z = np.maximum(z, 0.2 * z)
    return z.astype(np.float32)


def laplace_in_box(z: np.ndarray, scale: float) -> np.ndarray:
    out = z + rng.laplace(scale=scale, size=z.shape)
    outside = (out < 0) | (out > 1)
    while outside.any():  # truncated Laplace: resample what left the box
        out[outside] = z[outside] + rng.laplace(scale=scale, size=outside.sum())
        outside = (out < 0) | (out > 1)
    return out


z = rng.uniform(size=(100_000, n))
x, x_positive = g(z), g(laplace_in_box(z, 0.05))
z_test = rng.uniform(size=(10_000, n))
x_test = g(z_test)

started = time.perf_counter()
encoder = clinvert.ContrastiveEncoder(output_dim=n, similarity="lp", p=1, output="box")
encoder.fit(x, x_positive)
seconds = time.perf_counter() - started
codes = encoder.transform(x_test)
print(f"fit: {seconds:.0f} s ({encoder.steps} steps of {encoder.batch_size} pairs)")
print(f"MCC {mcc(z_test, codes):.3f}  R2 {encoder.score(x_test, z_test):.3f}")
print(f"identity (the observations themselves): MCC {mcc(z_test, x_test):.3f}")
