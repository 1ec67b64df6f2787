"""Config -> experiment: the pair source, the model (weights from the seed), the loss, the optimiser.

Everything a run is made of is built here and nowhere else, so that the trainer, the estimator and
the benchmarks build runs the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from clinvert.config import ConfigError, RunConfig
from clinvert.data.sources import STREAM_INIT, PairSource, derive_seed, make_source
from clinvert.losses import InfoNCE
from clinvert.models import Model, make_model


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device: cuda requested but no CUDA device is available, got 'cuda'"
        )
    if name == "cuda":  # this process's device (a distributed rank's own, set when it joined)
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


@dataclass
class Experiment:
    """Everything a run is made of, built from a config."""

    cfg: RunConfig
    device: torch.device
    source: PairSource
    model: Model  # or a SlowVAE (train.objective slowvae): forward gives the codes
    loss: InfoNCE

    @property
    def process(self) -> Any:
        """The latent process of a synthetic source (None for sources without one)."""
        return getattr(self.source, "process", None)

    @property
    def mixing(self) -> Any:
        """The mixing g of a synthetic source (None: images or the user's arrays)."""
        return getattr(self.source, "mixing", None)


def init_model(cfg: RunConfig, device: torch.device, in_dim: int) -> torch.nn.Module:
    """The run's model with weights drawn from the seed's init stream (global RNG untouched), in
    ``model.memory_format`` (4-d weights only: the same numbers in another layout)."""
    model = _init_model(cfg, device, in_dim)
    if cfg.model.memory_format == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return model


def _init_model(cfg: RunConfig, device: torch.device, in_dim: int) -> torch.nn.Module:
    m = cfg.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.train.seed, STREAM_INIT))
        if cfg.train.objective == "slowvae":
            from clinvert.models.input_norm import ChannelNorm
            from clinvert.models.slowvae import SlowVAE

            s = cfg.train.slowvae
            return SlowVAE(
                in_dim,
                m.output_dim or cfg.latent.dim,
                ChannelNorm(in_dim, m.input_norm),
                beta=s.beta,
                gamma=s.gamma,
                rate=s.rate,
            ).to(device)
        return make_model(
            in_dim,
            m.output_dim or cfg.latent.dim,
            m.output,
            encoder=m.encoder,
            widths=m.widths,
            negative_slope=m.negative_slope,
            learnable_scale=m.learnable_scale,
            scale=m.scale,
            input_norm=m.input_norm,
            stem=m.stem,
        ).to(device)


def make_loss(cfg: RunConfig) -> InfoNCE:
    """The run's contrastive loss from its ``model`` section."""
    m = cfg.model
    return InfoNCE(m.similarity, p=m.p, tau=m.tau, self_negative=m.self_negative)


def build_experiment(
    cfg: RunConfig,
    device: torch.device | None = None,
    source: PairSource | None = None,
) -> Experiment:
    """Build source, model and loss of a run; weights depend only on the seeds.

    Args:
        cfg: a validated config.
        device: where to train (default: ``train.device``).
        source: a pair source built already (the estimator's in-memory arrays); default: the one
            ``data.source`` names.

    The encoder's input normalisation is fitted on the source's observations (never latents).
    """
    device = device or resolve_device(cfg.train.device)
    source = source if source is not None else make_source(cfg, device)
    _check_supervised_width(cfg, source)
    model = init_model(cfg, device, source.in_dim)
    if cfg.model.input_norm != "none":
        model.input_norm.fit(source.norm_sample())
    return Experiment(cfg, device, source, model, make_loss(cfg))


def _check_supervised_width(cfg: RunConfig, source: PairSource) -> None:
    """The supervised objective regresses the k latents on the first k outputs: needs d >= k."""
    if cfg.train.objective != "supervised":
        return
    targets = source.supervised_width()
    width = cfg.model.output_dim or cfg.latent.dim
    if targets is not None and targets > width:
        raise ConfigError(
            f"model.output_dim: the supervised objective regresses the {targets} latent columns on "
            f"the outputs, got {width} outputs"
        )


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW over the model's parameters."""
    t = cfg.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def lr_factor(step: int, cfg: RunConfig) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then constant or cosine."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "cosine" and t.steps > t.warmup_steps:
        progress = (step - t.warmup_steps) / (t.steps - t.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0
