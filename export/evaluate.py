"""`python -m export evaluate BUNDLE`: a bundle's task metrics against the truth.

On the generated held-out split, the bundle's artifact runs through the device
runtime (the same code as on the device), scored by its task plugin: keypoint
error in pixels, or pixel accuracy and mIoU. Only the bundle is needed: its spec
says the task. On the user's labelled data (`--data`, `runtime.labelled`), the
PyTorch model is remade from the manifest (`pytorch_model`) and scored beside
every artifact, as the reference their drops are taken against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import models
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


class TorchRunner:
    """The bundle's PyTorch model behind the runners' `infer`, for `evaluate`'s reference row."""

    backend, precision = "pytorch", "fp32"

    def __init__(self, model):
        self.model = model

    def infer(self, feeds):
        """As a runner's `infer`: named arrays, or the one input's array."""
        from .golden import reference_outputs

        if not isinstance(feeds, dict):
            feeds = {self.model.spec.input_names[0]: feeds}
        return reference_outputs(self.model, feeds)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def pytorch_model(bundle: str | Path):
    """The bundle's PyTorch model remade from its manifest (a zoo variant and its overrides, or a user's
    code and its arguments; the checkpoint where it still is, unchanged), checked against the build's own
    golden outputs; or (None, why not)."""
    from models.checkpoint import load_into
    from models.user import make_module
    from runtime.bundle import sha256
    from runtime.compare import compare

    from .contract import Exportable
    from .golden import reference_outputs

    opened = runtime.Bundle.open(bundle)
    source, checkpoint = opened.spec.source, opened.manifest.get("checkpoint")
    path = Path(checkpoint["path"]) if checkpoint else None
    if path is not None and not path.is_file():
        return None, f"its checkpoint {checkpoint['path']} is not here"
    if path is not None and sha256(path) != checkpoint["sha256"]:
        return None, f"its checkpoint {checkpoint['path']} has changed since the build"
    if "variant" in source:
        module, _ = models.load(source["variant"], path, **source.get("overrides", {}))
    elif "model" in source:
        module = make_module(source["model"], source.get("args", {}))
        if path is not None:
            load_into(module, path)
    else:
        return None, "it was built from a module handed to export.build, which its manifest cannot remake"
    model = Exportable(module, opened.spec).eval()
    inputs, outputs = opened.golden()
    if not compare(outputs, reference_outputs(model, inputs), 1e-4).passed:
        return None, "the model remade from its manifest does not give the build's golden outputs (random weights?)"
    return model, ""
