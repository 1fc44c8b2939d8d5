"""Variants are data: a frozen dataclass per variant, registered here by name.

`create(name, checkpoint=None, **overrides)` builds one in eval mode;
`list_variants()` lists the names; `resolve(name, **overrides)` gives the
settings without building anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from runtime.errors import UserError

from .checkpoint import load_checkpoint
from .hourglass import DetectorConfig


@dataclass(frozen=True)
class Variant:
    name: str
    config: Any  # a frozen settings dataclass with .build(), .family, .input_shape
    summary: str
    # Figures from ARCHITECTURES.md / the seeds, shown by `export list` and asserted by the tests.
    reference: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    if variant.name in _REGISTRY:
        raise ValueError(f"variant {variant.name!r} registered twice")
    _REGISTRY[variant.name] = variant
    return variant


def list_variants() -> list[str]:
    return list(_REGISTRY)


def get_variant(name: str) -> Variant:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown variant {name!r}; valid: {', '.join(_REGISTRY)}") from None


def resolve(name: str, **overrides: Any) -> Any:
    """The variant's settings with `overrides` applied (None values ignored)."""
    config = get_variant(name).config
    overrides = {k: v for k, v in overrides.items() if v is not None}
    valid = [f.name for f in dataclasses.fields(config)]
    for key in overrides:
        if key not in valid:
            raise UserError(f"variant {name!r} has no setting {key!r}; valid: {', '.join(valid)}")
    return dataclasses.replace(config, **overrides)


def create(name: str, checkpoint: str | None = None, **overrides: Any) -> nn.Module:
    """Build variant `name` in eval mode, with the weights of `checkpoint` if given."""
    model = resolve(name, **overrides).build()
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


REFERENCE = "ARCHITECTURES.md §1"

register(Variant(
    "baseline", DetectorConfig(),
    "FOMM keypoint detector: standard 3x3 convs, BatchNorm, nearest x2 + conv",
    {"params": 14_215_368, "hourglass_params": 14_129_568, "hourglass_mult_adds": 989_312_832,
     "source": f"{REFERENCE}; seed 14.13 M / 989.31 M / 13.02 ms"},
))
register(Variant(
    "dsc", DetectorConfig(conv="dsc"),
    "baseline with every hourglass 3x3 conv depthwise separable (dw 3x3 + pw 1x1, with biases)",
    {"params": 1_702_758, "hourglass_params": 1_616_958,
     "source": f"{REFERENCE}; seed 1.62 M / 120.30 M / 6.99 ms"},
))
