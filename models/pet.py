"""Pet segmentation networks of seed 002: SegNet (max-pool indices, max-unpool)
and a standard U-Net, each with standard or depthwise separable convolutions
(3 classes: pet, background, border; 128x128 input)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from . import layers

if TYPE_CHECKING:  # the settings' type only: configs imports this module to build a model
    from .configs import PetConfig
from .encdec import Segmenter


def conv_bn_relu(kind: str, cin: int, cout: int) -> list[nn.Module]:
    """A 3x3 conv without bias (standard, or depthwise + pointwise), BN, ReLU."""
    return [layers.conv(kind, cin, cout, 3, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SegNetDown(nn.Module):
    def __init__(self, kind: str, cin: int, cout: int, n: int):
        super().__init__()
        self.seq = nn.Sequential(*conv_bn_relu(kind, cin, cout),
                                 *[m for _ in range(n - 1) for m in conv_bn_relu(kind, cout, cout)])
        self.pool = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x):
        y = self.seq(x)
        pooled, indices = self.pool(y)
        return pooled, indices, y.shape


class SegNetUp(nn.Module):
    """Max-unpool with the encoder's indices, then convs that keep the width
    until the last one changes it."""

    def __init__(self, kind: str, cin: int, cout: int, n: int):
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2)
        self.seq = nn.Sequential(*[m for _ in range(n - 1) for m in conv_bn_relu(kind, cin, cin)],
                                 *conv_bn_relu(kind, cin, cout))

    def forward(self, x, indices, size):
        return self.seq(self.unpool(x, indices, output_size=size))


class SegNet(nn.Module):
    def __init__(self, kind: str, classes: int):
        super().__init__()
        self.bn_input = nn.BatchNorm2d(3)
        self.down = nn.ModuleList([SegNetDown(kind, 3, 64, 2), SegNetDown(kind, 64, 128, 2),
                                   SegNetDown(kind, 128, 256, 3), SegNetDown(kind, 256, 512, 3)])
        self.up = nn.ModuleList([SegNetUp(kind, 512, 256, 3), SegNetUp(kind, 256, 128, 3),
                                 SegNetUp(kind, 128, 64, 2), SegNetUp(kind, 64, classes, 2)])

    def forward(self, x):
        x = self.bn_input(x)
        saved = []
        for block in self.down:
            x, indices, size = block(x)
            saved.append((indices, size))
        for block, (indices, size) in zip(self.up, reversed(saved)):
            x = block(x, indices, size)
        return x


class UNet(nn.Module):
    """Two 3x3 conv + BN + ReLU per level, max-pool down, 2x2 transposed conv up,
    skip concatenation, 1x1 classifier."""

    def __init__(self, kind: str, classes: int, base: int, levels: int = 4):
        super().__init__()
        widths = [base * 2**i for i in range(levels + 1)]

        def double(cin, cout):
            return nn.Sequential(*conv_bn_relu(kind, cin, cout), *conv_bn_relu(kind, cout, cout))

        self.inc = double(3, widths[0])
        self.down = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), double(a, b)) for a, b in zip(widths, widths[1:]))
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths, widths[1:]))
        self.merge = nn.ModuleList(double(2 * a, a) for a in widths[:-1])
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        y = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge)):
            y = merge(torch.cat([skips.pop(), up(y)], dim=1))
        return self.head(y)


def build(config: PetConfig) -> Segmenter:
    net = SegNet(config.conv, config.num_classes) if config.arch == "segnet" else UNet(
        config.conv, config.num_classes, config.base)
    return Segmenter(config, he_init_(net))


def he_init_(net: nn.Module) -> nn.Module:
    """He (fan-out, ReLU) initialisation of every conv, as SegNet and U-Net
    implementations do. PyTorch's default init shrinks the signal about 3x per
    layer; through SegNet's 20 bias-free convs its untrained logits would be
    ~1e-9, and a parity check on them would compare rounding noise.

    A depthwise conv's fan-out is its kernel size times the outputs per group:
    PyTorch's `kaiming_normal_` ignores groups and would draw its weights
    sqrt(channels) times too small (SegNet-DSC's logits fell to ~1e-20)."""
    for m in net.modules():
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            fan_out = m.out_channels // m.groups * m.weight[0, 0].numel()
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        else:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return net
