"""Encoders and output heads, each through a registry keyed by its config name.

* ``ENCODERS`` (``model.encoder``): ``mlp`` (vectors), ``resnet18``, ``conv`` and ``conv-wide``
  (images); an entry is an :class:`EncoderSpec`: how to build it and what it encodes.
* ``HEADS`` (``model.output``): ``sphere``, ``box``, ``unbounded`` (:mod:`clinvert.models.heads`).

A user's encoder is one function and one line::

    @register_encoder("tiny", inputs="vector")
    def tiny(in_dim, out_dim, **options):
        return torch.nn.Sequential(torch.nn.Linear(in_dim, 64), torch.nn.ReLU(),
                                   torch.nn.Linear(64, out_dim))

after which ``model: {encoder: tiny}`` trains with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from clinvert.models.conv import ConvEncoder, wide_conv_encoder
from clinvert.models.heads import BoxHead, SphereHead, UnboundedHead
from clinvert.models.input_norm import INPUT_NORMS, ChannelNorm, InputNorm
from clinvert.models.mlp import PAPER_WIDTHS, MLPEncoder
from clinvert.models.resnet import ResNet18Encoder
from clinvert.registry import ENCODERS, HEADS

#: What an encoder takes: ``vector`` observations [B, n] or ``image`` observations [B, C, H, W].
INPUT_KINDS = ("vector", "image")


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder.

    Attributes:
        build: ``build(in_dim, out_dim, *, widths, negative_slope, stem) -> nn.Module``; ``in_dim``
            is the number of features (vectors) or channels (images). Options an encoder does not
            use go to ``**_``.
        inputs: ``"vector"`` or ``"image"``; decides the input normalisation (whitening of vectors,
            per-channel standardisation of images) and which pair sources it can train on.
    """

    build: Callable[..., nn.Module]
    inputs: str = "vector"


def register_encoder(
    name: str, build: Callable[..., nn.Module] | None = None, *, inputs: str = "vector"
) -> Any:
    """Register an encoder builder under ``name`` (usable as a decorator); see the module doc."""
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {', '.join(INPUT_KINDS)}, got {inputs!r}")

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ENCODERS.register(name, EncoderSpec(fn, inputs))
        return fn

    return add if build is None else add(build)


ENCODERS.register("mlp", EncoderSpec(MLPEncoder, "vector"))
ENCODERS.register("resnet18", EncoderSpec(ResNet18Encoder, "image"))
ENCODERS.register("conv", EncoderSpec(ConvEncoder, "image"))
ENCODERS.register("conv-wide", EncoderSpec(wide_conv_encoder, "image"))


def image_encoders() -> list[str]:
    """Names of the registered encoders of images."""
    return [name for name, spec in ENCODERS.items() if spec.inputs == "image"]


class Model(nn.Module):
    """Input normalisation, encoder, output head: f(x) = head(encoder(input_norm(x)))."""

    def __init__(
        self, encoder: nn.Module, head: nn.Module, input_norm: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.input_norm = input_norm if input_norm is not None else nn.Identity()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """[B, ...] -> [B, d]."""
        return self.head(self.encoder(self.input_norm(x)))


def make_model(
    in_dim: int,
    out_dim: int,
    output: str = "sphere",
    *,
    encoder: str = "mlp",
    widths: Sequence[int] = PAPER_WIDTHS,
    negative_slope: float = 0.2,
    learnable_scale: bool = False,
    scale: float = 1.0,
    input_norm: str = "none",
    stem: str = "imagenet",
) -> Model:
    """Build encoder + head from config names. ``scale`` is the sphere radius, the box bound or
    the unbounded output's scale (each learnable with ``learnable_scale``).

    For an image encoder (``resnet18``, ``conv``, ``conv-wide``) ``in_dim`` is the number of
    channels, ``widths`` is unused, ``stem`` picks the ResNet stem and ``input_norm`` is per-channel
    (:class:`ChannelNorm`).
    """
    spec: EncoderSpec = ENCODERS.get(encoder)
    head_cls = HEADS.get(output)
    enc = spec.build(in_dim, out_dim, widths=widths, negative_slope=negative_slope, stem=stem)
    if spec.inputs == "image":
        norm: nn.Module = ChannelNorm(in_dim, input_norm)
    else:
        norm = InputNorm(in_dim, input_norm)
    head = head_cls(out_dim, scale, learnable_scale)
    return Model(enc, head, norm)


__all__ = [
    "ENCODERS",
    "HEADS",
    "INPUT_NORMS",
    "InputNorm",
    "PAPER_WIDTHS",
    "BoxHead",
    "ChannelNorm",
    "ConvEncoder",
    "EncoderSpec",
    "ResNet18Encoder",
    "MLPEncoder",
    "Model",
    "SphereHead",
    "UnboundedHead",
    "image_encoders",
    "make_model",
    "register_encoder",
]
