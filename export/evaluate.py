"""`python -m export evaluate BUNDLE`: a bundle's task metrics on the generated held-out split.

The bundle's artifact runs through the device runtime (the same code as on the
device), scored by its task plugin against the truth: keypoint error in pixels,
or pixel accuracy and mIoU. Only the bundle is needed: its spec says the task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import runtime
from models.tasks import HELDOUT_SAMPLES, heldout, task_for
from runtime.errors import check_positive
from runtime.tasks import task_of


def evaluate_bundle(bundle: str | Path, backend: str | None = None, precision: str | None = None,
                    samples: int = HELDOUT_SAMPLES, threads: int | None = None) -> dict[str, Any]:
    """Task metrics of one artifact of `bundle` (default: the recommended one) on `samples` held-out images."""
    check_positive("--samples", samples)
    opened = runtime.Bundle.open(bundle)
    spec = opened.spec
    images, targets = heldout(task_for(spec), spec.image.example[2], samples)
    with runtime.load(opened, backend, precision, threads) as runner:
        outputs = [runner.infer(images[i:i + 1]) for i in range(samples)]
        how = f"{runner.backend} {runner.precision}"
    joined = {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}
    return {"model": opened.name, "bundle": str(opened.path), "samples": samples, "runtime": how,
            **task_of(spec).metrics(targets, joined)}
