"""Lightweight encoder-decoders of seed 004: ERFNet, EDANet, ESNet, LEDNet.

Strict encoder-decoders (no skips between encoder and decoder), as published,
with Cityscapes' 19 classes by default. Each returns logits at the input's
resolution, so the same network also serves as a keypoint detector's predictor
(`out_filters` is its output width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import PFCU, SSnbt, AttentionPyramid, Downsampler, EDAModule, Factorized, Upsampler

class EncoderDecoder(nn.Module):
    def __init__(self, encoder: list[nn.Module], decoder: list[nn.Module], classes: int):
        super().__init__()
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        self.out_filters = classes

    def forward(self, x):
        return self.decoder(self.encoder(x))


def erfnet(classes: int) -> EncoderDecoder:
    encoder = [Downsampler(3, 16), Downsampler(16, 64), *[Factorized(64, 0.03) for _ in range(5)],
               Downsampler(64, 128), *[Factorized(128, 0.3, d) for _ in range(2) for d in (2, 4, 8, 16)]]
    decoder = [Upsampler(128, 64), Factorized(64, 0.0), Factorized(64, 0.0),
               Upsampler(64, 16), Factorized(16, 0.0), Factorized(16, 0.0),
               nn.ConvTranspose2d(16, classes, 2, stride=2)]
    return EncoderDecoder(encoder, decoder, classes)


def esnet(classes: int) -> EncoderDecoder:
    encoder = [Downsampler(3, 16), *[Factorized(16, 0.03, k=3) for _ in range(3)],
               Downsampler(16, 64), *[Factorized(64, 0.03, k=5) for _ in range(2)],
               Downsampler(64, 128), *[PFCU(128) for _ in range(3)]]
    decoder = [Upsampler(128, 64), Factorized(64, 0.0, k=5), Factorized(64, 0.0, k=5),
               Upsampler(64, 16), Factorized(16, 0.0, k=3), Factorized(16, 0.0, k=3),
               nn.ConvTranspose2d(16, classes, 2, stride=2)]
    return EncoderDecoder(encoder, decoder, classes)


class Upsample8(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=8.0, mode="bilinear", align_corners=True)


def edanet(classes: int) -> EncoderDecoder:
    encoder: list[nn.Module] = [Downsampler(3, 15, eps=1e-5), Downsampler(15, 60, eps=1e-5)]
    width = 60
    for d in (1, 1, 1, 2, 2):
        encoder.append(EDAModule(width, d))
        width += 40
    encoder.append(Downsampler(width, 130, eps=1e-5))
    width = 130
    for d in (2, 2, 4, 4, 8, 8, 16, 16):
        encoder.append(EDAModule(width, d))
        width += 40
    decoder = [nn.Conv2d(width, classes, 1), Upsample8()]
    return EncoderDecoder(encoder, decoder, classes)


class LEDNet(EncoderDecoder):
    """The final upsampling follows the input size (the reference fixes 512x1024)."""

    def forward(self, x):
        return F.interpolate(self.decoder(self.encoder(x)), size=x.shape[2:], mode="bilinear", align_corners=True)


def lednet(classes: int) -> EncoderDecoder:
    encoder = [Downsampler(3, 32), *[SSnbt(32, 0.03) for _ in range(3)],
               Downsampler(32, 64), *[SSnbt(64, 0.03) for _ in range(2)],
               Downsampler(64, 128), *[SSnbt(128, 0.3, d) for d in (1, 2, 5, 9, 2, 5, 9, 17)]]
    return LEDNet(encoder, [AttentionPyramid(128, classes)], classes)


BUILDERS = {"erfnet": erfnet, "edanet": edanet, "esnet": esnet, "lednet": lednet}


class Segmenter(nn.Module):
    """Wraps a network so that its forward returns the named output dict."""

    def __init__(self, config, net: nn.Module):
        super().__init__()
        self.config = config
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}
