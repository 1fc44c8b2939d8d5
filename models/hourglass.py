"""The hourglass keypoint detector of the First Order Motion Model (FOMM).

Module and parameter names follow FOMM's `KPDetector`, so a FOMM checkpoint's
`kp_detector` state dict loads into the `baseline` variant as it is.

The forward pass is written for deployment; each rewrite computes exactly the
same function as FOMM's code (tests keep both side by side):
- the anti-aliased 256 -> 64 resize is one 13x13 depthwise blur with stride 4,
  instead of a full-resolution blur followed by keeping every 4th pixel
  (1/16 of the work);
- the keypoint expectation and the Jacobian weighting are matrix products
  over the flattened heatmap, instead of broadcast multiply-and-sum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from . import encdec, layers

if TYPE_CHECKING:  # the settings' type only: configs imports this module to build a model
    from .configs import DetectorConfig


class AntiAliasDownsample(nn.Module):
    """Gaussian blur (sigma = (1/scale - 1) / 2) and subsampling by 1/scale."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        size = 2 * round(sigma * 4) + 1
        coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        g = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel = torch.outer(g, g)
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, size, size).contiguous())
        self.stride = int(1 / scale)
        self.padding = size // 2
        self.groups = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding, groups=self.groups)


def extra_convs(depth: int, c: int, size: int, conv: str, norm: str) -> nn.Sequential | None:
    """`depth - 1` more conv -> norm -> ReLU at constant width (None for FOMM's depth 1,
    which keeps FOMM's parameter names)."""
    if depth == 1:
        return None
    return nn.Sequential(*[m for _ in range(depth - 1)
                           for m in (layers.conv(conv, c, c), layers.norm(norm, c, (size, size)), nn.ReLU())])


class DownBlock2d(nn.Module):
    """conv 3x3 -> norm -> ReLU (x depth) -> average pool 2x2."""

    def __init__(self, cin: int, cout: int, size: int, conv: str, norm: str, depth: int = 1):
        super().__init__()
        self.conv = layers.conv(conv, cin, cout)
        self.norm = layers.norm(norm, cout, (size, size))
        self.extra = extra_convs(depth, cout, size, conv, norm)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm(self.conv(x)))
        return self.pool(self.extra(y) if self.extra is not None else y)


class UpBlock2d(nn.Module):
    """x2 upsampling (nearest + conv 3x3, or a transposed conv) -> norm -> ReLU."""

    def __init__(self, cin: int, cout: int, size: int, conv: str, norm: str, upsample: str, depth: int = 1):
        super().__init__()
        self.up, self.conv = layers.upsample(upsample, cin, cout, conv)
        self.norm = layers.norm(norm, cout, (size, size))
        self.extra = extra_convs(depth, cout, size, conv, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm(self.conv(self.up(x))))
        return self.extra(y) if self.extra is not None else y


class Encoder(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        widths = cfg.widths
        self.down_blocks = nn.ModuleList(
            DownBlock2d(cin, cout, cfg.hourglass_size >> i, cfg.conv, cfg.norm, cfg.depth)
            for i, (cin, cout) in enumerate(zip(widths, widths[1:]))
        )
        self.channels = widths

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Takes the encoder's widths; concatenates each skip after upsampling."""

    def __init__(self, channels: tuple[int, ...], hourglass_size: int, cfg: DetectorConfig):
        super().__init__()
        blocks, cin = [], channels[-1]
        for i in reversed(range(len(channels) - 1)):
            cout = channels[i] if i > 0 else cfg.block_expansion
            blocks.append(UpBlock2d(cin, cout, hourglass_size >> i, cfg.conv, cfg.norm, cfg.upsample, cfg.depth))
            cin = cout + channels[i]
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = cin

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1])):
            out = torch.cat([block(out), skip], dim=1)
        return out


class Hourglass(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(self.encoder.channels, cfg.hourglass_size, cfg)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def coordinate_grid(h: int, w: int) -> torch.Tensor:
    """(h*w, 2) grid of (x, y) in [-1, 1], row-major like a flattened heatmap."""
    x = 2 * torch.arange(w, dtype=torch.float32) / (w - 1) - 1
    y = 2 * torch.arange(h, dtype=torch.float32) / (h - 1) - 1
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx, yy], dim=-1).reshape(h * w, 2)


class KeypointDetector(nn.Module):
    """Anti-aliased resize -> hourglass -> 7x7 keypoint and Jacobian heads.

    Input (B, 3, H, W) in [0, 1]. Output dict: `value` (B, K, 2) keypoints in
    [-1, 1] as (x, y); `jacobian` (B, K, 2, 2); `heatmap` (B, K, h, w).
    """

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.config = cfg
        self.down = AntiAliasDownsample(cfg.channels, cfg.scale_factor)
        if cfg.predictor == "hourglass":
            self.predictor = Hourglass(cfg)
        else:  # an encoder-decoder whose output width is what the hourglass would give the heads
            self.predictor = encdec.BUILDERS[cfg.predictor](cfg.block_expansion + cfg.channels)
        width, k = self.predictor.out_filters, cfg.num_kp
        self.kp = layers.conv(cfg.head_conv, width, k, 7, padding=cfg.pad)
        self.jacobian = layers.conv(cfg.head_conv, width, 4 * k, 7, padding=cfg.pad)
        last = self.jacobian if cfg.head_conv == "standard" else self.jacobian[-1]
        nn.init.zeros_(last.weight)
        last.bias.data.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0] * k))
        side = cfg.heatmap_size
        self.register_buffer("grid", coordinate_grid(side, side), persistent=False)
        self.temperature = cfg.temperature

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.predictor(self.down(x))
        return self.extract(self.kp(features), self.jacobian(features))

    def extract(self, logits: torch.Tensor, jmaps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keypoints as the heatmap-weighted mean of the grid, and the Jacobians
        weighted by the same heatmaps, from the two heads' outputs."""
        b, k, h, w = logits.shape
        heat = torch.softmax(logits.reshape(b, k, h * w) / self.temperature, dim=2)
        value = heat @ self.grid  # (B, K, 2)
        jacobian = (jmaps.reshape(b, k, 4, h * w) @ heat.unsqueeze(-1)).reshape(b, k, 2, 2)
        return {"value": value, "jacobian": jacobian, "heatmap": heat.reshape(b, k, h, w)}
