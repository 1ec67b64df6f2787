"""SlowVAE (Klindt et al., ICLR 2021): a VAE with a sparse (Laplace) prior on temporal transitions.

Written from the paper's equations. For a pair of frames (x0, x1) a little apart in time, with a
Gaussian encoder q(z|x) = N(mu(x), diag sigma^2(x)) and a Bernoulli decoder p(x|z):

    loss = E_q[-log p(x0|z0)] + E_q[-log p(x1|z1)]
           + beta  * KL( q(z0|x0) || N(0, I) )
           + gamma * E_{z0 ~ q(z0|x0)} KL( q(z1|x1) || Laplace(z0, 1/rate) )

per pair, summed over latent dimensions and pixels and averaged over the batch. The Laplace term
has a closed form: for q = N(m, s^2) and a Laplace(c, b),

    KL = -H(q) + log(2b) + E|Y|/b,   Y ~ N(m - c, s^2),
    E|Y| = s sqrt(2/pi) exp(-d^2 / 2s^2) + d (1 - 2 Phi(-d/s)),   d = m - c,

with H(q) = (log(2 pi e) + log s^2) / 2, evaluated at one sample z0 (reparameterised).
The codes scored as f(x) are the posterior means mu(x).

The encoder is the paper's (:class:`~clinvert.models.conv.ConvEncoder`, twice the latent
dimension for means and log-variances); the decoder mirrors it: a linear layer to 256, a 4x4
transposed convolution to 4x4 x 64, then four 4x4 stride-2 transposed convolutions (64, 32, 32,
C channels) to 64x64 logits, resized to the input's size when it differs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clinvert.models.conv import ConvEncoder


class ConvDecoder(nn.Module):
    """[B, d] -> logits [B, C, 64, 64] (then resized to ``size`` when given)."""

    def __init__(self, latent_dim: int, out_channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.linear = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True))
        layers: list[nn.Module] = [nn.ConvTranspose2d(hidden, 64, 4), nn.ReLU(inplace=True)]
        channels = 64
        for width in (64, 32, 32):
            layers += [nn.ConvTranspose2d(channels, width, 4, 2, 1), nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.ConvTranspose2d(channels, out_channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Logits of the pixels."""
        out = self.net(self.linear(z)[:, :, None, None])
        if size is not None and tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


def gaussian_laplace_kl(mu: Tensor, logvar: Tensor, centre: Tensor, rate: float) -> Tensor:
    """KL( N(mu, exp(logvar)) || Laplace(centre, 1/rate) ), elementwise (closed form above)."""
    std = torch.exp(0.5 * logvar)
    d = mu - centre
    normal = torch.distributions.Normal(torch.zeros_like(d), torch.ones_like(d))
    mean_abs = std * math.sqrt(2 / math.pi) * torch.exp(-0.5 * (d / std) ** 2) + d * (
        1 - 2 * normal.cdf(-d / std)
    )
    entropy = 0.5 * (math.log(2 * math.pi * math.e) + logvar)
    return -entropy + math.log(2.0 / rate) + rate * mean_abs


def gaussian_normal_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL( N(mu, exp(logvar)) || N(0, 1) ), elementwise."""
    return 0.5 * (mu * mu + torch.exp(logvar) - logvar - 1.0)


class SlowVAE(nn.Module):
    """SlowVAE over images [B, C, H, W]; ``forward`` returns the posterior means [B, d].

    Args:
        in_channels: image channels C.
        latent_dim: d.
        input_norm: a module applied to the encoder's input only (the decoder reconstructs the
            raw images, whose pixels must lie in [0, 1]).
        beta, gamma, rate: weights of the two KL terms and the Laplace rate (1 / scale).
    """

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        input_norm: nn.Module | None = None,
        *,
        beta: float = 1.0,
        gamma: float = 10.0,
        rate: float = 6.0,
    ) -> None:
        super().__init__()
        self.input_norm = input_norm if input_norm is not None else nn.Identity()
        self.encoder = ConvEncoder(in_channels, 2 * latent_dim)
        self.decoder = ConvDecoder(latent_dim, in_channels)
        self.latent_dim = latent_dim
        self.beta, self.gamma, self.rate = float(beta), float(gamma), float(rate)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Means and log-variances [B, d] of q(z|x) (log-variances clamped to [-20, 10])."""
        out = self.encoder(self.input_norm(x))
        mu, logvar = out[:, : self.latent_dim], out[:, self.latent_dim :]
        return mu, logvar.clamp(-20.0, 10.0)

    def forward(self, x: Tensor) -> Tensor:
        """The codes: posterior means [B, d]."""
        return self.posterior(x)[0]

    def loss(
        self,
        x0: Tensor,
        x1: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """The negative ELBO of the module docstring, averaged over the batch of pairs; the
        reparameterisation noise [2B, d] (rows of x0, then of x1) is ``noise`` when given, else
        drawn from ``generator`` (default: torch's global one)."""
        batch = x0.shape[0]
        mu, logvar = self.posterior(torch.cat([x0, x1]))
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * noise
        logits = self.decoder(z, size=tuple(x0.shape[-2:]))
        target = torch.cat([x0, x1]).clamp(0.0, 1.0)
        rec = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / batch
        kl_prior = gaussian_normal_kl(mu[:batch], logvar[:batch]).sum() / batch
        kl_slow = gaussian_laplace_kl(mu[batch:], logvar[batch:], z[:batch], self.rate).sum()
        return rec + self.beta * kl_prior + self.gamma * kl_slow / batch
