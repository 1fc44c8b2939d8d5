"""Variants are data: a frozen dataclass per variant, registered here by name.

`create(name, checkpoint=None, **overrides)` builds one in eval mode;
`spec(name, **overrides)` gives its model contract (`runtime.spec.ModelSpec`),
the same kind a user's own model is described by; `list_variants()` lists the
names; `resolve(name, **overrides)` gives the settings without building
anything. Nothing here imports torch until a model is created, so names and
settings are checked in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import UserError, unknown
from runtime.spec import ModelSpec

from .configs import DetectorConfig, EncDecConfig, PetConfig


@dataclass(frozen=True)
class Variant:
    name: str
    config: Any  # a frozen settings dataclass of models.configs, with .build(), .spec(), .family, .input_shape
    summary: str
    # Figures published for the architecture (articles, papers), shown by `export list`;
    # the tests assert the exact counts against them.
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
        raise UserError(unknown("variant", name, list(_REGISTRY))) from None


def resolve(name: str, **overrides: Any) -> Any:
    """The variant's settings with `overrides` applied (None values ignored)."""
    config = get_variant(name).config
    overrides = {k: v for k, v in overrides.items() if v is not None}
    valid = [f.name for f in dataclasses.fields(config)]
    for key in overrides:
        if key not in valid:
            raise UserError(f"variant {name!r} has no setting {key!r}; valid: {', '.join(valid)}")
    return dataclasses.replace(config, **overrides)


def spec(name: str, **overrides: Any) -> ModelSpec:
    """The model contract of variant `name` with `overrides` (no torch)."""
    config = resolve(name, **overrides)
    used = {k: v for k, v in overrides.items() if v is not None}
    return config.spec(name, get_variant(name).summary, {"variant": name, "overrides": used})


def create(name: str, checkpoint: str | None = None, seed: int = 0, **overrides: Any):
    """Build variant `name` in eval mode, with the weights of `checkpoint` if
    given, else a random initialisation drawn from `seed` (the same every time)."""
    return load(name, checkpoint, seed, **overrides)[0]


def load(name: str, checkpoint: str | None = None, seed: int = 0, **overrides: Any) -> tuple[Any, dict | None]:
    """`create`, and what reading the checkpoint took: None for the zoo's own names, or the
    published layout it was saved in (renamed to the zoo's) and the unused tensors skipped."""
    import torch

    from .checkpoint import mismatch, read_state_dict
    from .published import layout_of

    config = resolve(name, **overrides)
    state = read_state_dict(checkpoint) if checkpoint is not None else None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = config.build()
    if state is None:
        return model.eval(), None
    note = None
    problem = mismatch(model, state)
    layout = layout_of(getattr(config, "arch", ""), state) if problem and config.family == "segmenter" else None
    if layout is not None:
        renamed, unused = layout.translate(state)
        problem = mismatch(model, renamed)
        saved = layout.classes(state)
        if problem and saved is not None and saved != config.num_classes:
            problem = (f"it was saved by the published {layout.name} code with {saved} classes, the variant has "
                       f"{config.num_classes}: build with --classes {saved}")
        state, note = renamed, {"layout": layout.name, "renamed": len(renamed), "unused": unused}
    if problem:
        fits = [v for v in variants_fitting(state) if v != name] if layout is None else []
        raise UserError(f"checkpoint {str(checkpoint)!r} does not fit this variant: {problem}" + (
            f"; it fits the variant{'s' if len(fits) > 1 else ''} {', '.join(fits)} (--variant {fits[0]})"
            if fits else "; it fits no registered variant" if layout is None else ""))
    model.load_state_dict(state)
    return model.eval(), note


def from_source(source: dict[str, Any], checkpoint: str | None = None):
    """The module a bundle's spec says it was made from (`spec.source`): a zoo variant
    with its overrides, or a user's code with its arguments; with `checkpoint`'s weights."""
    if "variant" in source:
        return create(source["variant"], checkpoint=checkpoint, **source.get("overrides", {}))
    if "model" in source:
        from .checkpoint import load_into
        from .user import make_module

        module = make_module(source["model"], source.get("args", {}))
        if checkpoint is not None:
            load_into(module, checkpoint)
        return module
    raise UserError("this bundle's model was passed to export.build as a module; its code is not recorded, "
                    "so no PyTorch module can be made again from the bundle")


def variants_fitting(state) -> list[str]:
    """The registered variants whose parameter names and shapes are exactly those of `state`
    (built on the meta device: no memory, no initialisation)."""
    import torch

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fitting = []
    for name, variant in _REGISTRY.items():
        with torch.device("meta"):
            model = variant.config.build()
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes:
            fitting.append(name)
    return fitting


def _detector(name: str, summary: str, reference: dict | None = None, **settings: Any) -> None:
    register(Variant(name, DetectorConfig(**settings), summary, reference or {}))


HG = "article Model Compression Part 1"
_detector("baseline", "FOMM keypoint detector: standard 3x3 convs, BatchNorm, nearest x2 + conv",
          {"params": 14_215_368, "hourglass_params": 14_129_568, "hourglass_mult_adds": 989_312_832,
           "source": f"{HG}: hourglass 14.13 M params, 989.31 M mult-adds"})
_detector("dsc", "baseline with every hourglass 3x3 conv depthwise separable (dw 3x3 + pw 1x1, with biases)",
          {"params": 1_702_758, "hourglass_params": 1_616_958,
           "source": f"{HG}: hourglass 1.62 M params, 120.30 M mult-adds"}, conv="dsc")
_detector("asym", "baseline with every hourglass 3x3 conv factorised into 3x1 then 1x3", conv="asym")
_detector("layernorm", "baseline with LayerNorm over (C, H, W) instead of BatchNorm", norm="layer")
_detector("instancenorm", "baseline with affine InstanceNorm instead of BatchNorm", norm="instance")
_detector("groupnorm", "baseline with GroupNorm (channels // 2 groups) instead of BatchNorm", norm="group")
_detector("transpose", "baseline with ConvTranspose2d(3, stride 2) instead of nearest x2 + conv",
          {"hourglass_params": 14_129_568, "source": "article Model Compression Part 1: 4,719,104 params at "
           "1024->512, as the conv"}, upsample="transpose")
_detector("dsc-deep", "dsc with three separable convs per down/up block, to win back capacity",
          conv="dsc", depth=3)
_detector("dsc-lite", "dsc with the two 7x7 heads depthwise separable too", conv="dsc", head_conv="dsc")
for _arch in ("erfnet", "edanet", "esnet", "lednet"):
    _detector(f"kp-{_arch}", f"keypoint detector with a {_arch.upper().replace('NET', 'Net')} encoder-decoder "
              "instead of the hourglass (35 output channels for the heads)", predictor=_arch)

for _arch, _params, _published in (("erfnet", 2_064_191, "ERFNet (Romera et al. 2017): 2.06 M, 68.0 test mIoU"),
                                    ("edanet", 689_485, "EDANet (Lo et al. 2019): 0.68 M, 67.3 test mIoU"),
                                    ("esnet", 1_659_071, "ESNet (Wang et al. 2019): 1.66 M, 70.7 test mIoU"),
                                    ("lednet", 922_821, "LEDNet (Wang et al. 2019): 0.94 M, 69.2 mIoU")):
    register(Variant(_arch, EncDecConfig(arch=_arch), f"{_arch.upper().replace('NET', 'Net')} (Cityscapes, "
                     "19 classes) at 256x512", {"params": _params, "source": _published}))

PET = "article on pet SegNet with separable convs"
register(Variant("segnet", PetConfig(), "pet SegNet: max-pool indices and max-unpool, 3 classes at 128x128",
                 {"params": 15_274_892, "mult_adds": 9.12e9, "source": f"{PET}: 15.27 M, 88.28% pixel acc."}))
register(Variant("segnet-dsc", PetConfig(conv="dsc"), "pet SegNet with depthwise separable convs (no biases)",
                 {"params": 1_749_671, "mult_adds": 1.08e9, "source": f"{PET}: 1.75 M, 86.96% pixel acc."}))
register(Variant("unet", PetConfig(arch="unet"), "standard U-Net (64..1024 wide) for the pet task at 128x128",
                 {"source": f"{PET}: 91.3% pixel acc. (100 epochs)"}))
register(Variant("unet-dsc", PetConfig(arch="unet", conv="dsc"), "U-Net with depthwise separable 3x3 convs"))
