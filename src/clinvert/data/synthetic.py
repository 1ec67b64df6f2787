"""The synthetic pair source: the latent process of ``latent`` mixed by the invertible MLP g.

Pairs (z, z~) are drawn on the device from the run's training stream and mixed there: x = g(z),
x~ = g(z~). Evaluation uses fresh latents from streams of their own (``eval`` during training,
``test`` at the end), never a training batch. The stream's generator state is this source's part of
a checkpoint, so a resumed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from clinvert.data.sources import (
    STREAM_EVAL,
    STREAM_INPUT_NORM,
    STREAM_TEST,
    STREAM_TRAIN,
    PairSource,
    Shards,
    cat_shards,
    check_split,
    derive_seed,
    encode,
    make_generator,
    score,
)
from clinvert.latents import LatentProcess, make_conditional, make_marginal, make_space
from clinvert.mixing import InvertibleMLP
from clinvert.registry import SOURCES
from clinvert.spec import DataSpec

if TYPE_CHECKING:
    from clinvert.config import RunConfig

#: Observations used to fit the encoder's input normalisation.
INPUT_NORM_SAMPLES = 20_000


class SyntheticData(DataSpec):
    """``data`` section of a synthetic run: nothing beyond the name (it is the default)."""

    source: Literal["synthetic"] = "synthetic"


def build_process(cfg: RunConfig) -> LatentProcess:
    """The latent process of ``cfg.latent``."""
    lat = cfg.latent
    marginal = lat.marginal.model_dump(exclude={"name"})
    conditional = lat.conditional.model_dump(exclude={"name"})
    return LatentProcess(
        make_space(lat.space, lat.dim, tuple(lat.box)),
        make_marginal(lat.marginal.name, **marginal),
        make_conditional(lat.conditional.name, **conditional),
    )


def build_mixing(cfg: RunConfig, device: torch.device) -> InvertibleMLP:
    """The frozen mixing g of ``cfg.mixing`` (weights depend on the mixing seed only)."""
    mix = cfg.mixing
    return InvertibleMLP(
        cfg.latent.dim, mix.layers, cfg.mixing_seed, mix.cond_quantile, mix.cond_trials, mix.weights
    ).to(device)


class SyntheticSource(PairSource):
    """x = g(z) for latents of the configured process; see the module docstring."""

    spec = SyntheticData
    observations = "vector"

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.correlation = cfg.eval.correlation
        self.process = build_process(cfg)
        self.mixing = build_mixing(cfg, device)
        self.in_dim = cfg.latent.dim
        self.shards = Shards.of(cfg)
        # one shard (a single process): one sequential stream, as in earlier versions
        self.generator = make_generator(derive_seed(cfg.train.seed, STREAM_TRAIN), device)
        self._z = {"eval": self._fresh(STREAM_EVAL), "test": self._fresh(STREAM_TEST)}
        self._next = 0

    @classmethod
    def observations_of(cls, cfg: RunConfig) -> str | None:
        return "vector"

    def _fresh(self, stream: int) -> Tensor:
        gen = make_generator(derive_seed(self.cfg.train.seed, stream), self.device)
        return self.process.sample_marginal(self.cfg.eval.samples, gen, self.device)

    def _advance(self, step: int) -> None:
        # Batch k comes from the k-th draw of the training stream: asking out of order would
        # silently give another batch, so it is refused.
        if step != self._next:
            raise RuntimeError(f"synthetic source is at batch {self._next}, asked for {step}")
        self._next += 1

    def _generators(self, step: int) -> list[torch.Generator]:
        """The generator of each shard of batch ``step`` this process draws."""
        if self.shards.count == 1:
            return [self.generator]
        return self.shards.generators(self.cfg.train.seed, STREAM_TRAIN, step, self.device)

    def pairs(self, step: int) -> tuple[Tensor, Tensor]:
        self._advance(step)
        n = self.shards.size
        parts = [self.process.sample_pairs(n, g, self.device) for g in self._generators(step)]
        z, z_tilde = cat_shards(parts)
        return self.mixing(z), self.mixing(z_tilde)

    def labelled(self, step: int) -> tuple[Tensor, Tensor]:
        self._advance(step)
        n = self.shards.size
        z = cat_shards(
            [self.process.sample_marginal(n, g, self.device) for g in self._generators(step)]
        )
        return self.mixing(z), z

    def norm_sample(self) -> Tensor:
        # Observations x = g(z) only (never latents), from a stream of their own.
        gen = make_generator(derive_seed(self.cfg.train.seed, STREAM_INPUT_NORM), self.device)
        return self.mixing(self.process.sample_marginal(INPUT_NORM_SAMPLES, gen, self.device))

    def latents(self, split: str) -> Tensor:
        check_split(split)
        return self._z[split]

    def encode(self, model: torch.nn.Module, split: str) -> Tensor:
        return encode(model, self.mixing(self.latents(split)))

    def baseline(self) -> dict[str, Any]:
        z = self._z["test"]
        return score(z, self.mixing(z), self.correlation)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "next": self._next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._next = int(state.get("next", self._next))

    def result_fields(self) -> dict[str, Any]:
        return {
            "mixing": {"condition_numbers": self.mixing.condition_numbers},
            "eval_samples": self.cfg.eval.samples,
        }


SOURCES.register("synthetic", SyntheticSource)
