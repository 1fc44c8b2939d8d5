"""Stage: golden vectors: seeded inputs and the PyTorch outputs on them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from runtime.compare import output_parity
from runtime.spec import ModelSpec
from runtime.tasks import task_of

from .contract import Exportable, example_tensors


def golden_inputs(spec: ModelSpec, batch: int, seed: int, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs for every input of `spec` at its example shape (with `batch`, and
    the image at `size` if given): images for 4-D float inputs, spread over the
    input's value range; uniform numbers in the range (or [0, 1)) for other floats;
    small integers for integer inputs."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i, t in enumerate(spec.inputs):
        shape = t.at(batch, *(size if size is not None and i == 0 else (None, None)))
        lo, hi = t.range or (0.0, 1.0)
        if t.dtype.startswith("float") and len(shape) == 4:
            x = lo + (hi - lo) * image_batch(shape, rng)
        elif t.dtype.startswith("float"):
            x = rng.uniform(lo, hi, shape)
        elif t.dtype == "bool":
            x = rng.random(shape) < 0.5
        else:
            x = rng.integers(int(lo) if t.range else 0, int(hi) + 1 if t.range else 10, shape)
        feeds[t.name] = np.ascontiguousarray(x.astype(t.dtype))
    return feeds


def image_batch(shape: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Image-like arrays in [0, 1]: smooth random gradients and blobs plus fine
    noise, so that both low and high frequencies reach the network (pure noise
    would be flattened by the anti-aliased resize)."""
    batch, c, h, w = shape
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


def reference_outputs(model: Exportable, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch's outputs, named as the spec names them."""
    with torch.no_grad():
        out = model(*example_tensors(model.spec, inputs))
    return {k: v.detach().numpy().copy() for k, v in zip(model.spec.outputs, out)}


NOISE_DRAWS = 8  # one-ulp input perturbations


def reference_noise(model: Exportable, inputs: Mapping[str, np.ndarray], reference: dict[str, np.ndarray],
                    float64: bool = True) -> dict[str, float]:
    """How precisely the reference itself is known: the largest relative move
    of PyTorch's float32 outputs under float64 evaluation (unless `float64` is
    False: at a second size only the tie flips below are new), or under a change
    of the input by one float32 ulp (NOISE_DRAWS seeded draws). Networks that
    route values through an argmax (max-unpool with indices) flip near-ties under
    any rounding difference; one comparison alone samples only some of those flips."""
    noise = dict.fromkeys(model.spec.outputs, 0.0)
    floors = task_of(model.spec).scales()  # measured on the scale parity measures artifacts on
    if float64:
        with torch.no_grad():
            exact = copy.deepcopy(model).double()(*(x.double() if x.is_floating_point() else x
                                                    for x in example_tensors(model.spec, inputs)))
        noise = {k: output_parity(k, e.numpy(), reference[k], 0.0, floors.get(k, 0.0)).max_rel
                 for k, e in zip(model.spec.outputs, exact)}
    rng = np.random.default_rng(0)
    for _ in range(NOISE_DRAWS):
        moved = reference_outputs(model, {k: one_ulp(v, rng) for k, v in inputs.items()})
        noise = {k: max(n, output_parity(k, reference[k], moved[k], 0.0, floors.get(k, 0.0)).max_rel)
                 for k, n in noise.items()}
    return noise


def one_ulp(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`x` with each float32 value moved up or down by one ulp, at random."""
    if x.dtype != np.float32:
        return x
    return (x * (1 + rng.choice(np.float32([-1, 1]), x.shape) * np.finfo(np.float32).eps)).astype(np.float32)


def save_golden(path: Path, sets: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
                extra: dict[str, np.ndarray] | None = None) -> None:
    """`sets`: name -> (inputs, outputs); the "golden" set is stored as input.X /
    output.X, any other set as <name>.input.X / <name>.output.X; `extra` as named
    (the labelled set's labels: truth.label)."""
    arrays = dict(extra or {})
    for name, (inputs, outputs) in sets.items():
        prefix = "" if name == "golden" else f"{name}."
        arrays.update({f"{prefix}input.{k}": v for k, v in inputs.items()})
        arrays.update({f"{prefix}output.{k}": v for k, v in outputs.items()})
    np.savez_compressed(path, **arrays)
