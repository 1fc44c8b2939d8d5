"""Accuracy against the truth: a segmenter's artifacts scored on the user's own labelled images.

The data is read as people keep it (Pillow; numpy; no torch): a folder with `images/` and `masks/`
matched by file stem, or Pascal VOC's `JPEGImages/` and `SegmentationClass/`. A mask is a PNG of class
indices, greyscale or with a palette as VOC saves it (the palette's indices are the classes); pixels
equal to the ignore index (255, as Cityscapes and VOC use) are not scored, and a label-id -> train-id
map (Cityscapes' ids) is applied first, ids it does not name becoming ignored.

A bad file is named in one line and counted, and the rest is still scored: an image without its mask
and a mask without its image, an unreadable or truncated image, an EXIF-rotated photo (its pixels are
stored turned, so its mask cannot be trusted to line up), a mask of another size than its image, a
mask that is not class indices, a class index beyond the model's classes.

Each image runs at the size the model contract gives it, and its class logits are resized to the
image's own size before they are scored: the figures are in the original image's pixels. mIoU,
per-class IoU, pixel accuracy and mean Dice come from the summed confusion matrix; their 95% intervals
from resampling the images (a bootstrap), and an artifact's drop against a reference artifact from
the same resamples of both, so that a drop of a few tenths of a point on a few dozen images is not
taken for a fact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .tasks import confusion as task_confusion, task_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LAYOUTS = (("images", "masks"), ("JPEGImages", "SegmentationClass"))  # ours, and Pascal VOC's
IGNORE = 255
EXIF_ORIENTATION = 0x0112


@dataclass
class Skipped:
    file: str
    why: str

    def line(self) -> str:
        return f"skipped {self.file}: {self.why}"


@dataclass
class Sample:
    name: str
    image: Image.Image  # RGB
    mask: np.ndarray  # (height, width) int64 class indices, IGNORE where not scored


@dataclass
class SegmentationData:
    """The image and mask files a folder pairs up, and those it cannot pair."""

    folder: Path
    pairs: list[tuple[Path, Path]]
    skipped: list[Skipped] = field(default_factory=list)


def _files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def find_segmentation(folder: str | Path) -> SegmentationData:
    """The (image, mask) pairs of `folder`, or a UserError naming the layouts it takes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--data {str(folder)!r} is not a folder; pass a folder with images/ and masks/ "
                        "(or Pascal VOC's JPEGImages/ and SegmentationClass/)")
    layout = next(((folder / i, folder / m) for i, m in LAYOUTS if (folder / i).is_dir() and (folder / m).is_dir()),
                  None)
    if layout is None:
        raise UserError(f"--data {str(folder)!r} holds neither images/ and masks/ nor Pascal VOC's JPEGImages/ "
                        "and SegmentationClass/ (masks matched to images by file stem)")
    images, masks = _files(layout[0]), _files(layout[1])
    data = SegmentationData(folder, [(images[s], masks[s]) for s in images if s in masks])
    data.skipped += [Skipped(_rel(images[s], folder), f"has no mask ({layout[1].name}/{s}.png)")
                     for s in images if s not in masks]
    data.skipped += [Skipped(_rel(masks[s], folder), f"is a mask without its image (no {layout[0].name}/{s}.*)")
                     for s in masks if s not in images]
    if not data.pairs:
        raise UserError(f"--data {str(folder)!r} has no image with a mask of the same file stem "
                        f"({len(images)} images in {layout[0].name}/, {len(masks)} masks in {layout[1].name}/)")
    return data


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()  # a truncated file fails here, not later
        return image.copy()


def read_sample(image_path: Path, mask_path: Path, folder: Path, classes: int, ignore: int = IGNORE,
                label_map: Mapping[int, int] | None = None) -> Sample | Skipped:
    """One pair, checked; a Skipped naming the file and what is wrong with it where it cannot be scored."""
    name = _rel(image_path, folder)
    try:
        image = _open(image_path)
    except (UnidentifiedImageError, OSError) as err:
        return Skipped(name, f"is not a readable image ({err.__class__.__name__}: {err})")
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation != 1:
        return Skipped(name, f"is EXIF-rotated (orientation {orientation}): its pixels are stored turned, so its "
                             "mask cannot be trusted to line up; save the photo upright")
    mask_name = _rel(mask_path, folder)
    try:
        mask_image = _open(mask_path)
    except (UnidentifiedImageError, OSError) as err:
        return Skipped(mask_name, f"is not a readable image ({err.__class__.__name__}: {err})")
    if mask_image.mode not in ("L", "P", "I", "I;16"):
        return Skipped(mask_name, f"has image mode {mask_image.mode}, not class indices (a greyscale or palette "
                                  "PNG whose pixel values are the classes)")
    if mask_image.size != image.size:
        return Skipped(mask_name, f"is {mask_image.width}x{mask_image.height}, its image "
                                  f"{image.width}x{image.height}")
    mask = np.asarray(mask_image, np.int64)
    if label_map is not None:
        table = np.full(max(int(mask.max()), *label_map) + 1, ignore, np.int64)
        for label, train in label_map.items():
            table[label] = train
        mask = table[mask]
    beyond = np.unique(mask[(mask >= classes) & (mask != ignore)])
    if beyond.size:
        return Skipped(mask_name, f"holds class {int(beyond[0])}, beyond the model's {classes} classes "
                                  f"(0-{classes - 1}; {ignore} is ignored)")
    return Sample(name, image.convert("RGB"), mask)


def samples(data: SegmentationData, classes: int, ignore: int = IGNORE,
            label_map: Mapping[int, int] | None = None) -> Iterator[Sample | Skipped]:
    """Every pair read in turn (one image in memory at a time)."""
    for image_path, mask_path in data.pairs:
        yield read_sample(image_path, mask_path, data.folder, classes, ignore, label_map)


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int, ignore: int = IGNORE) -> np.ndarray:
    """(classes, classes) pixel counts over the scored pixels, rows = the true class."""
    scored = truth != ignore
    return task_confusion(truth[scored], predicted[scored], classes)


def figures(c: np.ndarray) -> dict[str, Any]:
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


SCORES = ("miou", "pixel_accuracy", "mean_dice")


def _miou_of(stack: np.ndarray) -> np.ndarray:
    """mIoU of each of a batch of confusion matrices (n, classes, classes)."""
    inter = np.diagonal(stack, axis1=1, axis2=2).astype(np.float64)
    union = stack.sum(1) + stack.sum(2) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmean(np.where(union > 0, inter / union, np.nan), axis=1)


def bootstrap(per_image: Mapping[str, np.ndarray], reference: str | None, resamples: int = 1000,
              level: float = 0.95, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per artifact (its per-image confusion matrices, (images, classes, classes), the same images in the
    same order for every artifact): the intervals of its mIoU and pixel accuracy, and of its mIoU drop
    against `reference`, from the same resamples of the images. A resample is a count per image (how
    often it was drawn), so memory grows with images plus classes squared, not their product."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(per_image.values())))
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(np.float64)
    tail = 100 * (1 - level) / 2
    classes = next(iter(per_image.values())).shape[1]
    summed = {key: (weights @ c.reshape(n, -1)).reshape(resamples, classes, classes) for key, c in per_image.items()}
    resampled = {key: _miou_of(stack) for key, stack in summed.items()}
    found = {}
    for key, stack in summed.items():
        accuracy = np.diagonal(stack, axis1=1, axis2=2).sum(1) / stack.sum((1, 2))
        found[key] = {"miou": np.nanpercentile(resampled[key], [tail, 100 - tail]),
                      "pixel_accuracy": np.percentile(accuracy, [tail, 100 - tail])}
        if reference is not None and key != reference:
            found[key]["miou_drop"] = np.nanpercentile(resampled[reference] - resampled[key], [tail, 100 - tail])
    return {key: {k: [float(x) for x in v] for k, v in f.items()} for key, f in found.items()}


def evaluate(bundle, folder: str | Path, ignore: int = IGNORE, label_map: Mapping[int, int] | None = None,
             threads: int | None = None, backend: str | None = None, precision: str | None = None) -> dict[str, Any]:
    """Every artifact of `bundle` that runs here (or those `backend`/`precision` name) on the labelled
    images of `folder`, each image through all of them in turn; figures, intervals and each artifact's
    mIoU drop against the FP32 reference (ONNX Runtime's, else the first FP32 artifact)."""
    import contextlib

    from .bundle import Bundle
    from .errors import BackendError
    from .images import preprocess, upsampled_mask
    from .runners import installed_backends, load

    opened = Bundle.open(bundle)
    task = task_of(opened.spec)
    if not task.reads_masks:
        raise UserError(f"--data reads segmentation masks (images/ and masks/, or Pascal VOC's folders); "
                        f"{opened.name} is a {task.kind!r} model, whose labels it does not read yet")
    data = find_segmentation(folder)
    chosen = [a for a in opened.artifacts if a.backend in installed_backends()
              and (backend is None or a.backend == backend) and (precision is None or a.precision == precision)]
    if not chosen:
        raise UserError(f"no artifact of {opened.name} matches --backend {backend} --precision {precision} "
                        f"among those installed here: {', '.join(a.key for a in opened.artifacts)}")
    not_run: dict[str, str] = {}
    skipped: list[Skipped] = list(data.skipped)
    with contextlib.ExitStack() as stack:
        runners = {}
        for a in chosen:
            try:
                runners[f"{a.backend} {a.precision}"] = stack.enter_context(load(opened, a.backend, a.precision,
                                                                                 threads))
            except BackendError as err:
                not_run[f"{a.backend} {a.precision}"] = str(err)
        per_image: dict[str, list[np.ndarray]] = {key: [] for key in runners}
        for sample in samples(data, task.classes, ignore, label_map):
            if isinstance(sample, Skipped):
                skipped.append(sample)
                continue
            x = preprocess(sample.image, opened.spec)
            for key, runner in runners.items():
                logits = runner.infer(x)[task.output][0]
                per_image[key].append(confusion(sample.mask, upsampled_mask(logits, sample.image.size),
                                                task.classes, ignore))
    scored = len(next(iter(per_image.values()), []))
    if not scored:
        raise UserError(f"no image of --data {str(data.folder)!r} could be scored: "
                        + "; ".join(s.line() for s in skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    stacks = {key: np.stack(c) for key, c in per_image.items()}
    fp32 = [k for k in stacks if k.endswith(" fp32")]
    reference = "onnxruntime fp32" if "onnxruntime fp32" in stacks else (fp32[0] if fp32 else None)
    intervals = bootstrap(stacks, reference)
    found = {key: {**figures(c.sum(0)), "intervals": intervals[key]} for key, c in stacks.items()}
    for key, f in found.items():
        if reference is not None and key != reference:
            f["miou_drop"] = found[reference]["miou"] - f["miou"]
    return {"model": opened.name, "bundle": str(opened.path), "data": str(data.folder), "images": scored,
            "skipped": [{"file": s.file, "why": s.why} for s in skipped], "classes": task.classes,
            "class_names": task.names, "ignore_index": ignore, "reference": reference, "artifacts": found,
            "not_run": not_run}


def read_label_map(path: str | Path) -> dict[int, int]:
    """A label-id -> train-id map from a JSON object ({"7": 0, "8": 1, ...}), or a UserError."""
    import json

    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        found = {int(k): int(v) for k, v in raw.items()}
    except FileNotFoundError:
        raise UserError(f"--label-map {str(path)!r} does not exist; pass a JSON object of label id to train id, "
                        'e.g. {"7": 0, "8": 1}') from None
    except (OSError, ValueError, AttributeError, TypeError):
        raise UserError(f"--label-map {str(path)!r} is not a JSON object of whole numbers, label id to train id "
                        '(e.g. {"7": 0, "8": 1})') from None
    if not found or min(found) < 0 or min(found.values()) < 0:
        raise UserError(f"--label-map {str(path)!r} must map label ids (0 or more) to train ids (0 or more)")
    return found
