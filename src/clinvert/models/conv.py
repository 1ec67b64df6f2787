"""Small convolutional encoders for images: ``conv`` (SlowVAE's and the paper's KITTI Masks encoder)
and ``conv-wide`` (twice its channels, with BatchNorm; for 3DIdent renders).

``conv``: four 4x4 convolutions with stride 2 (32, 32, 64, 64 channels), a 4x4 convolution to 256
channels, ReLU, then a linear layer to ``out_dim``: at 64x64 the four strided stages reach 4x4 and the
last convolution 1x1, exactly as in Klindt et al. (2021). Other sizes work too: an adaptive average
pool brings the last stage to 4x4, and inputs smaller than 16x16 are first enlarged to 16x16 (nearest
neighbour), so that no stage shrinks to nothing. About 0.4 M parameters: a fraction of ResNet-18's
11 M, for observations such as masks, digits or small renders.

``conv-wide``: the same layout with 64, 64, 128, 128 channels, a 512-channel last convolution and
BatchNorm after every strided convolution (1.5 M parameters, about 2.7 times ``conv``'s step on
this project's CPU, from two runs' wall times). On 3DIdent's 64x64 renders its supervised ceiling
on the three rotations is far above ``conv``'s at the same budget (``results/threedident/README.md``),
while ResNet-18's ImageNet stem shrinks a 64x64 image to 16x16 before its first block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

#: Channels of ``conv``'s four strided stages.
CONV_WIDTHS = (32, 32, 64, 64)
#: Channels of ``conv-wide``'s strided stages and of its last convolution.
WIDE_WIDTHS = (64, 64, 128, 128)
WIDE_HIDDEN = 512
#: Smallest image side the strided stages take as it is.
MIN_SIDE = 16


class ConvEncoder(nn.Module):
    """[B, C, H, W] -> [B, out_dim].

    Args:
        in_dim: input channels C.
        out_dim: output dimension d (before the model's output head).
        hidden: channels of the last convolution (256 in SlowVAE).
        channels: channels of the strided 4x4 stages (each halves the image side).
        batch_norm: BatchNorm after each strided convolution (which then has no bias).
    """

    def __init__(
        self,
        in_dim: int = 1,
        out_dim: int = 10,
        *,
        hidden: int = 256,
        channels: Sequence[int] = CONV_WIDTHS,
        batch_norm: bool = False,
        **_: object,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_dim
        for width in channels:
            layers.append(nn.Conv2d(c_in, width, 4, stride=2, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            c_in = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.last = nn.Sequential(nn.Conv2d(c_in, hidden, 4), nn.ReLU(inplace=True))
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] float -> [B, d]."""
        if min(x.shape[-2:]) < MIN_SIDE:
            scale = MIN_SIDE / min(x.shape[-2:])
            size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
            x = F.interpolate(x, size=size, mode="nearest")
        h = self.last(self.pool(self.stages(x)))
        return self.linear(h.flatten(1))


def wide_conv_encoder(in_dim: int = 3, out_dim: int = 10, **_: object) -> ConvEncoder:
    """The ``conv-wide`` encoder: :class:`ConvEncoder` with 64, 64, 128, 128 channels, a
    512-channel last convolution and BatchNorm."""
    return ConvEncoder(in_dim, out_dim, hidden=WIDE_HIDDEN, channels=WIDE_WIDTHS, batch_norm=True)
