"""Images in and pictures out, as the manifest describes them (Pillow and numpy only).

`preprocess` turns an image file into the model's input exactly as the build
did (resize, channel order, scale, mean/std, layout); the drawing helpers put
what a model found on the original image (the tasks of `runtime.tasks` call
them): named keypoints, a coloured class overlay with its legend, lettered at
the picture's scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from .errors import UserError

if TYPE_CHECKING:  # the type only: the spec's tasks draw with this module
    from .spec import ModelSpec

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


def preprocess(image: Image.Image, spec: ModelSpec, size: tuple[int, int] | None = None) -> np.ndarray:
    """(1, C, H, W) float32 input from an RGB image, as the spec's preprocessing says:
    resized to its size (a model with dynamic sides: the image's own size, rounded to
    the multiple it needs; or to `size`, height and width, if given), channel order,
    scale, mean and std."""
    p = spec.preprocess
    if p is None:
        raise UserError(f"model {spec.name!r} takes no image (its spec has no preprocessing); "
                        "feed it arrays through runtime.load(...).infer")
    height, width = size or spec.input_size_for(image.height, image.width)
    if (width, height) != image.size:
        image = image.resize((width, height), Image.BILINEAR)
    gray = spec.image.example[1] == 1
    x = np.asarray(image.convert("L") if gray else image, np.float32)
    x = x[..., None] if gray else x[..., ::-1] if p.channels == "BGR" else x
    x = (x * np.float32(p.scale) - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)


def keypoints_px(value: np.ndarray, width: int, height: int) -> np.ndarray:
    """Keypoints in [-1, 1] (x, y; -1 and 1 the centres of the edge pixels) -> pixels of a width x height image."""
    scale = np.array([width - 1, height - 1], np.float64)
    return (np.asarray(value, np.float64) + 1) / 2 * scale


def _font(image: Image.Image) -> ImageFont.ImageFont:
    """Pillow's bundled font at a size that reads at the picture's scale (at least 12 px)."""
    return ImageFont.load_default(size=max(12, round(min(image.size) / 28)))


def _colour(i: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in PALETTE[i % len(PALETTE)])


def _label_box(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, text: str, font, size: tuple[int, int],
               taken: list[tuple[float, float, float, float]]) -> tuple[float, float]:
    """Where to write a point's label: beside it on the right or the left, level
    with it or a few lines up or down, the first spot that neither overlaps a
    label already placed (in `taken`) nor leaves the picture."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left, bottom - top
    rows = [0] + [d * k for k in range(1, 4) for d in (-1, 1)]
    spots = [(sx, y - h / 2 + row * (h + 2)) for row in rows for sx in (x + r + 2, x - r - 2 - w)]
    for sx, sy in spots:
        box = (sx, sy, sx + w, sy + h)
        inside = box[0] >= 0 and box[1] >= 0 and box[2] <= size[0] and box[3] <= size[1]
        if inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
            break
    else:
        sx, sy = spots[0]
    taken.append((sx, sy, sx + w, sy + h))
    return sx - left, sy - top


def draw_keypoints(image: Image.Image, value: np.ndarray, names: list[str] | None = None) -> Image.Image:
    """Each keypoint as a dot in its own colour, its name beside it (placed so that labels do not overlap)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    font = _font(out)
    radius = max(3, round(min(out.size) / 64))
    points = keypoints_px(value, *out.size)
    for i, (x, y) in enumerate(points):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=_colour(i), outline=(0, 0, 0))
    taken: list[tuple[float, float, float, float]] = []
    for i, (x, y) in enumerate(points):
        text = names[i] if names and i < len(names) else str(i)
        draw.text(_label_box(draw, x, y, radius, text, font, out.size, taken), text, fill=_colour(i), font=font,
                  stroke_width=max(1, font.size // 10), stroke_fill=(0, 0, 0))
    return out


def upsampled_mask(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The class of every pixel of a `size` (width, height) picture: each class's logits
    resized bilinearly to it, then the argmax (smooth class borders, not the model's
    pixels blown up). One class at a time, so a large photo needs two planes of memory."""
    best = np.full((size[1], size[0]), -np.inf, np.float32)
    mask = np.zeros((size[1], size[0]), np.int64)
    for c, plane in enumerate(logits):
        up = np.asarray(Image.fromarray(np.ascontiguousarray(plane, np.float32), mode="F").resize(size, Image.BILINEAR))
        higher = up > best
        best[higher], mask[higher] = up[higher], c
    return mask


def overlay_mask(image: Image.Image, mask: np.ndarray, names: list[str] | None = None,
                 alpha: float = 0.5) -> Image.Image:
    """The class mask in colours blended over the image (resized to it if it is
    smaller), with a legend of the classes present: colour and name."""
    colours = Image.fromarray(PALETTE[mask % len(PALETTE)]).resize(image.size, Image.NEAREST)
    out = Image.blend(image, colours, alpha)
    present = [int(c) for c in np.unique(mask)]
    draw = ImageDraw.Draw(out)
    font = _font(out)
    line = font.size + 4
    labels = [names[c] if names and c < len(names) else f"class {c}" for c in present]
    width = max(draw.textlength(t, font=font) for t in labels) + line + 12
    draw.rectangle((4, 4, 4 + width, 8 + line * len(present)), fill=(0, 0, 0))
    for row, (c, text) in enumerate(zip(present, labels)):
        y = 8 + row * line
        draw.rectangle((10, y + 2, 10 + line - 6, y + line - 4), fill=_colour(c))
        draw.text((10 + line, y), text, fill=(255, 255, 255), font=font)
    return out


def caption(image: Image.Image, text: str) -> Image.Image:
    """`image` with a line of text on a dark band below it."""
    font = _font(image)
    band = font.size + 10
    out = Image.new("RGB", (image.width, image.height + band), (0, 0, 0))
    out.paste(image, (0, 0))
    ImageDraw.Draw(out).text((6, image.height + 4), text, fill=(255, 210, 80), font=font)
    return out
