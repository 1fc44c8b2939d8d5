"""The model contract: what a model takes, what it gives and what it means.

A `ModelSpec` is everything the build and the device need to know about a
model besides its weights: its inputs (names, shapes with named dynamic axes,
dtypes, value ranges, the multiple a dynamic side must be), its outputs and how
the module's return value maps to them, the preprocessing of an image, the task
(see `runtime.tasks`), parity bounds of its own and the layers INT8 must leave
in float. The zoo's variants and a user's own module produce the same spec; the
manifest stores it whole, so a bundle is used without the registry or the code
that made it. Standard library and numpy only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from .errors import UserError, check_at_least, check_choice, check_positive

RETURNS = ("tensor", "tuple", "dict")
CHANNEL_ORDERS = ("RGB", "BGR")
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")


def _is_dynamic(dim: int | str) -> bool:
    return isinstance(dim, str)


@dataclass(frozen=True)
class TensorSpec:
    """One input: `shape` holds sizes and named dynamic axes ("batch", "height");
    every dynamic axis but the first must be a multiple of `multiple`."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    range: tuple[float, float] | None = None
    multiple: int = 1
    example: tuple[int, ...] = ()  # the concrete shape the model is exported and first checked at

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "example", tuple(self.example) or tuple(d if isinstance(d, int) else 1
                                                                         for d in self.shape))
        if self.range is not None:
            object.__setattr__(self, "range", (float(self.range[0]), float(self.range[1])))
        check_choice(f"dtype of input {self.name!r}", self.dtype, DTYPES)
        if not self.name.isidentifier():
            raise UserError(f"input name {self.name!r} is not a valid name; use letters, digits and _")
        for dim in self.shape:
            if not (_is_dynamic(dim) and dim.isidentifier()) and not (isinstance(dim, int) and dim > 0):
                raise UserError(f"input {self.name!r}: dimension {dim!r} is neither a positive size nor "
                                "an axis name")
        check_at_least(f"input {self.name!r}: multiple", self.multiple)
        if len(self.example) != len(self.shape) or any(
                isinstance(d, int) and d != e for d, e in zip(self.shape, self.example)):
            raise UserError(f"input {self.name!r}: example shape {self.example} does not fit {self.rule()}")

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if _is_dynamic(d)}

    def rule(self) -> str:
        """The shapes this input accepts, in words."""
        text = "(" + ", ".join(map(str, self.shape)) + ")"
        sides = [d for i, d in self.dynamic_axes.items() if i > 0]
        if sides and self.multiple > 1:
            text += f" with {' and '.join(sides)} multiples of {self.multiple}"
        return text

    def check(self, value: Any) -> None:
        """A ValueError naming this input, what it accepts and what came, unless `value` fits."""
        name = self.name
        if not isinstance(value, np.ndarray):
            raise ValueError(f"input {name!r}: expected a numpy array of {self.dtype} {self.rule()}, "
                             f"got {type(value).__name__}")
        if value.dtype != np.dtype(self.dtype):
            raise ValueError(f"input {name!r}: expected dtype {self.dtype}, got {value.dtype}")
        if value.ndim != len(self.shape):
            raise ValueError(f"input {name!r}: expected rank {len(self.shape)} {self.rule()}, "
                             f"got rank {value.ndim} {tuple(value.shape)}")
        for axis, (want, got) in enumerate(zip(self.shape, value.shape)):
            if (isinstance(want, int) and want != got) or got < 1 or (
                    _is_dynamic(want) and axis > 0 and got % self.multiple):
                raise ValueError(f"input {name!r}: expected shape {self.rule()}, got {tuple(value.shape)}")
        if value.dtype.kind == "f":
            low, high = value.min(), value.max()  # NaN propagates into both and inf shows in one
            if not (np.isfinite(low) and np.isfinite(high)):
                raise ValueError(f"input {name!r}: holds NaN or infinite values; expected finite numbers")
            if self.range is not None:
                lo, hi = self.range
                slack = 1e-3 * (hi - lo)
                if low < lo - slack or high > hi + slack:
                    raise ValueError(f"input {name!r}: values span [{low:.4g}, {high:.4g}]; expected "
                                     f"[{lo:g}, {hi:g}] as the bundle's preprocessing gives")

    def at(self, batch: int, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """The example shape with another batch (and, for an image, another height and width)."""
        shape = [batch, *self.example[1:]]
        if height is not None:
            shape[2], shape[3] = height, width
        return tuple(shape)

    def other_size(self) -> tuple[int, int] | None:
        """A second (height, width) to check a model with dynamic sides at: not square
        where the example is, both sides moved, multiples kept; None for a fixed size."""
        if len(self.shape) != 4 or not (_is_dynamic(self.shape[2]) and _is_dynamic(self.shape[3])):
            return None
        m = self.multiple
        h, w = self.example[2:]
        return max(m, round(0.75 * h / m) * m), max(2 * m, round(1.25 * w / m) * m)


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes the first input: resized to `size` (height, width),
    or kept at its own size rounded to the input's multiple when `size` is None;
    channels in `channels` order; x * scale, then (x - mean) / std; NCHW."""

    size: tuple[int, int] | None
    channels: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"

    def __post_init__(self):
        for key in ("mean", "std"):
            object.__setattr__(self, key, tuple(float(v) for v in getattr(self, key)))
        if self.size is not None:
            object.__setattr__(self, "size", tuple(self.size))
        check_choice("channel order", self.channels, CHANNEL_ORDERS)
        check_choice("layout", self.layout, ("NCHW",))
        if len(self.mean) != len(self.std):
            raise UserError(f"--mean has {len(self.mean)} values and --std {len(self.std)}; give one per channel")
        if any(s == 0 for s in self.std):
            raise UserError("--std holds a zero; every channel's std must be non-zero")
        check_positive("--scale", self.scale)

    def value_range(self) -> tuple[float, float]:
        """The range of the model's input values that images in 0..255 give."""
        ends = [(v * self.scale - m) / s for m, s in zip(self.mean, self.std) for v in (0, 255)]
        return (min(ends), max(ends))


@dataclass(frozen=True)
class ModelSpec:
    """What export and the device know about a model besides its weights.

    `returns` says how forward's value maps to `outputs`: one tensor, a tuple or
    list (in order), or a dict (by key). `bounds` raise the nominal parity bound
    of a "backend/precision" where this model needs its own; `keep_fp32` names
    module paths that INT8 leaves in float; `source` says how to make the module
    again (a zoo variant with its overrides, or a user's file:attr with its
    arguments), for tools that need PyTorch beside the bundle."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    returns: str = "dict"
    task: Mapping[str, Any] = field(default_factory=lambda: {"kind": "none"})
    preprocess: Preprocess | None = None
    bounds: Mapping[str, float] = field(default_factory=dict)
    keep_fp32: tuple[str, ...] = ()
    summary: str = ""
    source: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "keep_fp32", tuple(self.keep_fp32))
        check_choice("return kind", self.returns, RETURNS)
        if not self.inputs:
            raise UserError(f"model {self.name!r} has no inputs; give at least one (--input NAME:1x3x256x256)")
        if not self.outputs:
            raise UserError(f"model {self.name!r} has no outputs")
        for names, what in ((self.input_names, "input"), (list(self.outputs), "output")):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise UserError(f"{what} name {twice[0]!r} is given twice; every {what} needs its own name")
        if self.returns == "tensor" and len(self.outputs) != 1:
            raise UserError(f"a model that returns one tensor has one output, not {len(self.outputs)}")
        image = self.inputs[0]
        if self.preprocess is not None and len(image.shape) == 4 and len(self.preprocess.mean) != image.example[1]:
            raise UserError(f"--mean and --std have {len(self.preprocess.mean)} values; the image input "
                            f"{image.name!r} has {image.example[1]} channels")
        from .tasks import task_of

        task_of(self)  # the task's own checks: its outputs exist, its settings make sense

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def image(self) -> TensorSpec:
        """The input an image file feeds (the first one)."""
        return self.inputs[0]

    @property
    def dynamic_size(self) -> bool:
        """Whether the image input takes any height and width (rounded to its multiple)."""
        return any(i > 0 for i in self.image.dynamic_axes)

    def input_size_for(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size runs at: the preprocessing's size,
        or (a model with dynamic sides) its own rounded to the nearest multiple."""
        if self.preprocess is not None and self.preprocess.size is not None:
            return tuple(self.preprocess.size)
        m = self.image.multiple
        return max(m, round(height / m) * m), max(m, round(width / m) * m)

    def bound(self, backend: str, precision: str, nominal: float) -> float:
        return max(nominal, float(self.bounds.get(f"{backend}/{precision}", nominal)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists, not tuples), as the manifest stores it."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        inputs = tuple(TensorSpec(**{**i, "shape": tuple(i["shape"]),
                                     "range": tuple(i["range"]) if i.get("range") else None}) for i in d["inputs"])
        pre = d.get("preprocess")
        return cls(**{**d, "inputs": inputs, "preprocess": Preprocess(**pre) if pre else None})


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME:1x3x256x256` -> ("NAME", (1, 3, 256, 256)); a UserError saying the form otherwise."""
    name, sep, dims = text.partition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name.isidentifier() or not shape or any(d < 1 for d in shape):
        raise UserError(f"--input {text!r} is not NAME:SHAPE; expected e.g. --input image:1x3x256x256")
    return name, shape


def parse_dynamic(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME:0,2,3` -> ("NAME", (0, 2, 3))."""
    name, sep, axes = text.partition(":")
    try:
        picked = tuple(int(a) for a in axes.split(","))
    except ValueError:
        picked = ()
    if not sep or not name or not picked or any(a < 0 for a in picked):
        raise UserError(f"--dynamic {text!r} is not NAME:AXES; expected e.g. --dynamic image:0,2,3 "
                        "(batch, height and width)")
    return name, picked
