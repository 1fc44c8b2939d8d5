"""Parameter and mult-add counts, as torchinfo counts them."""

from __future__ import annotations

import torch
import torchinfo
from torch import nn


def model_stats(model: nn.Module, input_shape: tuple[int, ...] | None = None,
                input_data: tuple[torch.Tensor, ...] | None = None) -> dict[str, int]:
    """Parameters and mult-adds of one call at batch 1: on one input of `input_shape`
    (without the batch axis), or on the tensors `input_data`."""
    if input_data is not None:
        summary = torchinfo.summary(model, input_data=list(input_data), verbose=0, device="cpu")
    else:
        summary = torchinfo.summary(model, input_size=(1, *input_shape), verbose=0, device="cpu")
    return {"params": sum(p.numel() for p in model.parameters()), "mult_adds": int(summary.total_mult_adds)}
