"""Parity figures between reference outputs and an artifact's outputs.

Works on dicts of numpy arrays and imports no backend (Polygraphy's
runner/comparator split). Figures per output: max abs, mean abs, max relative
(max abs over the output's scale, see `scale`), cosine similarity; and the
task's own figures (`runtime.tasks`), such as the keypoint error in pixels of
the input image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from .backends import REGISTRY
from .bundle import Artifact, Bundle
from .tasks import Task, task_of

# Bounds on max relative error, by backend and precision (recorded in the manifest); INT8 is judged by the
# task (below), its tensor bound only catches a broken model
BOUNDS: dict[tuple[str, str], float] = {(b.name, precision): bound for b in REGISTRY.values()
                                        for precision, bound in b.bounds.items()}


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
class Truth:
    """A bundle's labelled evaluation set, as parity reads it: the labels of golden.npz's "truth" set
    (whose inputs are the labelled images and whose outputs are PyTorch FP32's on them), PyTorch's
    figures against those labels, and the drop from them each artifact is allowed (metric -> drop)."""

    labels: np.ndarray
    reference: Mapping[str, float]
    max_drop: Mapping[str, float]

    @classmethod
    def of(cls, labels: np.ndarray, reference_outputs: Mapping[str, np.ndarray], task: Task,
           max_drop: Mapping[str, float]) -> "Truth":
        return cls(labels, task.metrics(labels, reference_outputs), dict(max_drop))

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> "Truth | None":
        """The labelled images a bundle carries (`build --data`), or None where it has none."""
        evaluation = bundle.manifest.get("evaluation")
        if not evaluation:
            return None
        return cls.of(bundle.labels(evaluation["set"]), bundle.golden(evaluation["set"])[1], task_of(bundle.spec),
                      evaluation["max_drop"])

    def judge(self, task: Task, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """An artifact's figures against the labels, and how far each is below PyTorch's."""
        figures = task.metrics(self.labels, outputs)
        return {"images": len(self.labels), "figures": figures, "reference": dict(self.reference),
                "drop": task.drops(figures, self.reference)}


def truth_text(truth: Mapping[str, Any] | None, max_drop: Mapping[str, float]) -> str:
    """An artifact's judged figures on the labelled images and their change from PyTorch's, for a table
    cell: 'miou 0.8312 (-0.0021)'."""
    if not truth:
        return "-"
    return ", ".join(f"{name} {truth['figures'][name]:.4f} ({-truth['drop'][name]:+.4f})" for name in max_drop)


@dataclass(frozen=True)
class Parity:
    outputs: list[OutputParity]
    task: dict[str, float] = field(default_factory=dict)
    task_bounds: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)  # `Truth.judge`'s figures, where the bundle has labels
    max_drop: Mapping[str, float] = field(default_factory=dict)  # what the truth figures may drop
    not_judged: dict[str, str] = field(default_factory=dict)  # a set of other-sized inputs the model cannot take: why

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs) and not self.task_failures() and not self.truth_failures()

    def truth_failures(self) -> list[str]:
        failures = []
        for name, limit in self.max_drop.items():
            drop = self.truth.get("drop", {}).get(name)
            if drop is not None and not drop <= limit:  # NaN (nothing scored) fails too
                failures.append(f"{name} {self.truth['figures'][name]:.4f} on the {self.truth['images']} labelled "
                                f"images drops {drop:.4f} from PyTorch FP32's {self.truth['reference'][name]:.4f}, "
                                f"more than the allowed {limit:g}")
        return failures

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
                ] + self.task_failures() + self.truth_failures()

    def to_dict(self) -> dict[str, Any]:
        found = {"passed": self.passed, "outputs": {o.name: {**asdict(o), "passed": o.passed} for o in self.outputs},
                 "task": self.task, "task_bounds": dict(self.task_bounds),
                 **({"not_judged": self.not_judged} if self.not_judged else {})}
        return {**found, "truth": self.truth, "max_drop": dict(self.max_drop)} if self.truth else found


class ParityError(Exception):
    """Artifacts disagree with the reference; the message lists every failing output."""


def scale(ref: np.ndarray, floor: float = 0.0) -> float:
    """What an output's errors are measured against: the largest of its range, its
    root mean square and the extent its task gives it (`floor`). The range makes a
    bound mean the same for a heatmap in [0, 0.01] (mostly zeros, so its RMS is far
    smaller) and for logits in [-8, 8]; the RMS keeps a near-constant output fair:
    a pooled score of 0.5 +- 0.001 over the inputs has a range of 0.002, yet float
    rounding is proportional to 0.5 (FP16 rounds it by 2.4e-4, which over the range
    alone would read 1.2e-1). The floor is for values whose meaning has a size of
    its own: keypoints in [-1, 1] are measured on the image's extent, 2, even when an
    untrained detector puts them all within 0.01 of the centre. An all-zero output
    with no floor is measured in absolute terms (scale 1)."""
    ref = np.asarray(ref, np.float64)
    if ref.size == 0:
        return floor or 1.0
    return max(float(ref.max() - ref.min()), float(np.sqrt(np.mean(ref * ref))), floor) or 1.0


def output_parity(name: str, ref: np.ndarray, out: np.ndarray, bound: float, floor: float = 0.0) -> OutputParity:
    ref64, out64 = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref64.shape != out64.shape:
        return OutputParity(name, float("inf"), float("inf"), float("inf"), 0.0, bound)
    diff = np.abs(ref64 - out64)
    span = scale(ref64, floor)
    a, b = ref64.ravel(), out64.ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / norms) if norms else float(np.array_equal(a, b))
    return OutputParity(name, float(diff.max()), float(diff.mean()), float(diff.max() / span), cosine, bound)


def effective_bounds(bound: float, noise: Mapping[str, float]) -> dict[str, float]:
    """Per-output bounds: the nominal `bound`, raised to twice the output's own
    float32 noise (PyTorch fp32 vs fp64) where that is larger. An artifact as
    exact as PyTorch's float32 can be that far from it; no tighter bound can be met."""
    return {name: max(bound, 2 * n) for name, n in noise.items()}


def compare(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray], bound: float | Mapping[str, float],
            task: Task | None = None, task_bounds: Mapping[str, Any] | None = None,
            scales: Mapping[str, float] | None = None) -> Parity:
    """Figures for every output of `ref` (bound: one for all, or one per output);
    an output missing from `out` fails. The task's figures are gated by
    `task_bounds` (figure -> ("max" | "min", limit), e.g. `Task.int8_bounds`).
    `scales`: the extent of an output's values where it has one (`Task.scales`;
    the task's own when a task is given)."""
    bounds = bound if isinstance(bound, Mapping) else dict.fromkeys(ref, bound)
    bounds = {name: bounds.get(name, bounds.get(name.split("@")[0])) for name in ref}  # logits@192x320: logits' bound
    scales = {**(task.scales() if task is not None else {}), **(scales or {})}
    floors = {name: scales.get(name.split("@")[0], 0.0) for name in ref}
    outputs = [output_parity(name, r, out[name], bounds[name], floors[name]) if name in out
               else OutputParity(name, float("inf"), float("inf"), float("inf"), 0.0, bounds[name])
               for name, r in ref.items()]
    limits = {name: (kind, float(limit)) for name, (kind, limit) in (task_bounds or {}).items()}
    return Parity(outputs, task.agreement(ref, out) if task is not None else {}, limits)


def judged_parity(runner: Any, artifact: Artifact, sets: Mapping[str, tuple[dict, dict]], task: Task | None,
                  truth: Truth | None = None) -> Parity:
    """An artifact's parity on the set it is judged on alone (`judged_on`: "golden" unless said otherwise;
    "truth": the labelled images, its figures held to the truth's allowed drop), and where the bundle has
    labelled images, its figures on them."""
    inputs, reference = sets[artifact.judged_on]
    out = runner.infer(inputs)
    parity = compare(reference, out, artifact.bounds, task, artifact.task_bounds)
    if truth is None or task is None:
        return parity
    out = out if artifact.judged_on == "truth" else runner.infer(sets["truth"][0])
    return replace(parity, truth=truth.judge(task, out), max_drop=dict(truth.max_drop))


def check_artifact(runner: Any, artifact: Artifact, sets: Mapping[str, tuple[dict, dict]],
                   task: Task | None, truth: Truth | None = None) -> Parity:
    """An artifact's parity on its set of inputs (`judged_parity`) and, for a model with dynamic sides,
    on every other size stored (sets named "size.HxW"; their outputs reported as "logits@HxW")."""
    parity = judged_parity(runner, artifact, sets, task, truth)
    fixed = getattr(runner, "fixed_shape", None) or {}
    for name, (inputs, reference) in sets.items():
        if name.startswith("size.") and any(list(inputs[k].shape[1:]) != s[1:] for k, s in fixed.items()):
            shapes = ", ".join(f"{k} {'x'.join(map(str, s[1:]))}" for k, s in fixed.items())
            parity = replace(parity, not_judged={**parity.not_judged,
                                                 name: f"its converter fixed the input shape ({shapes})"})
        elif name.startswith("size."):
            other = compare(reference, runner.infer(inputs), artifact.bounds,
                            scales=task.scales() if task is not None else None)
            size = name.removeprefix("size.")
            parity = replace(parity, outputs=parity.outputs + [replace(o, name=f"{o.name}@{size}")
                                                               for o in other.outputs])
    return parity
