"""Tasks as small plugins: what a model's outputs mean, on the device side.

A task knows which output it reads, how to score an artifact's outputs against
PyTorch's (`agreement`) and against the truth (`metrics`), the bounds INT8 is
held to, how to say its figures in a table cell, and what picture `infer`
draws. `keypoints` and `segmentation` are the zoo's; `none` is any other model:
every stage but task figures and pictures. The PyTorch half (generated data,
loss) is `models.tasks`. numpy and Pillow only.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np

from .errors import UserError, check_choice


class Task:
    """A model with no task of ours: outputs are compared as tensors only."""

    kind: ClassVar[str] = "none"
    # task-level bounds on INT8 against PyTorch FP32: figure -> ("max" | "min", limit)
    int8_bounds: ClassVar[dict[str, tuple[str, float]]] = {}
    # the labels `runtime.labelled` reads for it from a user's files: "masks", "keypoints", or "pairs"
    # (inputs with the outputs expected of them, judged by the parity metric)
    labels: ClassVar[str] = "pairs"
    # its figures against the truth, each "higher" or "lower" is better: what a labelled evaluation set's
    # allowed drop (`--max-drop`) can name; the first is the default's
    truth_metrics: ClassVar[dict[str, str]] = {"max_rel": "lower"}
    default_max_drop: ClassVar[float] = 0.01

    def __init__(self, settings: Mapping[str, Any], outputs: tuple[str, ...]):
        self.settings = dict(settings)
        self.output = self.settings.get("output", self.default_output(tuple(outputs)))
        if self.output is not None and self.output not in outputs:
            raise UserError(f"task {self.kind!r} reads output {self.output!r}, which the model does not have; "
                            f"its outputs: {', '.join(outputs)} (name one with the task's output)")
        self.names = [str(n) for n in self.settings.get("names", [])]

    @classmethod
    def default_output(cls, outputs: tuple[str, ...]) -> str | None:
        return None

    @classmethod
    def complete(cls, settings: dict[str, Any], output_shapes: Mapping[str, tuple[int, ...]], image) -> dict[str, Any]:
        """The task's settings with what the model's shapes tell filled in (`image`: the first input's spec),
        or a UserError when the output the task reads is not the kind it reads."""
        return settings

    @classmethod
    def read_shape(cls, settings: Mapping[str, Any], output_shapes: Mapping[str, tuple[int, ...]]):
        """(the output's name, its shape) that the task reads, at build time."""
        name = settings.get("output", cls.default_output(tuple(output_shapes)))
        if name not in output_shapes:
            raise UserError(f"task {cls.kind!r} reads output {name!r}, which the model does not have; "
                            f"its outputs: {', '.join(output_shapes)} (name one with --task-output)")
        return name, tuple(output_shapes[name])

    def scales(self) -> dict[str, float]:
        """Outputs whose values have an extent of their own, which parity measures errors
        against when it is larger than the output's spread (`runtime.compare.scale`)."""
        return {}

    def agreement(self, ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Task figures of an artifact's outputs against the reference outputs."""
        return {}

    def metrics(self, targets: np.ndarray, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Task figures of outputs against ground truth."""
        return {}

    def drops(self, figures: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
        """How much worse each truth figure is than the reference's (positive: worse), whichever way it goes."""
        return {name: (reference[name] - figures[name]) if better == "higher" else (figures[name] - reference[name])
                for name, better in self.truth_metrics.items() if name in figures and name in reference}

    def describe(self, figures: Mapping[str, float]) -> str:
        """The figures in a few characters, for tables."""
        return "-"

    def render(self, image, outputs: Mapping[str, np.ndarray]):
        """(picture, findings): what `infer` draws on the image, or (None, {}) where the task has no picture."""
        return None, {}


class Keypoints(Task):
    """Keypoints (B, K, 2) in [-1, 1] as (x, y); `image_size` the input's side in pixels."""

    kind = "keypoints"
    int8_bounds = {"keypoint_error_px": ("max", 0.5)}
    labels = "keypoints"
    truth_metrics = {"pck": "higher", "keypoint_error_px": "lower"}
    PCK_ALPHA = 0.05  # PCK@0.05: a keypoint within 5% of the image's side of the truth counts as found
    ERROR_BINS_PX = (0, 1, 2, 4, 8, 16, 32, 64)  # the lower edges of the error histogram's bins, in pixels

    def __init__(self, settings, outputs):
        super().__init__(settings, outputs)
        if int(self.settings.get("image_size", 0)) < 2:
            raise UserError("the keypoints task needs the input's image_size (its side in pixels), at least 2")
        self.image_size = int(self.settings["image_size"])

    @classmethod
    def default_output(cls, outputs):
        return "value" if "value" in outputs else outputs[0]

    @classmethod
    def complete(cls, settings, output_shapes, image):
        """The image size keypoints are measured in: the input's width; the output must be (B, K, 2)."""
        name, shape = cls.read_shape(settings, output_shapes)
        if len(shape) != 3 or shape[2] != 2:
            raise UserError(f"the keypoints task reads output {name!r} as (batch, keypoints, 2) x, y in [-1, 1]; "
                            f"it has shape {shape}" + ("; a per-pixel output is --task segmentation or --task none"
                                                       if len(shape) == 4 else "; use --task none"))
        if len(image.example) == 4:
            settings.setdefault("image_size", int(image.example[3]))
        return settings

    def scales(self):
        """Keypoints in [-1, 1] are measured on the image's extent, 2."""
        return {self.output: 2.0}

    def error_px(self, ref_value: np.ndarray, value: np.ndarray) -> float:
        """Mean Euclidean distance between keypoints in [-1, 1], in pixels of the input image."""
        diff = (np.asarray(ref_value, np.float64) - np.asarray(value, np.float64)) * self.image_size / 2
        return float(np.linalg.norm(diff, axis=-1).mean())

    def agreement(self, ref, out):
        if self.output not in out or out[self.output].shape != ref[self.output].shape:
            return {}
        return {"keypoint_error_px": self.error_px(ref[self.output], out[self.output])}

    def metrics(self, targets, outputs):
        """Mean error in pixels and PCK@alpha (alpha of the image's side) over the labelled keypoints
        (a truth of NaN, a keypoint not labelled, is not scored), the mean error of each keypoint, and how
        many keypoints fall in each bin of error (`ERROR_BINS_PX`, the last bin open-ended)."""
        targets = np.asarray(targets, np.float64)
        labelled = ~np.isnan(targets).any(-1)
        every = np.linalg.norm((targets - np.asarray(outputs[self.output], np.float64)) * self.image_size / 2,
                               axis=-1)
        distance = every[labelled]
        alpha = float(self.settings.get("pck_alpha", self.PCK_ALPHA))
        counts = labelled.sum(0)
        per_keypoint = np.where(labelled, every, 0).sum(0) / np.maximum(counts, 1)
        return {"keypoint_error_px": float(distance.mean()) if distance.size else float("nan"),
                "pck": float((distance <= alpha * self.image_size).mean()) if distance.size else float("nan"),
                "error_px_per_keypoint": [float(e) if n else None for e, n in zip(per_keypoint, counts)],
                "error_px_histogram": np.histogram(distance, [*self.ERROR_BINS_PX, np.inf])[0].tolist()}

    def describe(self, figures):
        return f"kp {figures['keypoint_error_px']:.4f} px" if "keypoint_error_px" in figures else "-"

    def render(self, image, outputs):
        from .images import draw_keypoints, keypoints_px

        value = outputs[self.output][0]
        found = {"keypoints_px": keypoints_px(value, *image.size).round(2).tolist(), "keypoint_names": self.names}
        return draw_keypoints(image, value, self.names), found


class Segmentation(Task):
    """Per-pixel class logits (B, classes, H, W)."""

    kind = "segmentation"
    int8_bounds = {"miou": ("min", 0.99)}
    labels = "masks"
    truth_metrics = {"miou": "higher", "pixel_accuracy": "higher", "mean_dice": "higher"}

    def __init__(self, settings, outputs):
        super().__init__(settings, outputs)
        if int(self.settings.get("classes", 0)) < 2:
            raise UserError("the segmentation task needs its number of classes, at least 2")
        self.classes = int(self.settings["classes"])

    @classmethod
    def default_output(cls, outputs):
        return "logits" if "logits" in outputs else outputs[0]

    @classmethod
    def complete(cls, settings, output_shapes, image):
        """The class count: the channels of the output the task reads, (B, classes, H, W) with 2 or more."""
        name, shape = cls.read_shape(settings, output_shapes)
        if len(shape) != 4:
            raise UserError(f"the segmentation task reads output {name!r} as class logits (batch, classes, height, "
                            f"width); it has shape {shape}; use --task none")
        if shape[1] < 2:
            raise UserError(f"the segmentation task reads output {name!r} as class logits, one channel per class, "
                            f"at least 2; it has shape {shape} (a one-channel mask logit: export it with two "
                            "channels, background and foreground, or use --task none)")
        settings.setdefault("classes", int(shape[1]))
        if settings["classes"] != shape[1]:
            raise UserError(f"--classes {settings['classes']}, but the segmentation output {name!r} has "
                            f"{shape[1]} channels {shape}")
        return settings

    def agreement(self, ref, out):
        if self.output not in out or out[self.output].shape != ref[self.output].shape:
            return {}
        ref_mask, mask = ref[self.output].argmax(1), out[self.output].argmax(1)
        return {"mask_agreement": float((ref_mask == mask).mean()), "miou": miou(ref_mask, mask, self.classes)}

    def metrics(self, targets, outputs):
        """mIoU, pixel accuracy and mean Dice over the labelled pixels (a negative class is not scored), and
        each class's IoU."""
        targets = np.asarray(targets)
        scored = targets >= 0
        mask = outputs[self.output].argmax(1)
        found = mask_figures(confusion(targets[scored], mask[scored], self.classes))
        return {**{k: found[k] for k in self.truth_metrics}, "iou": found["iou"]}

    def describe(self, figures):
        return f"mask {100 * figures['mask_agreement']:.3f}%" if "mask_agreement" in figures else "-"

    def render(self, image, outputs):
        from .images import overlay_mask, upsampled_mask

        mask = upsampled_mask(outputs[self.output][0], image.size)  # the photo's own size
        counts = np.bincount(mask.ravel(), minlength=self.classes) / mask.size
        found = {"mask": mask.tolist(), "mask_size": list(mask.shape[::-1]), "class_names": self.names,
                 "class_fractions": counts.round(6).tolist()}
        return overlay_mask(image, mask, self.names), found


TASKS: dict[str, type[Task]] = {"none": Task, "keypoints": Keypoints, "segmentation": Segmentation}


def task_class(settings: Mapping[str, Any]) -> type[Task]:
    """The plugin class for task settings ({"kind": ..., ...})."""
    return TASKS[check_choice("task", settings.get("kind", "none"), tuple(TASKS))]


def task_of(spec) -> Task:
    """The task plugin of a `ModelSpec` (or of a manifest's spec dict)."""
    task = spec.task if hasattr(spec, "task") else spec["task"]
    outputs = tuple(spec.outputs if hasattr(spec, "outputs") else spec["outputs"])
    return task_class(task)(task, outputs)


def confusion(ref_mask: np.ndarray, mask: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) pixel counts, rows = reference class."""
    return np.bincount(ref_mask.ravel().astype(np.int64) * classes + mask.ravel(),
                       minlength=classes * classes).reshape(classes, classes)


def mask_figures(c: np.ndarray) -> dict[str, Any]:
    """mIoU (over the classes present in the truth or the prediction), per-class IoU (None for a class
    absent from both), pixel accuracy and mean Dice, from a confusion matrix."""
    c = c.astype(np.float64)
    inter = np.diag(c)
    union = c.sum(0) + c.sum(1) - inter
    present = union > 0
    iou = np.where(present, inter / np.where(present, union, 1), np.nan)
    dice = np.where(present, 2 * inter / np.where(present, union + inter, 1), np.nan)
    total = c.sum()
    return {"miou": float(np.nanmean(iou)) if present.any() else float("nan"),
            "pixel_accuracy": float(inter.sum() / total) if total else float("nan"),
            "mean_dice": float(np.nanmean(dice)) if present.any() else float("nan"),
            "iou": [None if np.isnan(x) else float(x) for x in iou]}


def miou(ref_mask: np.ndarray, mask: np.ndarray, classes: int) -> float:
    """Mean intersection over union over the classes present in either mask."""
    c = confusion(ref_mask, mask, classes)
    inter = np.diag(c).astype(np.float64)
    union = c.sum(0) + c.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 1.0
