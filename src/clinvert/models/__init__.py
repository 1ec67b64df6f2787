"""Encoders and output heads."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from clinvert.models.heads import HEADS, BoxHead, SphereHead, UnboundedHead
from clinvert.models.input_norm import INPUT_NORMS, ChannelNorm, InputNorm
from clinvert.models.mlp import PAPER_WIDTHS, MLPEncoder
from clinvert.models.resnet import ResNet18Encoder

ENCODERS: dict[str, type[nn.Module]] = {"mlp": MLPEncoder, "resnet18": ResNet18Encoder}
#: Encoders of images [B, C, H, W] (``in_dim`` is the number of channels).
IMAGE_ENCODERS = ("resnet18",)


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

    For an image encoder (``resnet18``) ``in_dim`` is the number of channels, ``widths`` is unused,
    ``stem`` picks the ResNet stem and ``input_norm`` is per-channel (:class:`ChannelNorm`).
    """
    if encoder not in ENCODERS:
        raise ValueError(f"model.encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    if output not in HEADS:
        raise ValueError(f"model.output must be one of {', '.join(HEADS)}, got {output!r}")
    if encoder in IMAGE_ENCODERS:
        enc: nn.Module = ENCODERS[encoder](
            in_dim, out_dim, negative_slope=negative_slope, stem=stem
        )
        norm: nn.Module = ChannelNorm(in_dim, input_norm)
    else:
        enc = ENCODERS[encoder](in_dim, out_dim, widths=widths, negative_slope=negative_slope)
        norm = InputNorm(in_dim, input_norm)
    if output == "sphere":
        head: nn.Module = SphereHead(out_dim, radius=scale, learnable=learnable_scale)
    elif output == "box":
        head = BoxHead(out_dim, bound=scale, learnable=learnable_scale)
    else:
        head = UnboundedHead(out_dim, scale=scale, learnable=learnable_scale)
    return Model(enc, head, norm)


__all__ = [
    "ENCODERS",
    "HEADS",
    "INPUT_NORMS",
    "InputNorm",
    "PAPER_WIDTHS",
    "BoxHead",
    "ChannelNorm",
    "IMAGE_ENCODERS",
    "ResNet18Encoder",
    "MLPEncoder",
    "Model",
    "SphereHead",
    "UnboundedHead",
    "make_model",
]
