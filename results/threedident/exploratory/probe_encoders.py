"""Exploratory encoders for issue 17's supervised-ceiling probes (plugin; not part of the package)."""
import torch.nn.functional as F
from torch import nn
from clinvert.models import register_encoder


class WideConv(nn.Module):
    def __init__(self, in_dim, out_dim, widths=(64, 64, 128, 128), hidden=512, bn=False, stem=0, **_):
        super().__init__()
        layers = []
        c = in_dim
        if stem:
            layers += [nn.Conv2d(c, stem, 3, padding=1, bias=not bn)] + ([nn.BatchNorm2d(stem)] if bn else []) + [nn.ReLU(inplace=True)]
            c = stem
        for w in widths:
            layers += [nn.Conv2d(c, w, 4, stride=2, padding=1, bias=not bn)] + ([nn.BatchNorm2d(w)] if bn else []) + [nn.ReLU(inplace=True)]
            c = w
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.last = nn.Sequential(nn.Conv2d(c, hidden, 4), nn.ReLU(inplace=True))
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x):
        return self.linear(self.last(self.pool(self.stages(x))).flatten(1))


register_encoder("convx2", lambda i, o, **k: WideConv(i, o), inputs="image")
register_encoder("convx2bn", lambda i, o, **k: WideConv(i, o, bn=True), inputs="image")
register_encoder("convx2bns", lambda i, o, **k: WideConv(i, o, bn=True, stem=32), inputs="image")
register_encoder("convx4bn", lambda i, o, **k: WideConv(i, o, widths=(128, 128, 256, 256), hidden=512, bn=True), inputs="image")
