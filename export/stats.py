"""Parameter and mult-add counts, as torchinfo counts them."""

from __future__ import annotations

import torchinfo
from torch import nn


def model_stats(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    summary = torchinfo.summary(model, input_size=(1, *input_shape), verbose=0, device="cpu")
    return {"params": sum(p.numel() for p in model.parameters()), "mult_adds": int(summary.total_mult_adds)}
