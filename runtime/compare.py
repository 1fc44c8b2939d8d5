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

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def worst(self) -> OutputParity:
        return max(self.outputs, key=lambda o: o.max_rel / o.bound)

    def failures(self) -> list[str]:
        return [f"{o.name}: max relative error {o.max_rel:.2e} > bound {o.bound:.0e} "
                f"(max abs {o.max_abs:.2e}, cosine {o.cosine:.6f})" for o in self.outputs if not o.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "outputs": {o.name: {**asdict(o), "passed": o.passed} for o in self.outputs},
                "task": self.task}


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


def task_agreement(task: Mapping[str, Any], ref: Mapping[str, np.ndarray],
                   out: Mapping[str, np.ndarray]) -> dict[str, float]:
    if task.get("kind") == "keypoints":
        return {"keypoint_error_px": keypoint_error_px(ref["value"], out["value"], task["image_size"])}
    return {}


def compare(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray], bound: float,
            task: Mapping[str, Any] | None = None) -> Parity:
    """Figures for every output of `ref`; an output missing from `out` fails."""
    outputs = [output_parity(name, r, out[name], bound) if name in out
               else OutputParity(name, float("inf"), float("inf"), float("inf"), 0.0, bound)
               for name, r in ref.items()]
    return Parity(outputs, task_agreement(task or {}, ref, out))
