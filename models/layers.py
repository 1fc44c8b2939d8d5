"""Layer factories: the one place where a conv, norm or upsample kind is chosen.

Every block of every family asks these factories for its layers, so swapping
standard convolution for a depthwise separable one (or BatchNorm for GroupNorm)
is one argument, not a rewrite.
"""

from __future__ import annotations

from torch import nn

from .kinds import CONV_KINDS, NORM_KINDS, UPSAMPLE_KINDS, check_kind


class SeparableConv2d(nn.Sequential):
    """Depthwise kxk (one filter per channel) followed by a pointwise 1x1."""

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int, bias: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, kernel_size, padding=padding, groups=cin, bias=bias)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=bias)


class AsymmetricConv2d(nn.Sequential):
    """A kxk convolution factorised into kx1 then 1xk (a third fewer weights at k=3)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int, bias: bool = True):
        super().__init__()
        self.vertical = nn.Conv2d(cin, cout, (kernel_size, 1), padding=(padding, 0), bias=bias)
        self.horizontal = nn.Conv2d(cout, cout, (1, kernel_size), padding=(0, padding), bias=bias)


def conv(kind: str, cin: int, cout: int, kernel_size: int = 3, padding: int | None = None,
         bias: bool = True) -> nn.Module:
    """A stride-1 convolution of the given kind; `padding` defaults to 'same'."""
    check_kind("conv", kind, CONV_KINDS)
    padding = kernel_size // 2 if padding is None else padding
    if kind == "standard":
        return nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=bias)
    if kind == "dsc":
        return SeparableConv2d(cin, cout, kernel_size, padding, bias)
    return AsymmetricConv2d(cin, cout, kernel_size, padding, bias)


def norm(kind: str, channels: int, spatial: tuple[int, int] | None = None) -> nn.Module:
    """A normalisation layer of the given kind.

    LayerNorm normalises over (C, H, W) with an elementwise affine, as in the
    seed's benchmark (8,192 parameters at (1024, 2, 2)), so it needs the
    spatial size the layer will see. GroupNorm uses channels // 2 groups.
    """
    check_kind("norm", kind, NORM_KINDS)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(max(channels // 2, 1), channels)
    if spatial is None:
        raise ValueError("LayerNorm over (C, H, W) needs the spatial size of its input")
    return nn.LayerNorm([channels, *spatial])


class Interpolate2x(nn.Module):
    """Nearest-neighbour x2 upsampling (no parameters)."""

    def forward(self, x):
        return nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")


def upsample(kind: str, cin: int, cout: int, conv_kind: str = "standard") -> tuple[nn.Module, nn.Module]:
    """Double the resolution and change the width, as a (resize, conv) pair.

    `interp`: nearest x2 then a 3x3 conv of `conv_kind`. `transpose`: one
    ConvTranspose2d(3, stride 2, padding 1, output_padding 1), which has the
    same parameter count as the 3x3 conv. Two parts so that blocks keep the
    conv's parameter names whatever the kind.
    """
    check_kind("upsample", kind, UPSAMPLE_KINDS)
    if kind == "interp":
        return Interpolate2x(), conv(conv_kind, cin, cout)
    return nn.Identity(), nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
