"""A short CPU training run on a generated task, and the task metrics.

Detectors learn the keypoints (L1 on the keypoint coordinates, through the
soft-argmax the detector ends in); pet segmenters learn the trimap
(cross-entropy). The metrics are numpy functions of the runtime package, so a
bundle's outputs are scored by the very same code on the device.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from runtime.errors import UserError, check_positive
from runtime.files import atomic_file
from runtime.spec import ModelSpec
from runtime.tasks import task_of

from .registry import create, spec as variant_spec
from .tasks import HELDOUT_SAMPLES, heldout, task_for

def _side(spec: ModelSpec) -> int:
    """The side of the square images a generated task is drawn at: the model's example size."""
    return spec.image.example[2]


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        check_positive(f"--{name}", value)


def train(variant: str, steps: int = 200, batch: int = 8, lr: float = 2e-3, seed: int = 0,
          out: Path | None = None, checkpoint: Path | None = None,
          progress: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train `variant` (from random init drawn from `seed`, or from `checkpoint`)
    for `steps` Adam steps on its generated task; save the state_dict to `out`.
    The same seed gives the same weights (samples are drawn by index from seeds)."""
    _check_positive(steps=steps, batch=batch, lr=lr)
    spec = variant_spec(variant)
    task = task_for(spec)
    size = _side(spec)
    if out is not None and Path(out).is_dir():
        raise UserError(f"--out {str(out)!r} is a folder; expected a file name for the checkpoint, e.g. {variant}.pt")
    model = create(variant, checkpoint=checkpoint, seed=seed).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.15)
    order = np.random.default_rng(seed).permutation(steps * batch)
    losses = []
    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for step in range(steps):
            images, targets = task.batch(order[step * batch:(step + 1) * batch], "train", size)
            loss = task.loss(model(torch.from_numpy(images)), torch.from_numpy(targets))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            if progress:
                progress(step + 1, losses[-1])
    seconds = time.perf_counter() - start
    model.eval()
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out) as partial:
            torch.save(model.state_dict(), partial)
    return {"variant": variant, "task": task.kind, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
            "seconds": seconds, "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:])),
            "threads": torch.get_num_threads(), "out": str(out) if out else None, "model": model}


def evaluate(variant: str, checkpoint: Path | None = None, samples: int = HELDOUT_SAMPLES, batch: int = 16,
             model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Task metrics of `variant` (PyTorch) on the held-out split."""
    _check_positive(samples=samples, batch=batch)
    spec = variant_spec(variant)
    images, targets = heldout(task_for(spec), _side(spec), samples)
    model = (model or create(variant, checkpoint=checkpoint)).eval()
    outputs: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for i in range(0, samples, batch):
            for name, value in model(torch.from_numpy(images[i:i + batch])).items():
                outputs.setdefault(name, []).append(value.numpy())
    joined = {name: np.concatenate(parts) for name, parts in outputs.items()}
    return {"variant": variant, "checkpoint": str(checkpoint) if checkpoint else None, "samples": samples,
            "runtime": "pytorch", **task_of(spec).metrics(targets, joined)}
