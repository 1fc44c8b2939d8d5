"""Stage: golden vectors: seeded inputs and the PyTorch outputs on them."""

from __future__ import annotations

from pathlib import Path

import copy

import numpy as np
import torch
from torch import nn

from runtime.compare import output_parity


def golden_inputs(shape: tuple[int, ...], batch: int, seed: int) -> np.ndarray:
    """Image-like inputs in [0, 1]: smooth random gradients and blobs plus fine
    noise, so that both low and high frequencies reach the network (pure noise
    would be flattened by the anti-aliased resize)."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    images = np.empty((batch, c, h, w), np.float32)
    for b in range(batch):
        for ch in range(c):
            img = rng.uniform(0.2, 0.8) + 0.3 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)
            for _ in range(6):
                cx, cy, r, a = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.3), rng.uniform(-0.5, 0.5)
                img += a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))
            img += rng.normal(0, 0.05, (h, w))
            images[b, ch] = np.clip(img, 0, 1)
    return images


def reference_outputs(model: nn.Module, inputs: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(inputs))
    return {k: v.numpy() for k, v in out.items()}


NOISE_DRAWS = 8  # one-ulp input perturbations


def reference_noise(model: nn.Module, inputs: np.ndarray, reference: dict[str, np.ndarray]) -> dict[str, float]:
    """How precisely the reference itself is known: the largest relative move
    of PyTorch's float32 outputs under float64 evaluation, or under a change of
    the input by one float32 ulp (NOISE_DRAWS seeded draws). Networks that route
    values through an argmax (max-unpool with indices) flip near-ties under any
    rounding difference; one comparison alone samples only some of those flips."""
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(torch.from_numpy(inputs).double())
    noise = {k: output_parity(k, exact[k].numpy(), v, 0.0).max_rel for k, v in reference.items()}
    rng = np.random.default_rng(0)
    for _ in range(NOISE_DRAWS):
        ulp = rng.choice(np.float32([-1, 1]), inputs.shape) * np.finfo(np.float32).eps
        moved = reference_outputs(model, (inputs * (1 + ulp)).astype(np.float32))
        noise = {k: max(n, output_parity(k, reference[k], moved[k], 0.0).max_rel) for k, n in noise.items()}
    return noise


def save_golden(path: Path, sets: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> None:
    """`sets`: name -> (inputs, outputs); the "golden" set is stored as input.X /
    output.X, any other set as <name>.input.X / <name>.output.X."""
    arrays = {}
    for name, (inputs, outputs) in sets.items():
        prefix = "" if name == "golden" else f"{name}."
        arrays.update({f"{prefix}input.{k}": v for k, v in inputs.items()})
        arrays.update({f"{prefix}output.{k}": v for k, v in outputs.items()})
    np.savez_compressed(path, **arrays)
