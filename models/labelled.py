"""The generated held-out split written as labelled files, as people keep theirs, to try `--data` on
without a data set: for a pet segmenter `images/` and `masks/` (palette PNGs, as Pascal VOC saves
them); for a keypoint detector `images/` and `annotations.json` in COCO's keypoint format."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.errors import UserError, check_at_least
from runtime.files import temporary_name

from .tasks import KEYPOINT_NAMES, PET_CLASSES, keypoint_sample, pet_sample

# Pascal VOC's palette for its first classes (index -> RGB); 255 (not scored) is drawn light grey
PALETTE = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
IGNORE_COLOUR = (224, 224, 192)


def palette_png(mask: np.ndarray) -> Image.Image:
    """A class-index mask as a palette PNG, VOC's colours."""
    image = Image.fromarray(mask.astype(np.uint8), "P")
    colours = [0] * 768
    for i, rgb in enumerate(PALETTE):
        colours[3 * i:3 * i + 3] = rgb
    colours[3 * 255:] = IGNORE_COLOUR
    image.putpalette(colours)
    return image


def coco_keypoints(points: list[np.ndarray], size: int) -> dict:
    """COCO keypoint annotations of one figure per `size`-pixel image (keypoints (10, 2) in [-1, 1] each),
    every keypoint visible (2), its box the keypoints' extent with a margin."""
    images, annotations = [], []
    for i, kp in enumerate(points):
        xy = (kp.astype(np.float64) + 1) / 2 * (size - 1)
        low, high = np.clip(xy.min(0) - 8, 0, size - 1), np.clip(xy.max(0) + 8, 0, size - 1)
        box = [round(float(low[0]), 2), round(float(low[1]), 2), round(float((high - low)[0]), 2),
               round(float((high - low)[1]), 2)]
        images.append({"id": i + 1, "file_name": f"figure{i:04d}.png", "width": size, "height": size})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "bbox": box,
                            "area": round(box[2] * box[3], 2), "num_keypoints": len(xy),
                            "keypoints": [v for x, y in xy for v in (round(float(x), 2), round(float(y), 2), 2)]})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "figure", "keypoints": list(KEYPOINT_NAMES), "skeleton": []}]}


def write_heldout(variant: str, out: Path, samples: int = 64, size: int | None = None) -> Path:
    """The held-out split of `variant`'s generated task, drawn at `size` pixels (default: 192 for pets,
    256 for figures), into `out` (written whole or not at all)."""
    import json

    import models

    check_at_least("--samples", samples)
    task = models.spec(variant).task
    pets = task.get("kind") == "segmentation" and task.get("classes") == len(PET_CLASSES)
    figures = task.get("kind") == "keypoints" and len(task.get("names", ())) == len(KEYPOINT_NAMES)
    if not (pets or figures):
        raise UserError(f"{variant} has no generated task to write: the pet segmenters (segnet, segnet-dsc, unet, "
                        "unet-dsc) and the keypoint detectors have")
    size = size or (192 if pets else 256)
    check_at_least("--size", size, 32)
    out = Path(out)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise UserError(f"--out {str(out)!r} exists and is not an empty folder; name a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    try:
        points = []
        for i in range(samples):
            image, label = (pet_sample if pets else keypoint_sample)(i, "heldout", size)
            picture = Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8))
            if pets:
                (tmp / "masks").mkdir(exist_ok=True)
                picture.save(tmp / "images" / f"pet{i:04d}.png")
                palette_png(label).save(tmp / "masks" / f"pet{i:04d}.png")
            else:
                picture.save(tmp / "images" / f"figure{i:04d}.png")
                points.append(label)
        if figures:
            (tmp / "annotations.json").write_text(json.dumps(coco_keypoints(points, size)) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
