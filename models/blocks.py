"""Building blocks of the lightweight encoder-decoders (seed 004): the shared
downsampler, ERFNet's non-bottleneck-1D, EDANet's EDA module, ESNet's FCU and
PFCU, LEDNet's SS-nbt with channel shuffle, and LEDNet's attention pyramid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-3  # the reference implementations' BatchNorm eps


def asym_pair(c: int, k: int, dilation: int = 1, vertical_first: bool = True) -> tuple[nn.Conv2d, nn.Conv2d]:
    """kx1 and 1xk convolutions (with bias), dilated along their long axis."""
    pad = (k // 2) * dilation
    v = nn.Conv2d(c, c, (k, 1), padding=(pad, 0), dilation=(dilation, 1))
    h = nn.Conv2d(c, c, (1, k), padding=(0, pad), dilation=(1, dilation))
    return (v, h) if vertical_first else (h, v)


class Downsampler(nn.Module):
    """conv 3x3 stride 2 (Cout - Cin channels) beside a 2x2 max-pool, concatenated,
    then BatchNorm and ReLU; the conv alone when Cin >= Cout."""

    def __init__(self, cin: int, cout: int, eps: float = EPS):
        super().__init__()
        self.use_pool = cin < cout
        self.conv = nn.Conv2d(cin, cout - cin if self.use_pool else cout, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2, stride=2) if self.use_pool else None
        self.bn = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, x):
        y = self.conv(x)
        if self.pool is not None:
            y = torch.cat([y, self.pool(x)], dim=1)
        return F.relu(self.bn(y))


class Upsampler(nn.Module):
    """ConvTranspose 3x3 stride 2 (output_padding 1) -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
        self.bn = nn.BatchNorm2d(cout, eps=EPS)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Factorized(nn.Module):
    """ERFNet's non-bottleneck-1D (k = 3) and ESNet's FCU (k = 3 or 5):
    kx1 -> ReLU -> 1xk -> BN -> ReLU -> kx1 dilated -> ReLU -> 1xk dilated -> BN
    -> Dropout -> add the input -> ReLU. Params 4kC^2 + 8C."""

    def __init__(self, c: int, dropout: float, dilation: int = 1, k: int = 3):
        super().__init__()
        self.conv3x1_1, self.conv1x3_1 = asym_pair(c, k)
        self.bn1 = nn.BatchNorm2d(c, eps=EPS)
        self.conv3x1_2, self.conv1x3_2 = asym_pair(c, k, dilation)
        self.bn2 = nn.BatchNorm2d(c, eps=EPS)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1x3_1(F.relu(self.conv3x1_1(x)))))
        y = self.bn2(self.conv1x3_2(F.relu(self.conv3x1_2(y))))
        return F.relu(x + self.dropout(y))


class PFCU(nn.Module):
    """ESNet's parallel factorised unit: a shared 3x1/1x3 pair, then three dilated
    branches (2, 5, 9) sharing one BatchNorm, as the reference code does."""

    def __init__(self, c: int, dropout: float = 0.3, dilations: tuple[int, ...] = (2, 5, 9)):
        super().__init__()
        self.conv3x1_1, self.conv1x3_1 = asym_pair(c, 3)
        self.bn1 = nn.BatchNorm2d(c, eps=EPS)
        self.branches = nn.ModuleList(nn.ModuleList(asym_pair(c, 3, d)) for d in dilations)
        self.bn2 = nn.BatchNorm2d(c, eps=EPS)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1x3_1(F.relu(self.conv3x1_1(x)))))
        out = x
        for v, h in self.branches:
            out = out + self.dropout(self.bn2(h(F.relu(v(y)))))
        return F.relu(out)


class EDAModule(nn.Module):
    """EDANet: 1x1 -> BN -> ReLU -> 3x1 -> 1x3 -> BN -> ReLU -> dilated 3x1 -> 1x3
    -> BN -> ReLU -> Dropout, concatenated before the input (Cin + k channels)."""

    def __init__(self, cin: int, dilation: int, k: int = 40, dropout: float = 0.02):
        super().__init__()
        self.conv1x1 = nn.Conv2d(cin, k, 1)
        self.bn0 = nn.BatchNorm2d(k)
        self.conv3x1_1, self.conv1x3_1 = asym_pair(k, 3)
        self.bn1 = nn.BatchNorm2d(k)
        self.conv3x1_2, self.conv1x3_2 = asym_pair(k, 3, dilation)
        self.bn2 = nn.BatchNorm2d(k)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x):
        y = F.relu(self.bn0(self.conv1x1(x)))
        y = F.relu(self.bn1(self.conv1x3_1(self.conv3x1_1(y))))
        y = F.relu(self.bn2(self.conv1x3_2(self.conv3x1_2(y))))
        return torch.cat([self.dropout(y), x], dim=1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class SSnbt(nn.Module):
    """LEDNet's split-shuffle non-bottleneck: two factorised halves (3x1 first on
    the left, 1x3 first on the right), concatenated, added to the input, ReLU,
    channel shuffle with 2 groups. Params 6C^2 + 8C."""

    def __init__(self, c: int, dropout: float, dilation: int = 1):
        super().__init__()
        half = c // 2
        self.left = nn.ModuleList([*asym_pair(half, 3), nn.BatchNorm2d(half, eps=EPS),
                                   *asym_pair(half, 3, dilation), nn.BatchNorm2d(half, eps=EPS)])
        self.right = nn.ModuleList([*asym_pair(half, 3, vertical_first=False), nn.BatchNorm2d(half, eps=EPS),
                                    *asym_pair(half, 3, dilation, vertical_first=False),
                                    nn.BatchNorm2d(half, eps=EPS)])
        self.dropout = nn.Dropout2d(dropout)

    @staticmethod
    def _branch(m: nn.ModuleList, x):
        a1, b1, n1, a2, b2, n2 = m
        y = F.relu(n1(b1(F.relu(a1(x)))))
        return n2(b2(F.relu(a2(y))))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        y = torch.cat([self.dropout(self._branch(self.left, x1)), self.dropout(self._branch(self.right, x2))], 1)
        return channel_shuffle(F.relu(x + y), 2)


def conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.BatchNorm2d(cout, eps=EPS),
                         nn.ReLU())


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class AttentionPyramid(nn.Module):
    """LEDNet's attention pyramid network (every conv is conv + BN + ReLU)."""

    def __init__(self, cin: int, classes: int):
        super().__init__()
        self.branch1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(cin, classes, 1))
        self.mid = conv_bn_relu(cin, classes, 1)
        self.down1 = conv_bn_relu(cin, 1, 7, stride=2)
        self.down2 = conv_bn_relu(1, 1, 5, stride=2)
        self.down3 = nn.Sequential(conv_bn_relu(1, 1, 3, stride=2), conv_bn_relu(1, 1, 3))
        self.conv2 = conv_bn_relu(1, 1, 5)
        self.conv1 = conv_bn_relu(1, 1, 7)

    def forward(self, x):
        h, w = x.shape[2:]
        # the global branch is one value per class: broadcasting it is exactly
        # the reference's align-corners upsampling of a 1x1 map
        glob = self.branch1(x)
        mid = self.mid(x)
        x1 = self.down1(x)
        x2 = self.down2(x1)
        x3 = resize(self.down3(x2), (h // 4, w // 4))
        y = resize(self.conv2(x2) + x3, (h // 2, w // 2))
        y = resize(self.conv1(x1) + y, (h, w))
        return y * mid + glob
