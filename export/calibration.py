"""INT8 calibration inputs: a folder of the user's images, or the generated task's, or synthetic ones."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from runtime.errors import UserError
from runtime.spec import ModelSpec

CALIB_METHODS = ("minmax", "entropy", "percentile")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def check_calib_dir(path: Path) -> list[Path]:
    """The images of a calibration folder, or a UserError naming the problem."""
    if not path.is_dir():
        raise UserError(f"--calib-dir {str(path)!r} is not a folder; expected a folder of PNG/JPEG images")
    from runtime.images import open_image

    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise UserError(f"--calib-dir {str(path)!r} holds no images; expected files ending in "
                        f"{', '.join(IMAGE_SUFFIXES)}")
    readable = []
    for image in images:
        try:
            open_image(image)
            readable.append(image)
        except UserError:
            continue
    if not readable:
        raise UserError(f"--calib-dir {str(path)!r}: none of its {len(images)} image files is readable "
                        "(Pillow cannot open them); expected PNG/JPEG images")
    return readable


def calibration_set(spec: ModelSpec, calib_dir: Path | None, samples: int) -> tuple[dict[str, np.ndarray], dict]:
    """Calibration feeds (name -> (N, ...) float32) and their description for the manifest:
    the images of `calib_dir` preprocessed as the spec says (at the example size), else
    the model's generated task's training images, else seeded synthetic images."""
    from .golden import golden_inputs

    feeds = golden_inputs(spec, samples, seed=1)  # every input but the image stays synthetic
    image = spec.image.name
    if calib_dir is not None:
        from runtime.images import open_image
        from runtime.images import preprocess as prep

        files = check_calib_dir(calib_dir)[:samples]
        feeds = {k: v[:len(files)] for k, v in feeds.items()}
        feeds[image] = np.stack([prep(open_image(f), spec, size=spec.image.example[2:])[0] for f in files])
        source = f"{len(files)} images from {calib_dir}"
    else:
        from models.tasks import task_for

        try:
            task = task_for(spec)
            feeds[image] = task.batch(range(samples), "train", spec.image.example[2])[0]
            source = f"{samples} generated {task.kind} training images"
        except UserError:
            source = f"{samples} synthetic smooth images (no generated task for this model)"
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in feeds.values())).hexdigest()
    return feeds, {"source": source, "samples": len(feeds[image]), "sha256": digest}


def task_images(spec: ModelSpec, samples: int) -> np.ndarray | None:
    """Held-out images of the model's generated task (never used for calibration), or None."""
    from models.tasks import task_for
    from models.train import heldout

    if len(spec.inputs) > 1:
        return None
    try:
        return heldout(task_for(spec), spec.image.example[2], samples)[0]
    except UserError:
        return None
