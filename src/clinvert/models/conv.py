"""A small convolutional encoder for images, the one of SlowVAE's and the paper's KITTI Masks runs.

Four 4x4 convolutions with stride 2 (32, 32, 64, 64 channels), a 4x4 convolution to 256 channels,
ReLU, then a linear layer to ``out_dim``: at 64x64 the four strided stages reach 4x4 and the last
convolution 1x1, exactly as in Klindt et al. (2021). Other sizes work too: an adaptive average pool
brings the last stage to 4x4, and inputs smaller than 16x16 are first enlarged to 16x16 (nearest
neighbour), so that no stage shrinks to nothing. About 0.3 M parameters: a fraction of ResNet-18's
11 M, for observations such as masks, digits or small renders.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

#: Channels of the four strided stages.
CONV_WIDTHS = (32, 32, 64, 64)
#: Smallest image side the strided stages take as it is.
MIN_SIDE = 16


class ConvEncoder(nn.Module):
    """[B, C, H, W] -> [B, out_dim].

    Args:
        in_dim: input channels C.
        out_dim: output dimension d (before the model's output head).
        hidden: channels of the last convolution (256 in SlowVAE).
    """

    def __init__(
        self, in_dim: int = 1, out_dim: int = 10, *, hidden: int = 256, **_: object
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_dim
        for width in CONV_WIDTHS:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            channels = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.last = nn.Sequential(nn.Conv2d(channels, hidden, 4), nn.ReLU(inplace=True))
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] float -> [B, d]."""
        if min(x.shape[-2:]) < MIN_SIDE:
            scale = MIN_SIDE / min(x.shape[-2:])
            size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
            x = F.interpolate(x, size=size, mode="nearest")
        h = self.last(self.pool(self.stages(x)))
        return self.linear(h.flatten(1))
