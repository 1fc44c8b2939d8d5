"""Models a user might bring, defined here: what `--model` must take and what it must refuse."""

import torch
from torch import nn


class RGBDSegmenter(nn.Module):
    """Two inputs with their own names (an RGB image and a depth map) and a tuple
    output: per-pixel class logits at the input's size and a global embedding."""

    def __init__(self, classes: int = 4, width: int = 8):
        super().__init__()
        self.rgb = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.depth = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.head = nn.Conv2d(width, classes, 1)
        self.embed = nn.Linear(2 * width, 16)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor):
        fused = self.rgb(rgb) + self.depth(depth)
        low = torch.relu(self.down(fused))
        logits = self.head(self.up(low) + fused)
        return logits, self.embed(low.mean(dim=(2, 3)))


def make_segmenter(classes: int = 4):
    return RGBDSegmenter(classes=classes)


class Branchy(nn.Module):
    """Data-dependent control flow: torch.export cannot trace it; TorchScript's tracer records the branch taken."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > -100:
            y = y * 2
        return y


class Spectral(nn.Module):
    """Singular values: an op neither ONNX exporter knows."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.linalg.svdvals(self.conv(x).flatten(2))


def broken(width: int = 8):
    raise RuntimeError(f"no weights for width {width}")


def not_a_module():
    return {"conv": nn.Conv2d(3, 4, 3)}
