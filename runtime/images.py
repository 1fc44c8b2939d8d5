"""Images in and pictures out, as the manifest describes them (Pillow and numpy only).

`preprocess` turns an image file into the model's input exactly as the build
did (resize, channel order, scale, mean/std, layout); `render` draws what the
model found on the original image: keypoints for detectors, a coloured class
overlay for segmenters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from .errors import UserError

# Distinct colours for keypoints and classes (class 0 first), cycling if there are more.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
], dtype=np.uint8)


def open_image(path: str | Path) -> Image.Image:
    """An RGB image, or a UserError naming the file and what is accepted."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {str(path)!r} does not exist; pass image files (PNG, JPEG, BMP, ...)")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"image {str(path)!r} is not a readable image ({err.__class__.__name__}); "
                        "pass PNG, JPEG, BMP or another format Pillow reads") from None


def preprocess(image: Image.Image, spec: Mapping[str, Any]) -> np.ndarray:
    """(1, C, H, W) float32 input from an RGB image, per the manifest's `preprocess`."""
    height, width = spec["size"]
    resized = image.resize((width, height), Image.BILINEAR)
    x = np.asarray(resized, np.float32) * np.float32(spec["scale"])
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])  # the build's layout: NCHW, RGB


def keypoints_px(value: np.ndarray, width: int, height: int) -> np.ndarray:
    """Keypoints in [-1, 1] (x, y; -1 and 1 the centres of the edge pixels) -> pixels of a width x height image."""
    scale = np.array([width - 1, height - 1], np.float64)
    return (np.asarray(value, np.float64) + 1) / 2 * scale


def draw_keypoints(image: Image.Image, value: np.ndarray) -> Image.Image:
    out = image.copy()
    draw = ImageDraw.Draw(out)
    radius = max(3, round(min(out.size) / 64))
    for i, (x, y) in enumerate(keypoints_px(value, *out.size)):
        colour = tuple(int(c) for c in PALETTE[i % len(PALETTE)])
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(0, 0, 0))
        draw.text((x + radius + 1, y - radius - 1), str(i), fill=colour)
    return out


def overlay_mask(image: Image.Image, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The class mask (H, W) in colours, blended over the image at its own size."""
    colours = Image.fromarray(PALETTE[mask % len(PALETTE)]).resize(image.size, Image.NEAREST)
    return Image.blend(image, colours, alpha)


def render(task: Mapping[str, Any], image: Image.Image, outputs: Mapping[str, np.ndarray]) -> tuple[Image.Image, dict]:
    """The picture to look at, and the findings in plain numbers (pixels of the original image)."""
    if task.get("kind") == "keypoints":
        value = outputs["value"][0]
        found = {"keypoints_px": keypoints_px(value, *image.size).round(2).tolist()}
        return draw_keypoints(image, value), found
    if task.get("kind") == "segmentation":
        mask = outputs["logits"][0].argmax(0)
        counts = np.bincount(mask.ravel(), minlength=task["classes"]) / mask.size
        found = {"mask": mask.tolist(), "class_fractions": counts.round(6).tolist()}
        return overlay_mask(image, mask), found
    raise UserError(f"task {task.get('kind')!r} has no picture; known: keypoints, segmentation")
