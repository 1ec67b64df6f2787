"""Fixed input normalisation of the encoder: an invertible affine map estimated from observations.

The synthetic observations x = g(z) are strongly anisotropic (the covariance of x under the paper's
3-layer mixing has a condition number above 1000), which slows gradient descent. Whitening x with
its own mean and covariance is a fixed invertible affine map, so f = MLP o whiten has exactly the
same set of reachable maps and the same InfoNCE minimisers; it uses observations only, never latents.
Measured (sphere, vMF(10), tau 0.1, batch 512, narrow encoder, 1 thread): R^2 0.830 vs 0.780 after
2000 steps, 0.857 vs 0.839 after 4000.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

INPUT_NORMS = ("none", "standardize", "whiten")


class InputNorm(nn.Module):
    """x -> (x - mean) @ matrix, with buffers fitted once by :meth:`fit` (identity until then)."""

    def __init__(self, dim: int, kind: str = "whiten") -> None:
        super().__init__()
        if kind not in INPUT_NORMS:
            raise ValueError(
                f"model.input_norm must be one of {', '.join(INPUT_NORMS)}, got {kind!r}"
            )
        self.kind = kind
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.eye(dim))

    @torch.no_grad()
    def fit(self, x: Tensor) -> InputNorm:
        """Estimate mean and whitening (or per-dimension scaling) matrix from observations [N, n]."""
        if self.kind == "none":
            return self
        x64 = x.detach().to(torch.float64)
        mean = x64.mean(0)
        centred = x64 - mean
        if self.kind == "standardize":
            matrix = torch.diag(centred.std(0).clamp_min(1e-12).reciprocal())
        else:
            cov = centred.T @ centred / (x64.shape[0] - 1)
            evals, evecs = torch.linalg.eigh(cov)
            evals = evals.clamp_min(evals.max() * 1e-12)
            matrix = evecs @ torch.diag(evals.rsqrt()) @ evecs.T  # ZCA: symmetric whitening
        self.mean.copy_(mean.to(self.mean.dtype))
        self.matrix.copy_(matrix.to(self.matrix.dtype))
        return self

    def forward(self, x: Tensor) -> Tensor:
        """[B, n] -> [B, n]."""
        if self.kind == "none":
            return x
        return (x - self.mean) @ self.matrix

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class ChannelNorm(nn.Module):
    """Image input normalisation: x -> (x - mean_c) / std_c per channel, fixed after :meth:`fit`.

    ``standardize`` estimates the per-channel mean and standard deviation once from training images
    (observations only); ``none`` leaves the [0, 1] pixels as they are. ``whiten`` is not offered:
    a full pixel covariance is neither needed nor cheap for a convolutional encoder.
    """

    def __init__(self, channels: int = 3, kind: str = "standardize") -> None:
        super().__init__()
        if kind not in ("none", "standardize"):
            raise ValueError(
                f"model.input_norm for images must be one of none, standardize, got {kind!r}"
            )
        self.kind = kind
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @torch.no_grad()
    def fit(self, x: Tensor) -> ChannelNorm:
        """Estimate per-channel mean and std from float images [N, C, H, W]."""
        if self.kind == "none":
            return self
        x64 = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
        self.mean.copy_(x64.mean(1).to(self.mean.dtype))
        self.std.copy_(x64.std(1).clamp_min(1e-6).to(self.std.dtype))
        return self

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        if self.kind == "none":
            return x
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"
