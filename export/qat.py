"""Stage: quantization-aware fine-tuning (`--qat STEPS`), for when post-training quantization loses.

The FP32 model is fine-tuned with INT8 rounding simulated in the loop, the way
the quantizers will round it: every convolution's and linear layer's weights per
output channel (symmetric, S8) and its input per tensor (asymmetric, U8, over the
range seen so far). PyTorch's `fake_quantize_*` ops pass the gradient straight
through the rounding. The loss is distillation, the fine-tuned model's outputs
against the FP32 model's on the calibration images: INT8 is judged on agreement
with the FP32 model, so that is what is learned, and no labels are needed (a
user's `--calib-dir` serves as well as the generated task's images).

What comes out is a module with FP32 weights that round well; the plans
quantize it like any other, and its INT8 attempts go on the same frontier.
"""

from __future__ import annotations

import copy
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .contract import Exportable, example_tensors

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


class _Weights(nn.Module):
    """Per-output-channel symmetric S8 rounding of a weight (ConvTranspose: channels on axis 1)."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(w.dim()) if d != self.axis]
        scale = (w.detach().abs().amax(dim=dims) / 127).clamp(min=1e-8)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, self.axis, -128, 127)


class _Inputs:
    """Per-tensor asymmetric U8 rounding of a layer's input over the range seen so far."""

    def __init__(self):
        self.lo, self.hi = 0.0, 0.0

    def __call__(self, _module, args):
        x = args[0]
        if torch.is_grad_enabled():
            self.lo, self.hi = min(self.lo, float(x.detach().min())), max(self.hi, float(x.detach().max()))
        scale = max(self.hi - self.lo, 1e-8) / 255
        zero = int(round(-self.lo / scale))
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *args[1:])


def finetune(model: Exportable, feeds: Mapping[str, np.ndarray], steps: int, lr: float = 1e-4, batch: int = 4,
             seed: int = 0, losses: list[float] | None = None) -> Exportable:
    """A copy of `model` fine-tuned for `steps` steps with INT8 rounding simulated, towards
    the outputs of `model` itself on `feeds` (name -> (N, ...) arrays, batches drawn from
    them); each step's loss is appended to `losses` if given."""
    torch.manual_seed(seed)
    teacher = model.eval()
    student = copy.deepcopy(model).eval()  # eval: batch statistics and dropout stay as trained; gradients flow
    hooks = []
    for layer in student.modules():
        if isinstance(layer, LAYERS):
            parametrize.register_parametrization(layer, "weight", _Weights(1 if isinstance(layer, nn.ConvTranspose2d)
                                                                           else 0))
            hooks.append(layer.register_forward_pre_hook(_Inputs()))
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    count = len(next(iter(feeds.values())))
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        pick = rng.choice(count, size=min(batch, count), replace=False)
        inputs = example_tensors(model.spec, {k: v[pick] for k, v in feeds.items()})
        with torch.no_grad():
            targets = teacher(*inputs)
        loss = sum(nn.functional.mse_loss(out, target) / (target.var() + 1e-8)
                   for out, target in zip(student(*inputs), targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if losses is not None:
            losses.append(float(loss.detach()))
    for hook in hooks:
        hook.remove()
    for layer in student.modules():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    return student.eval()
