"""Held-out ridge R² of a finished `conv` / `conv-wide` run's 512 penultimate features per factor,
beside that of its 10 outputs: are the rotations in the backbone but dropped by the last linear
layer, or absent from the backbone too?

    OMP_NUM_THREADS=1 python results/threedident/exploratory/hidden_probe.py runs/s2/box-normal-conv-wide-64

Fits on the first 1,000 test images of data/s2/test64, scores on the next 1,000 (ridge with the
penalty chosen by leave-one-out among 13 values; 512 features on 1,000 images need one).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from sklearn.linear_model import RidgeCV

import clinvert
from clinvert.data.images import images_to_float, load_image_dataset
from clinvert.models.conv import ConvEncoder


def ridge_r2(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Per-column R² on the second half of a ridge fit on the first half."""
    half = len(x) // 2
    fit = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x[:half], z[:half])
    pred, truth = fit.predict(x[half:]), z[half:]
    return 1 - ((pred - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)


def main(run: str, test_dir: str = "data/s2/test64", count: int = 2000) -> None:
    torch.set_num_threads(1)
    model = clinvert.load(run).model_
    model.eval()
    conv = next(m for m in model.modules() if isinstance(m, ConvEncoder))
    hidden: list[torch.Tensor] = []
    conv.last.register_forward_hook(lambda m, i, o: hidden.append(o.flatten(1)))
    test = load_image_dataset(test_dir)
    with torch.no_grad():
        out = [
            model(images_to_float(np.array(test.images[i : i + 250]))) for i in range(0, count, 250)
        ]
    z = test.latents[:count]
    print("factors:   ", " ".join(f"{f[:9]:>9s}" for f in test.factors))
    for name, x in (("outputs", torch.cat(out)), ("hidden 512", torch.cat(hidden))):
        print(f"{name:11s}", " ".join(f"{v:9.2f}" for v in ridge_r2(x.numpy(), z)))


if __name__ == "__main__":
    main(*sys.argv[1:2])
