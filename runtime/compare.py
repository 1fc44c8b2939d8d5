"""Parity figures between reference outputs and an artifact's outputs.

Works on dicts of numpy arrays and imports no backend (Polygraphy's
runner/comparator split). Figures per output: max abs, mean abs, max relative
(max abs over the reference's range, so a bound means the same for a heatmap
in [0, 0.01] and a Jacobian around 1), cosine similarity; and for detectors
the keypoint error in pixels of the input image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

# Bounds on max relative error, by backend and precision (recorded in the manifest).
BOUNDS: dict[tuple[str, str], float] = {
    ("onnxruntime", "fp32"): 1e-4,
    ("openvino", "fp32"): 1e-3,
    ("openvino", "fp16"): 1e-2,
    # INT8 is judged by the task (below); the tensor bound only catches a broken model
    ("onnxruntime", "int8"): 1.0,
    ("openvino", "int8"): 1.0,
}

# Task-level bounds against PyTorch FP32, by precision: (kind, limit) with kind
# "max" (the figure may not exceed the limit) or "min" (may not fall below it).
TASK_BOUNDS: dict[str, dict[str, tuple[str, float]]] = {
    "int8": {"keypoint_error_px": ("max", 0.5), "miou": ("min", 0.99)},
}


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
    bound: float

    @property
    def passed(self) -> bool:
        return bool(self.max_rel <= self.bound)


@dataclass(frozen=True)
class Parity:
    outputs: list[OutputParity]
    task: dict[str, float] = field(default_factory=dict)
    task_bounds: Mapping[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs) and not self.task_failures()

    def task_failures(self) -> list[str]:
        failures = []
        for name, (kind, limit) in self.task_bounds.items():
            value = self.task.get(name)
            if value is not None and (value > limit if kind == "max" else value < limit):
                failures.append(f"{name} {value:.4g} {'>' if kind == 'max' else '<'} bound {limit:g} (against PyTorch)")
        return failures

    @property
    def worst(self) -> OutputParity:
        return max(self.outputs, key=lambda o: o.max_rel / o.bound)

    def failures(self) -> list[str]:
        return [f"{o.name}: max relative error {o.max_rel:.2e} > bound {o.bound:.1e} "
                f"(max abs {o.max_abs:.2e}, cosine {o.cosine:.6f})" for o in self.outputs if not o.passed
                ] + self.task_failures()

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "outputs": {o.name: {**asdict(o), "passed": o.passed} for o in self.outputs},
                "task": self.task, "task_bounds": dict(self.task_bounds)}


class ParityError(Exception):
    """Artifacts disagree with the reference; the message lists every failing output."""


def output_parity(name: str, ref: np.ndarray, out: np.ndarray, bound: float) -> OutputParity:
    ref64, out64 = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref64.shape != out64.shape:
        return OutputParity(name, float("inf"), float("inf"), float("inf"), 0.0, bound)
    diff = np.abs(ref64 - out64)
    span = float(ref64.max() - ref64.min()) or float(np.abs(ref64).max()) or 1.0
    a, b = ref64.ravel(), out64.ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / norms) if norms else float(np.array_equal(a, b))
    return OutputParity(name, float(diff.max()), float(diff.mean()), float(diff.max() / span), cosine, bound)


def keypoint_error_px(ref_value: np.ndarray, value: np.ndarray, image_size: int) -> float:
    """Mean Euclidean distance between keypoints in [-1, 1], in pixels of the input image."""
    return float(np.linalg.norm((np.asarray(ref_value) - np.asarray(value)) * image_size / 2, axis=-1).mean())


def confusion(ref_mask: np.ndarray, mask: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) pixel counts, rows = reference class."""
    return np.bincount(ref_mask.ravel().astype(np.int64) * classes + mask.ravel(),
                       minlength=classes * classes).reshape(classes, classes)


def miou(ref_mask: np.ndarray, mask: np.ndarray, classes: int) -> float:
    """Mean intersection over union over the classes present in either mask."""
    c = confusion(ref_mask, mask, classes)
    inter = np.diag(c).astype(np.float64)
    union = c.sum(0) + c.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 1.0


def task_agreement(task: Mapping[str, Any], ref: Mapping[str, np.ndarray],
                   out: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Task-level agreement of an artifact with the reference: keypoint error in
    pixels for detectors; mask agreement and mIoU against the reference's mask
    for segmenters."""
    if task.get("kind") == "keypoints" and "value" in out:
        return {"keypoint_error_px": keypoint_error_px(ref["value"], out["value"], task["image_size"])}
    if task.get("kind") == "segmentation" and "logits" in out and out["logits"].shape == ref["logits"].shape:
        ref_mask, mask = ref["logits"].argmax(1), out["logits"].argmax(1)
        return {"mask_agreement": float((ref_mask == mask).mean()), "miou": miou(ref_mask, mask, task["classes"])}
    return {}


def describe_task(task: Mapping[str, float]) -> str:
    """The task figures in a few characters, for tables."""
    if "keypoint_error_px" in task:
        return f"kp {task['keypoint_error_px']:.4f} px"
    if "mask_agreement" in task:
        return f"mask {100 * task['mask_agreement']:.3f}%"
    return "-"


def effective_bounds(bound: float, noise: Mapping[str, float]) -> dict[str, float]:
    """Per-output bounds: the nominal `bound`, raised to twice the output's own
    float32 noise (PyTorch fp32 vs fp64) where that is larger. An artifact as
    exact as PyTorch's float32 can be that far from it; no tighter bound can be met."""
    return {name: max(bound, 2 * n) for name, n in noise.items()}


def compare(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray], bound: float | Mapping[str, float],
            task: Mapping[str, Any] | None = None, task_bounds: Mapping[str, Any] | None = None) -> Parity:
    """Figures for every output of `ref` (bound: one for all, or one per output);
    an output missing from `out` fails. `task_bounds` (see TASK_BOUNDS) gate the task figures too."""
    bounds = bound if isinstance(bound, Mapping) else dict.fromkeys(ref, bound)
    outputs = [output_parity(name, r, out[name], bounds[name]) if name in out
               else OutputParity(name, float("inf"), float("inf"), float("inf"), 0.0, bounds[name])
               for name, r in ref.items()]
    limits = {name: (kind, float(limit)) for name, (kind, limit) in (task_bounds or {}).items()}
    return Parity(outputs, task_agreement(task or {}, ref, out), limits)
