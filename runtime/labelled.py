"""Accuracy against the truth: a bundle's artifacts scored on the user's own labelled images.

The data is read as people keep it (Pillow, numpy and the standard library; no torch), by a reader per
kind of label. Segmentation: a folder with `images/` and `masks/`
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

Keypoints: a folder with `images/` and COCO keypoint annotations (`annotations.json`, or the one JSON
file of `annotations/`; visibility 0 is not scored), or a plain `keypoints.csv` (image, keypoint, x, y)
or `keypoints.json` ({image: {keypoint: [x, y]}}), named as the model names its keypoints. The model
finds one figure per image, so an image with several annotated instances is skipped and named. Its
keypoints are mapped back to the image's own pixels and scored there: mean error in pixels and PCK@0.05
(a keypoint within 5% of the image's larger side of the truth is found), with bootstrap intervals; with
COCO annotations, `export evaluate` adds OKS AP through pycocotools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .tasks import confusion as task_confusion, mask_figures, task_of

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
    label: Any  # a mask, (height, width) int64 class indices, IGNORE where not scored; or `Points`


@dataclass
class Points:
    """One image's labelled keypoints, in its own pixels, in the model's order."""

    xy: np.ndarray  # (K, 2) x, y
    visible: np.ndarray  # (K,) bool: labelled (COCO visibility 1 or 2)
    image_id: Any = None  # COCO's, for OKS


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
    image = _image(image_path, folder)
    if isinstance(image, Skipped):
        return image
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
    return Sample(_rel(image_path, folder), image, mask)


def _image(path: Path, folder: Path, what: str = "mask") -> Image.Image | Skipped:
    """An upright RGB image, or a Skipped saying why it cannot be scored."""
    name = _rel(path, folder)
    try:
        image = _open(path)
    except (UnidentifiedImageError, OSError) as err:
        return Skipped(name, f"is not a readable image ({err.__class__.__name__}: {err})")
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation != 1:
        return Skipped(name, f"is EXIF-rotated (orientation {orientation}): its pixels are stored turned, so its "
                             f"{what} cannot be trusted to line up; save the photo upright")
    return image.convert("RGB")


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int, ignore: int = IGNORE) -> np.ndarray:
    """(classes, classes) pixel counts over the scored pixels, rows = the true class."""
    scored = truth != ignore
    return task_confusion(truth[scored], predicted[scored], classes)


def _miou_of(stack: np.ndarray) -> np.ndarray:
    """mIoU of each of a batch of confusion matrices (n, classes, classes)."""
    inter = np.diagonal(stack, axis1=1, axis2=2).astype(np.float64)
    union = stack.sum(1) + stack.sum(2) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmean(np.where(union > 0, inter / union, np.nan), axis=1)


class Masks:
    """A segmenter's labels: per image, its confusion matrix in the image's own pixels."""

    primary = "miou"  # the figure whose drop against the reference is given with its interval
    held_to_bound = False  # held to the drop the bundle allows

    def __init__(self, spec, folder: str | Path, ignore: int = IGNORE, label_map: Mapping[int, int] | None = None):
        data = find_segmentation(folder)
        task = task_of(spec)
        self.task, self.folder, self.items, self.skipped = task, data.folder, data.pairs, list(data.skipped)
        self.ignore, self.label_map = ignore, label_map

    def read(self, item) -> Sample | Skipped:
        return read_sample(*item, self.folder, self.task.classes, self.ignore, self.label_map)

    def score(self, sample: Sample, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        from .images import upsampled_mask

        predicted = upsampled_mask(outputs[self.task.output][0], sample.image.size)
        return confusion(sample.label, predicted, self.task.classes, self.ignore)

    def inputs(self, sample: Sample, spec) -> np.ndarray:
        from .images import preprocess

        return preprocess(sample.image, spec)

    def figures(self, stack: np.ndarray) -> dict[str, Any]:
        return mask_figures(stack.sum(0))

    def resampled(self, summed: np.ndarray) -> dict[str, np.ndarray]:
        """The figures of each resample's summed confusion matrix (resamples, classes, classes)."""
        return {"miou": _miou_of(summed),
                "pixel_accuracy": np.diagonal(summed, axis1=1, axis2=2).sum(1) / summed.sum((1, 2))}

    def at_input(self, sample: Sample, height: int, width: int) -> np.ndarray:
        """The mask at the model's input size (nearest class), -1 where not scored."""
        mask = np.asarray(Image.fromarray(sample.label.astype(np.int32)).resize((width, height), Image.NEAREST))
        return np.where(mask == self.ignore, -1, mask).astype(np.int16)

    def about(self) -> dict[str, Any]:
        return {"classes": self.task.classes, "class_names": self.task.names, "ignore_index": self.ignore}

    def oks_ap(self, predictions) -> None:
        return None


KEYPOINT_FILES = ("annotations.json", "keypoints.csv", "keypoints.json")
PCK_ALPHA = 0.05
OKS_SIGMA = 0.05  # per keypoint, where the annotations give none (COCO's own run from 0.025 to 0.107)


class KeypointLabels:
    """A keypoint detector's labels: COCO keypoint JSON, or a plain CSV/JSON of x, y per named keypoint.
    Per image: the labelled keypoints, those within PCK's reach, and the summed error in pixels."""

    primary = "pck"
    held_to_bound = False  # held to the drop the bundle allows

    def __init__(self, spec, folder: str | Path, ignore: int = IGNORE, label_map: Mapping[int, int] | None = None):
        task = task_of(spec)
        if ignore != IGNORE or label_map is not None:
            raise UserError(f"--ignore-index and --label-map are for masks; a {task.kind!r} model's labels have "
                            "neither")
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"--data {str(folder)!r} is not a folder; pass a folder with images/ and "
                            "annotations.json (COCO keypoints), keypoints.csv or keypoints.json")
        self.task, self.folder, self.skipped, self.coco = task, folder, [], None
        self.images = folder / "images" if (folder / "images").is_dir() else folder
        found = [folder / f for f in KEYPOINT_FILES if (folder / f).is_file()]
        found += sorted((folder / "annotations").glob("*.json")) if (folder / "annotations").is_dir() else []
        if not found:
            raise UserError(f"--data {str(folder)!r} holds no keypoint labels: expected images/ with "
                            "annotations.json (COCO keypoints), keypoints.csv (image,keypoint,x,y) or keypoints.json")
        self.source = found[0]
        self.items = self._coco(found[0]) if found[0].suffix == ".json" and found[0].name != "keypoints.json" \
            else self._plain(found[0])
        listed = {path for path, _ in self.items}
        self.skipped += [Skipped(_rel(p, folder), "has no keypoint labels") for p in sorted(self.images.iterdir())
                         if p.suffix.lower() in IMAGE_SUFFIXES and p not in listed and p.is_file()]
        if not self.items:
            raise UserError(f"--data {str(folder)!r}: {self.source.name} labels no image of {_rel(self.images, folder) or '.'}"
                            + (f" ({self.skipped[0].line()})" if self.skipped else ""))

    def _order(self, names: list[str]) -> list[int]:
        """For each of the model's keypoints, its index among the labels' `names`."""
        model = self.task.names or names
        if len(model) != len(names) or set(model) != set(names):
            raise UserError(f"{self.source.name} labels the keypoints {', '.join(names)}; the model finds "
                            f"{', '.join(self.task.names) or f'{len(model)} unnamed ones'} (name them alike)")
        return [names.index(n) for n in model]

    def _coco(self, path: Path) -> list[tuple[Path, Points | Skipped]]:
        import json

        try:
            coco = json.loads(path.read_text())
            categories = [c for c in coco["categories"] if c.get("keypoints")]
            images = {i["id"]: i for i in coco["images"]}
            annotations = coco["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{_rel(path, self.folder)} is not COCO keypoint JSON (images, annotations and categories "
                            f"with keypoints): {err.__class__.__name__}: {err}") from None
        if not categories:
            raise UserError(f"{_rel(path, self.folder)} has no category with keypoints")
        category = categories[0]
        order = self._order([str(n) for n in category["keypoints"]])
        self.coco = {"path": path, "category": category, "order": order, "images": images, "annotations": []}
        per_image: dict[Any, list[dict]] = {}
        for ann in annotations:
            if ann.get("category_id") != category["id"]:
                continue
            if ann.get("image_id") not in images:
                self.skipped.append(Skipped(f"{path.name} annotation {ann.get('id')}",
                                            f"names image id {ann.get('image_id')}, which its images do not list"))
                continue
            per_image.setdefault(ann["image_id"], []).append(ann)
        items = []
        k = len(order)
        for image_id, info in images.items():
            file = self.images / info["file_name"]
            anns = per_image.get(image_id, [])
            if not file.is_file():
                if anns:
                    self.skipped.append(Skipped(_rel(file, self.folder), f"is annotated in {path.name} but is not there"))
                continue
            if len(anns) != 1:
                items.append((file, Skipped(_rel(file, self.folder), "has no keypoint annotation" if not anns else
                                            f"has {len(anns)} annotated figures; the model finds one per image")))
                continue
            values = np.asarray(anns[0].get("keypoints", []), np.float64)
            if values.size != 3 * k:
                items.append((file, Skipped(_rel(file, self.folder), f"has {values.size // 3} keypoints in "
                                            f"{path.name}, its category {k}")))
                continue
            values = values.reshape(k, 3)[order]
            self.coco["annotations"].append(anns[0])
            items.append((file, Points(values[:, :2], values[:, 2] > 0, image_id)))
        return items

    def _plain(self, path: Path) -> list[tuple[Path, Points | Skipped]]:
        import csv
        import json

        table: dict[str, dict[str, tuple[float, float]]] = {}
        try:
            if path.suffix == ".csv":
                with open(path, newline="") as f:
                    for row in csv.DictReader(f):
                        table.setdefault(row["image"], {})[row["keypoint"]] = (float(row["x"]), float(row["y"]))
            else:
                table = {image: {name: (float(x), float(y)) for name, (x, y) in points.items()}
                         for image, points in json.loads(path.read_text()).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{path.name} is not " + ("a CSV with columns image, keypoint, x, y"
                            if path.suffix == ".csv" else 'a JSON object {"image.png": {"keypoint": [x, y], ...}}')
                            + f": {err.__class__.__name__}: {err}") from None
        names = list(dict.fromkeys(n for points in table.values() for n in points))
        order = [names[i] for i in self._order(names)]
        items = []
        for image, points in table.items():
            file = self.images / image
            if not file.is_file():
                self.skipped.append(Skipped(f"{path.name} {image}", f"labels {image}, which is not in "
                                            f"{_rel(self.images, self.folder) or '.'}/"))
                continue
            xy = np.array([points.get(n, (np.nan, np.nan)) for n in order], np.float64)
            items.append((file, Points(xy, ~np.isnan(xy).any(1))))
        return items

    def read(self, item) -> Sample | Skipped:
        file, points = item
        if isinstance(points, Skipped):
            return points
        image = _image(file, self.folder, "keypoints")
        if isinstance(image, Skipped):
            return image
        info = (self.coco or {}).get("images", {}).get(points.image_id, {})
        if info.get("width", image.width) != image.width or info.get("height", image.height) != image.height:
            return Skipped(_rel(file, self.folder), f"is {image.width}x{image.height}, its annotations say "
                                                    f"{info['width']}x{info['height']}")
        xy = points.xy[points.visible]
        outside = (xy < 0).any(1) | (xy[:, 0] > image.width - 1) | (xy[:, 1] > image.height - 1)
        if outside.any():
            name = (self.task.names or [str(i) for i in range(len(points.xy))])[np.flatnonzero(points.visible)[outside][0]]
            return Skipped(_rel(file, self.folder), f"labels keypoint {name} at ({xy[outside][0][0]:g}, "
                                                    f"{xy[outside][0][1]:g}), outside the {image.width}x{image.height} image")
        return Sample(_rel(file, self.folder), image, points)

    def predicted(self, sample: Sample, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        from .images import keypoints_px

        return keypoints_px(outputs[self.task.output][0], *sample.image.size)

    def score(self, sample: Sample, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """[labelled keypoints, those within PCK's reach, their summed error in pixels]."""
        points = sample.label
        error = np.linalg.norm(self.predicted(sample, outputs) - points.xy, axis=1)[points.visible]
        reach = PCK_ALPHA * max(sample.image.size)
        return np.array([error.size, (error <= reach).sum(), error.sum()], np.float64)

    def inputs(self, sample: Sample, spec) -> np.ndarray:
        from .images import preprocess

        return preprocess(sample.image, spec)

    def figures(self, stack: np.ndarray) -> dict[str, Any]:
        count, hits, error = stack.sum(0)
        return {"pck": float(hits / count) if count else float("nan"),
                "keypoint_error_px": float(error / count) if count else float("nan"), "keypoints": int(count)}

    def resampled(self, summed: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"pck": summed[:, 1] / summed[:, 0], "keypoint_error_px": summed[:, 2] / summed[:, 0]}

    def at_input(self, sample: Sample, height: int, width: int) -> np.ndarray:
        """The keypoints in the model's [-1, 1] (-1 and 1 the centres of the edge pixels; the image is resized
        to the input, not letterboxed), NaN where not labelled."""
        scale = np.array([sample.image.width - 1, sample.image.height - 1], np.float64)
        return np.where(sample.label.visible[:, None], sample.label.xy / scale * 2 - 1, np.nan).astype(np.float32)

    def about(self) -> dict[str, Any]:
        return {"keypoint_names": self.task.names, "pck_alpha": PCK_ALPHA, "labels": self.source.name}

    def oks_ap(self, predictions: Mapping[Any, np.ndarray]) -> float | None:
        """COCO's keypoint AP (OKS, thresholds 0.50:0.95) of one artifact's keypoints per image id, through
        pycocotools; None without COCO annotations or pycocotools."""
        if self.coco is None or not predictions:
            return None
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        except ImportError:
            return None
        import contextlib
        import io

        c = self.coco
        category, order = c["category"], c["order"]
        gt_anns = []
        for ann in c["annotations"]:
            info = c["images"][ann["image_id"]]
            values = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
            box = ann.get("bbox") or [0, 0, info.get("width", 1), info.get("height", 1)]
            gt_anns.append({**ann, "iscrowd": ann.get("iscrowd", 0), "bbox": box,
                            "area": ann.get("area", box[2] * box[3]), "num_keypoints": int((values[:, 2] > 0).sum())})
        results = []
        for image_id, xy in predictions.items():
            ordered = np.zeros((len(order), 3))
            ordered[order, :2], ordered[order, 2] = xy, 1
            results.append({"image_id": image_id, "category_id": category["id"], "score": 1.0,
                            "keypoints": ordered.ravel().tolist()})
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
            gt = COCO()
            gt.dataset = {"images": [c["images"][i] for i in predictions], "annotations": gt_anns,
                          "categories": [category]}
            gt.createIndex()
            found = COCOeval(gt, gt.loadRes(results), "keypoints")
            found.params.imgIds = list(predictions)
            found.params.kpt_oks_sigmas = np.asarray(category.get("sigmas") or [OKS_SIGMA] * len(order), np.float64)
            found.evaluate()
            found.accumulate()
            found.summarize()
        return float(found.stats[0])


class Pairs:
    """Any other model's labels (task none): `.npz` files, each with one set of the model's inputs and the
    outputs expected of them, named as the model names them. Each is judged by the parity metric: the max
    relative error of every output against the expected one (over its scale, `runtime.compare.scale`)."""

    primary = "max_rel"
    held_to_bound = True  # an artifact's error may exceed PyTorch's by its parity bound

    def __init__(self, spec, folder: str | Path, ignore: int = IGNORE, label_map: Mapping[int, int] | None = None):
        if ignore != IGNORE or label_map is not None:
            raise UserError("--ignore-index and --label-map are for masks; expected outputs have neither")
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"--data {str(folder)!r} is not a folder; pass a folder of .npz files, each with the "
                            "model's inputs and the outputs expected of them")
        self.task, self.folder, self.skipped = task_of(spec), folder, []
        self.names = {"input": list(spec.input_names), "output": list(spec.outputs)}
        self.items = sorted(p for p in folder.iterdir() if p.suffix == ".npz" and p.is_file())
        if not self.items:
            raise UserError(f"--data {str(folder)!r} holds no .npz files (each with the inputs "
                            f"{', '.join(self.names['input'])} and the expected outputs {', '.join(self.names['output'])})")

    def read(self, path: Path) -> Sample | Skipped:
        import zipfile

        name = _rel(path, self.folder)
        try:
            with np.load(path) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            return Skipped(name, f"is not a readable .npz file ({err.__class__.__name__}: {err})")
        missing = [n for kind in ("input", "output") for n in self.names[kind] if n not in arrays]
        if missing:
            return Skipped(name, f"lacks {missing[0]}; each file holds the inputs {', '.join(self.names['input'])} "
                                 f"and the expected outputs {', '.join(self.names['output'])}, by those names")
        return Sample(name, None, arrays)

    def inputs(self, sample: Sample, spec) -> dict[str, np.ndarray]:
        return {n: np.asarray(sample.label[n], np.float32) for n in self.names["input"]}

    def score(self, sample: Sample, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """[the largest max relative error over the outputs]; an output of another shape is infinitely wrong."""
        from .compare import output_parity

        return np.array([max(output_parity(n, sample.label[n], outputs[n], 1.0).max_rel
                             for n in self.names["output"])])

    def figures(self, stack: np.ndarray) -> dict[str, Any]:
        return {"max_rel": float(stack.max()), "mean_max_rel": float(stack.mean())}

    def resampled(self, summed: np.ndarray) -> dict[str, np.ndarray]:
        return {}  # a worst case has no interval worth the name

    def about(self) -> dict[str, Any]:
        return {"inputs": self.names["input"], "outputs": self.names["output"]}

    def oks_ap(self, predictions) -> None:
        return None


READERS = {"masks": Masks, "keypoints": KeypointLabels, "pairs": Pairs}  # a task's `labels` -> their reader


def reader_for(spec, folder: str | Path, ignore: int = IGNORE, label_map: Mapping[int, int] | None = None):
    """The reader of the labels in `folder` of the model `spec` describes, by its task."""
    return READERS[task_of(spec).labels](spec, folder, ignore, label_map)


def bootstrap(per_image: Mapping[str, np.ndarray], reference: str | None, reader, better: Mapping[str, str],
              resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per artifact (its per-image figures, the same images in the same order for every artifact): the
    intervals of its figures, and of its primary figure's drop against `reference`, from the same
    resamples of the images. A resample is a count per image (how often it was drawn), so memory grows
    with images plus one image's figures, not their product."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(per_image.values())))
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(np.float64)
    tail = 100 * (1 - level) / 2
    resampled = {key: reader.resampled((weights @ s.reshape(n, -1)).reshape(resamples, *s.shape[1:]))
                 for key, s in per_image.items()}
    found = {}
    primary = reader.primary
    for key, figures in resampled.items():
        found[key] = {name: np.nanpercentile(v, [tail, 100 - tail]) for name, v in figures.items()}
        if reference is not None and key != reference and primary in figures:
            drop = resampled[reference][primary] - figures[primary]
            found[key][f"{primary}_drop"] = np.nanpercentile(drop if better[primary] == "higher" else -drop,
                                                            [tail, 100 - tail])
    return {key: {k: [float(x) for x in v] for k, v in f.items()} for key, f in found.items()}


def evaluate(bundle, folder: str | Path, ignore: int = IGNORE, label_map: Mapping[int, int] | None = None,
             threads: int | None = None, backend: str | None = None, precision: str | None = None,
             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every artifact of `bundle` that runs here (or those `backend`/`precision` name) on the labelled
    images of `folder`, each image through all of them in turn, and through `extra` runners (name ->
    an object with `infer`: the PyTorch model, "pytorch fp32"); figures, intervals and each one's drop
    against the reference: PyTorch FP32 where given, else the bundle's first FP32 artifact."""
    import contextlib

    from .bundle import Bundle
    from .errors import BackendError
    from .runners import installed_backends, load

    opened = Bundle.open(bundle)
    task = task_of(opened.spec)
    reader = reader_for(opened.spec, folder, ignore, label_map)
    chosen = [a for a in opened.artifacts if a.backend in installed_backends()
              and (backend is None or a.backend == backend) and (precision is None or a.precision == precision)]
    if not chosen:
        raise UserError(f"no artifact of {opened.name} matches --backend {backend} --precision {precision} "
                        f"among those installed here: {', '.join(a.key for a in opened.artifacts)}")
    not_run: dict[str, str] = {}
    skipped: list[Skipped] = list(reader.skipped)
    predictions: dict[str, dict[Any, np.ndarray]] = {}
    with contextlib.ExitStack() as stack:
        runners = dict(extra or {})
        for a in chosen:
            try:
                runners[f"{a.backend} {a.precision}"] = stack.enter_context(load(opened, a.backend, a.precision,
                                                                                 threads))
            except BackendError as err:
                not_run[f"{a.backend} {a.precision}"] = str(err)
        per_image: dict[str, list[np.ndarray]] = {key: [] for key in runners}
        for item in reader.items:
            sample = reader.read(item)
            if isinstance(sample, Skipped):
                skipped.append(sample)
                continue
            x = reader.inputs(sample, opened.spec)
            for key, runner in runners.items():
                outputs = runner.infer(x)
                per_image[key].append(reader.score(sample, outputs))
                if isinstance(sample.label, Points) and sample.label.image_id is not None:
                    predictions.setdefault(key, {})[sample.label.image_id] = reader.predicted(sample, outputs)
    scored = len(next(iter(per_image.values()), []))
    if not scored:
        raise UserError(f"no image of --data {str(reader.folder)!r} could be scored: "
                        + "; ".join(s.line() for s in skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    stacks = {key: np.stack(c) for key, c in per_image.items()}
    fp32 = [k for k in stacks if k.endswith(" fp32")]
    reference = "pytorch fp32" if "pytorch fp32" in stacks else fp32[0] if fp32 else None
    intervals = bootstrap(stacks, reference, reader, task.truth_metrics)
    found = {key: {**reader.figures(c), "intervals": intervals[key]} for key, c in stacks.items()}
    primary = reader.primary
    # the drop the bundle allows (`build --data --max-drop`), else the task's default; or each artifact's bound
    bounds = {f"{a.backend} {a.precision}": a.bound for a in chosen}
    allowed = ((opened.manifest.get("evaluation") or {}).get("max_drop") or {}).get(primary, task.default_max_drop)
    for key, f in found.items():
        ap = reader.oks_ap(predictions.get(key, {}))
        if ap is not None:
            f["oks_ap"] = ap
        if reference is not None and key != reference:
            f[f"{primary}_drop"] = task.drops(f, found[reference])[primary]
            f["allowed_drop"] = bounds.get(key, allowed) if reader.held_to_bound else allowed
            f["passed"] = bool(f[f"{primary}_drop"] <= f["allowed_drop"])
    return {"model": opened.name, "task": task.kind, "bundle": str(opened.path), "data": str(reader.folder),
            "images": scored, "skipped": [{"file": s.file, "why": s.why} for s in skipped], **reader.about(),
            "primary": primary, "reference": reference, "allowed_drop": allowed, "artifacts": found,
            "not_run": not_run}


def eval_set(spec, folder: str | Path, count: int, ignore: int = IGNORE, label_map: Mapping[int, int] | None = None,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The evaluation set a bundle carries: `count` labelled images of `folder` drawn in a seeded order
    (no bias from how the files are named), preprocessed at the model's input size, with their labels
    there (`at_input`: masks with -1 where not scored, or keypoints in [-1, 1] with NaN where not
    labelled). (inputs (N, C, H, W) float32, labels, what was read: the folder, the images used and
    available, the files skipped.)"""
    from .images import preprocess

    reader = reader_for(spec, folder, ignore, label_map)
    if not hasattr(reader, "at_input"):
        raise UserError(f"build --data judges segmenters and keypoint detectors on their labels; a "
                        f"{reader.task.kind!r} model's expected outputs are scored by `export evaluate --data`")
    height, width = spec.image.example[2:]
    inputs, labels, skipped = [], [], list(reader.skipped)
    for i in np.random.default_rng(seed).permutation(len(reader.items)):
        if len(inputs) == count:
            break
        sample = reader.read(reader.items[i])
        if isinstance(sample, Skipped):
            skipped.append(sample)
            continue
        inputs.append(preprocess(sample.image, spec, (height, width))[0])
        labels.append(reader.at_input(sample, height, width))
    if not inputs:
        raise UserError(f"no image of --data {str(reader.folder)!r} could be used: "
                        + "; ".join(s.line() for s in skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    return np.stack(inputs), np.stack(labels), {
        "data": str(reader.folder), "images": len(inputs), "available": len(reader.items),
        "skipped": [{"file": s.file, "why": s.why} for s in skipped]}


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
