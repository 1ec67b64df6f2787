"""Encoders and output heads."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from clinvert.models.heads import HEADS, BoxHead, SphereHead, UnboundedHead
from clinvert.models.mlp import PAPER_WIDTHS, MLPEncoder

ENCODERS: dict[str, type[nn.Module]] = {"mlp": MLPEncoder}


class Model(nn.Module):
    """Encoder followed by an output head: f(x) = head(encoder(x))."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """[B, ...] -> [B, d]."""
        return self.head(self.encoder(x))


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
) -> Model:
    """Build encoder + head from config names. ``scale`` is the sphere radius or the box bound."""
    if encoder not in ENCODERS:
        raise ValueError(f"model.encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    if output not in HEADS:
        raise ValueError(f"model.output must be one of {', '.join(HEADS)}, got {output!r}")
    enc = ENCODERS[encoder](in_dim, out_dim, widths=widths, negative_slope=negative_slope)
    if output == "sphere":
        head: nn.Module = SphereHead(out_dim, radius=scale, learnable=learnable_scale)
    elif output == "box":
        head = BoxHead(out_dim, bound=scale, learnable=learnable_scale)
    else:
        head = UnboundedHead(out_dim)
    return Model(enc, head)


__all__ = [
    "ENCODERS",
    "HEADS",
    "PAPER_WIDTHS",
    "BoxHead",
    "MLPEncoder",
    "Model",
    "SphereHead",
    "UnboundedHead",
    "make_model",
]
