"""Your own paired data on a sphere with a vMF-like conditional: ContrastiveEncoder, cosine model.

Made with plain numpy: ten latents uniform on the unit sphere S^9, a positive partner that is the
latent moved by Normal noise (sigma 0.25 per coordinate) and projected back onto the sphere (close to a
von Mises-Fisher law with kappa about 1 / sigma^2 = 16), both mixed by a random invertible leaky-ReLU
MLP (three layers, each the best-conditioned of 1000 draws). The theory predicts codes that are an
orthogonal map of the latents: a held-out affine fit recovers them, R² near 1.

Run: python examples/own_data_sphere.py
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


def on_sphere(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


z = on_sphere(rng.normal(size=(100_000, n)))
z_positive = on_sphere(z + rng.normal(scale=0.25, size=z.shape))
x, x_positive = g(z), g(z_positive)
z_test = on_sphere(rng.normal(size=(10_000, n)))
x_test = g(z_test)

started = time.perf_counter()
encoder = clinvert.ContrastiveEncoder(output_dim=n, similarity="cosine", output="sphere")
encoder.fit(x, x_positive)
seconds = time.perf_counter() - started
codes = encoder.transform(x_test)
print(f"fit: {seconds:.0f} s ({encoder.steps} steps of {encoder.batch_size} pairs)")
print(f"R2 {encoder.score(x_test, z_test):.3f}  MCC {mcc(z_test, codes):.3f}")
print(f"identity (the observations themselves): R2 {clinvert.metrics.r2(z_test, x_test):.3f}")
