"""Generated tasks: seeded images with known answers, so that a model can learn
something and its accuracy can be measured without downloading a data set.

- keypoints: a textured, articulated figure (head, torso, two arms and two legs
  of two segments each) on a cluttered background, under a random affine motion;
  its 10 keypoints in the detector's [-1, 1] coordinates (x, y; -1 and 1 the
  centres of the edge pixels).
- pets: a furry blob (body, head, ears, tail) on a varied background, with an
  Oxford-IIIT Pet style trimap: 0 pet, 1 background, 2 border.

Sample `i` of a split is drawn from its own seed, so any sample can be made
alone, in any order; the train and held-out splits use disjoint seeds.
Pillow draws, numpy textures: a few milliseconds a sample, fast enough to
stream during training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from runtime.errors import UserError
from runtime.spec import ModelSpec

SPLITS = {"train": 0, "heldout": 1}
PET_CLASSES = ("pet", "background", "border")  # the trimap's values 0, 1, 2


def _rng(task: str, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return np.random.default_rng([SPLITS[split], index, sum(map(ord, task))])


def _texture(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Smooth random texture in [0, 1], (size, size): noise blurred at `scale` pixels plus fine grain."""
    coarse = Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8))
    smooth = np.asarray(coarse.filter(ImageFilter.GaussianBlur(scale)), np.float32)
    smooth = (smooth - smooth.min()) / (np.ptp(smooth) + 1e-6)
    return np.clip(0.8 * smooth + 0.2 * rng.random((size, size)), 0, 1)


def _background(rng: np.random.Generator, size: int, clutter: int) -> Image.Image:
    """Gradient, texture and random shapes: something for the model to ignore."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0.2, 0.8, 3) + 0.3 * (rng.uniform(-1, 1, 3) * xx[..., None] + rng.uniform(-1, 1, 3) * yy[..., None])
    base = base * (0.7 + 0.3 * _texture(rng, size, rng.uniform(2, 8))[..., None])
    image = Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(clutter):
        x, y = rng.uniform(-0.1, 1.1, 2) * size
        w, h = rng.uniform(0.03, 0.25, 2) * size
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        elif shape == 1:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.line((x, y, x + w * rng.choice([-1, 1]), y + h), fill=colour, width=int(rng.integers(1, 5)))
    return image


# The figure at rest, in units of its height, centred on the pelvis: joints and limbs.
_JOINTS = {"head": (0, -0.78), "neck": (0, -0.55), "pelvis": (0, 0), "l_shoulder": (-0.16, -0.5),
           "r_shoulder": (0.16, -0.5), "l_hip": (-0.1, 0.02), "r_hip": (0.1, 0.02)}
_LIMBS = (("l_shoulder", "l_elbow", "l_hand", 0.26, 0.24), ("r_shoulder", "r_elbow", "r_hand", 0.26, 0.24),
          ("l_hip", "l_knee", "l_foot", 0.3, 0.3), ("r_hip", "r_knee", "r_foot", 0.3, 0.3))
KEYPOINT_NAMES = ("head", "neck", "pelvis", "l_hand", "r_hand", "l_foot", "r_foot", "l_elbow", "r_elbow", "l_knee")
# part colours are fixed (with jitter) so that left and right can be told apart
_PART_COLOURS = {"torso": (0.85, 0.75, 0.2), "head": (0.95, 0.55, 0.45), "l_arm": (0.9, 0.15, 0.15),
                 "r_arm": (0.15, 0.35, 0.95), "l_leg": (0.95, 0.45, 0.05), "r_leg": (0.1, 0.75, 0.3)}


def _pose(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Joint positions of an articulated figure in a random pose (figure units)."""
    joints = {k: np.array(v, np.float64) for k, v in _JOINTS.items()}
    rest = {"l_shoulder": np.pi * 0.65, "r_shoulder": np.pi * 0.35, "l_hip": np.pi * 0.58, "r_hip": np.pi * 0.42}
    for root, mid, end, upper, lower in _LIMBS:
        a1 = rest[root] + rng.uniform(-0.9, 0.9)
        a2 = a1 + rng.uniform(-1.2, 1.2)
        joints[mid] = joints[root] + upper * np.array([np.cos(a1), np.sin(a1)])
        joints[end] = joints[mid] + lower * np.array([np.cos(a2), np.sin(a2)])
    return joints


def keypoint_sample(index: int, split: str = "train", size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(image (3, size, size) float32 in [0, 1], keypoints (10, 2) float32 in [-1, 1])."""
    rng = _rng("keypoints", split, index)
    image = _background(rng, size, clutter=int(rng.integers(6, 16)))
    joints = _pose(rng)
    # random affine motion: rotation, scale, slight shear, translation (kept inside the frame)
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.38, 0.6) * size
    shear = rng.uniform(-0.15, 0.15)
    matrix = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.array(
        [[1, shear], [0, 1]])
    pts = {k: matrix @ v for k, v in joints.items()}
    lo, hi = np.min(list(pts.values()), 0), np.max(list(pts.values()), 0)
    margin = 0.06 * size
    low, high = margin - lo, size - 1 - margin - hi
    shift = rng.uniform(np.minimum(low, high), np.maximum(low, high))
    pts = {k: v + shift for k, v in pts.items()}

    # every part drawn into one label image (its index + 1), then painted in one pass
    width = max(2, int(0.07 * scale))
    parts = [("torso", [("neck", "pelvis"), ("l_shoulder", "r_shoulder"), ("l_hip", "r_hip")], 1.6),
             ("l_arm", [("l_shoulder", "l_elbow"), ("l_elbow", "l_hand")], 1),
             ("r_arm", [("r_shoulder", "r_elbow"), ("r_elbow", "r_hand")], 1),
             ("l_leg", [("l_hip", "l_knee"), ("l_knee", "l_foot")], 1.2),
             ("r_leg", [("r_hip", "r_knee"), ("r_knee", "r_foot")], 1.2)]
    label = Image.new("L", (size, size))
    draw = ImageDraw.Draw(label)
    for i, (_, segments, thickness) in enumerate(parts, 1):
        w = int(width * thickness)
        for a, b in segments:
            draw.line((*pts[a], *pts[b]), fill=i, width=w)
            for joint in (a, b):
                x, y = pts[joint]
                draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=i)
    r = 0.11 * scale
    x, y = pts["head"]
    draw.ellipse((x - r, y - r, x + r, y + r), fill=len(parts) + 1)
    names = [name for name, _, _ in parts] + ["head"]
    colours = np.array([(0, 0, 0)] + [_PART_COLOURS[n] for n in names]) + rng.uniform(-0.1, 0.1, (len(names) + 1, 3))
    labels = np.asarray(label)
    texture = _texture(rng, size, rng.uniform(1, 3))
    painted = np.clip(colours[labels] * (0.55 + 0.6 * texture[..., None]), 0, 1) * 255
    image = np.where(labels[..., None] > 0, painted, np.asarray(image, np.float32))

    x = image.astype(np.float32).transpose(2, 0, 1) / 255
    x = np.clip(x + rng.normal(0, 0.02, x.shape).astype(np.float32), 0, 1)
    kp = np.array([pts[k] for k in KEYPOINT_NAMES]) / (size - 1) * 2 - 1
    return x.astype(np.float32), kp.astype(np.float32)


def pet_sample(index: int, split: str = "train", size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(image (3, size, size) float32 in [0, 1], trimap (size, size) int64: 0 pet, 1 background, 2 border)."""
    rng = _rng("pets", split, index)
    image = _background(rng, size, clutter=int(rng.integers(2, 10)))
    mask = Image.new("L", (size, size))
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    bw, bh = rng.uniform(0.18, 0.32, 2) * size
    draw.ellipse((cx - bw, cy - bh, cx + bw, cy + bh), fill=255)  # body
    angle = rng.uniform(0, 2 * np.pi)
    hx, hy = cx + np.cos(angle) * bw * 0.95, cy + np.sin(angle) * bh * 0.95
    hr = rng.uniform(0.5, 0.75) * min(bw, bh)
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=255)  # head
    for side in (-1, 1):  # ears
        ea = angle + side * 0.6
        ex, ey = hx + np.cos(ea) * hr, hy + np.sin(ea) * hr
        tip = (ex + np.cos(ea) * hr * 0.7, ey + np.sin(ea) * hr * 0.7)
        draw.polygon([(ex + np.cos(ea + 1.57) * hr * 0.3, ey + np.sin(ea + 1.57) * hr * 0.3), tip,
                      (ex - np.cos(ea + 1.57) * hr * 0.3, ey - np.sin(ea + 1.57) * hr * 0.3)], fill=255)
    ta = angle + np.pi + rng.uniform(-0.5, 0.5)  # tail
    tx, ty = cx + np.cos(ta) * bw * 0.9, cy + np.sin(ta) * bh * 0.9
    draw.line((tx, ty, tx + np.cos(ta + 0.5) * bw * 0.8, ty + np.sin(ta + 0.5) * bh * 0.8), fill=255,
              width=max(2, int(0.05 * size)))
    # a ragged, furry outline: blur the silhouette, add noise, threshold again
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.5)), np.float32) / 255
    pet = (soft + 0.35 * (rng.random((size, size)) - 0.5)) > 0.5
    pet_img = Image.fromarray(pet.astype(np.uint8) * 255)

    # fur: streaky texture (noise blurred along one direction) over a coat colour with patches
    fur = Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(1))
    fur = np.asarray(fur.rotate(float(rng.uniform(0, 180))).filter(ImageFilter.GaussianBlur(0.7)), np.float32) / 255
    patches = _texture(rng, size, rng.uniform(4, 10)) > rng.uniform(0.4, 0.7)
    coat = np.where(patches[..., None], rng.uniform(0, 1, 3), rng.uniform(0.2, 1, 3))
    painted = np.clip(coat * (0.55 + 0.7 * fur[..., None]), 0, 1)
    image = Image.composite(Image.fromarray((painted * 255).astype(np.uint8)), image, pet_img)

    x = np.asarray(image, np.float32).transpose(2, 0, 1) / 255
    x = np.clip(x + rng.normal(0, 0.02, x.shape).astype(np.float32), 0, 1)
    grown = np.asarray(pet_img.filter(ImageFilter.MaxFilter(5))) > 0
    shrunk = np.asarray(pet_img.filter(ImageFilter.MinFilter(5))) > 0
    trimap = np.where(shrunk, 0, np.where(grown, 2, 1)).astype(np.int64)
    return x.astype(np.float32), trimap


def _keypoint_loss(outputs, targets):
    """L1 on the keypoint coordinates (through the detector's soft-argmax)."""
    import torch.nn.functional as F

    return F.l1_loss(outputs, targets)


def _trimap_loss(outputs, targets):
    """Cross-entropy on the trimap's classes."""
    import torch.nn.functional as F

    return F.cross_entropy(outputs, targets)


@dataclass(frozen=True)
class GeneratedTask:
    """The PyTorch half of a task (`runtime.tasks` is the device half): seeded
    samples drawn at the model's input size, and the loss to train on them."""

    kind: str  # the runtime task it trains
    output: str  # the model output the loss reads
    draw: Callable[[int, str, int], tuple[np.ndarray, np.ndarray]]
    criterion: Callable

    def sample(self, index: int, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        return self.draw(index, split, size)

    def batch(self, indices, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        images, targets = zip(*(self.sample(int(i), split, size) for i in indices))
        return np.stack(images), np.stack(targets)

    def loss(self, outputs, targets):
        return self.criterion(outputs[self.output], targets)


# what a model's task must say for a generated task to teach it: kind -> (settings it must have, task)
GENERATED = {
    "keypoints": (lambda t: len(t.get("names", ())) == len(KEYPOINT_NAMES),
                  lambda t: GeneratedTask("keypoints", t.get("output", "value"), keypoint_sample, _keypoint_loss)),
    "segmentation": (lambda t: t.get("classes") == len(PET_CLASSES),
                     lambda t: GeneratedTask("segmentation", t.get("output", "logits"), pet_sample, _trimap_loss)),
}


def task_for(spec: ModelSpec) -> GeneratedTask:
    """The generated task a model's spec can learn, or a UserError saying which models can."""
    task = spec.task
    fits, make = GENERATED.get(task.get("kind"), (lambda t: False, None))
    if fits(task):
        return make(task)
    what = (f"a {len(task.get('names', ()))}-keypoint detector" if "image_size" in task else
            f"a {task.get('classes')}-class segmenter" if "classes" in task else "a model with task none")
    raise UserError(f"no generated task for {what}; the generated tasks are 10 keypoints (every detector "
                    "variant) and 3-class pets (segnet, segnet-dsc, unet, unet-dsc)")


HELDOUT_SAMPLES = 64


def heldout(task: GeneratedTask, size: int, samples: int = HELDOUT_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """The held-out split: the same samples every time, from seeds training never uses."""
    return task.batch(range(samples), "heldout", size)
