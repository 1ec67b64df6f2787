"""ResNet-18 in plain torch (torchvision is not installable beside the pinned torch), for 3DIdent.

BasicBlock x [2, 2, 2, 2] with BatchNorm, global average pooling, then a small head
``Linear(512, 512) -> LeakyReLU -> Linear(512, d)``; the model's output head (sphere, box, unbounded)
follows in :class:`clinvert.models.Model`.

Stem. ``imagenet`` (the default) is torchvision's: 7x7 conv stride 2, then 3x3 max-pool stride 2, so a
64x64 image reaches the residual stages at 16x16 and leaves them at 2x2. ``small`` is the CIFAR-style
3x3 conv stride 1 without pooling: the stages run at 64x64 ... 8x8, which keeps more spatial detail but
costs about 16x the compute. On a 2-core CPU only the ``imagenet`` stem fits a useful number of steps
in minutes (see the measured step times in ``configs/threedident``); the 3DIdent factors (position,
rotation, hues, light angle) are global properties that a 2x2 final map still resolves, and the paper
itself used the standard ResNet-18 (at 224x224, where it is the usual stem).
"""

from __future__ import annotations

from torch import Tensor, nn

#: Channels of the four residual stages.
STAGE_WIDTHS = (64, 128, 256, 512)
STEMS = ("imagenet", "small")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (projected when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        """[B, in_ch, H, W] -> [B, out_ch, H / stride, W / stride]."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet18Backbone(nn.Module):
    """ResNet-18 up to the global average pool: [B, C, H, W] -> [B, 512]."""

    def __init__(self, in_channels: int = 3, stem: str = "imagenet") -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"model.stem must be one of {', '.join(STEMS)}, got {stem!r}")
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            )
        layers: list[nn.Module] = []
        in_ch = 64
        for i, width in enumerate(STAGE_WIDTHS):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(in_ch, width, stride), BasicBlock(width, width)))
            in_ch = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each block: every block starts as the identity (Goyal et al.).
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, 512]."""
        return self.pool(self.layers(self.stem(x))).flatten(1)


class ResNet18Encoder(nn.Module):
    """ResNet-18 backbone and a small MLP head to ``out_dim`` outputs.

    Args:
        in_dim: input channels (3 for RGB).
        out_dim: output dimension d (before the model's output head).
        negative_slope: slope of the head's LeakyReLU.
        stem: ``imagenet`` (7x7 stride 2 + max-pool) or ``small`` (3x3 stride 1); see the module doc.
        hidden: width of the head's hidden layer.
    """

    def __init__(
        self,
        in_dim: int = 3,
        out_dim: int = 10,
        *,
        negative_slope: float = 0.2,
        stem: str = "imagenet",
        hidden: int = 512,
        **_: object,
    ) -> None:
        super().__init__()
        self.backbone = ResNet18Backbone(in_dim, stem)
        self.head = nn.Sequential(
            nn.Linear(STAGE_WIDTHS[-1], hidden),
            nn.LeakyReLU(negative_slope),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] float -> [B, d]."""
        return self.head(self.backbone(x))
