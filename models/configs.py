"""The settings of every family: frozen dataclasses that import no torch.

A config names its family, input shape, outputs and task, and checks its own
values; `build()` imports the family's PyTorch module only when a model is
made. So the registry, `python -m export list` and every check of a user's
command line run before (and without) importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import UserError, check_choice

from .tasks import KEYPOINT_NAMES, PET_CLASSES

CONV_KINDS = ("standard", "dsc", "asym")
NORM_KINDS = ("batch", "layer", "instance", "group")
UPSAMPLE_KINDS = ("interp", "transpose")
ENCDEC_ARCHS = ("erfnet", "edanet", "esnet", "lednet")
PET_ARCHS = ("segnet", "unet")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")


def check_kind(what: str, kind: str, valid: tuple[str, ...]) -> str:
    return check_choice(f"{what} kind", kind, valid)


@dataclass(frozen=True)
class DetectorConfig:
    """FOMM's keypoint detector settings (the `baseline` variant).

    `conv`, `norm`, `upsample` and `depth` (convs per block) shape the
    hourglass; `head_conv` the two 7x7 heads; `predictor` swaps the hourglass
    for a lightweight encoder-decoder (erfnet, edanet, esnet, lednet)."""

    predictor: str = "hourglass"
    conv: str = "standard"
    norm: str = "batch"
    upsample: str = "interp"
    head_conv: str = "standard"
    depth: int = 1
    image_size: int = 256
    channels: int = 3
    scale_factor: float = 0.25
    block_expansion: int = 32
    num_blocks: int = 5
    max_features: int = 1024
    num_kp: int = 10
    temperature: float = 0.1
    pad: int = 0

    family = "detector"
    output_names = ("value", "jacobian", "heatmap")

    def __post_init__(self):
        check_kind("conv", self.conv, CONV_KINDS)
        check_kind("head conv", self.head_conv, CONV_KINDS)
        check_kind("norm", self.norm, NORM_KINDS)
        check_kind("upsample", self.upsample, UPSAMPLE_KINDS)
        check_choice("predictor", self.predictor, ("hourglass", *ENCDEC_ARCHS))
        if self.depth < 1:
            raise UserError(f"depth {self.depth} must be at least 1 conv per block")

    @property
    def task(self) -> dict:
        names = list(KEYPOINT_NAMES) if self.num_kp == len(KEYPOINT_NAMES) else [str(i) for i in range(self.num_kp)]
        return {"kind": "keypoints", "image_size": self.image_size, "names": names}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def hourglass_size(self) -> int:
        return round(self.image_size * self.scale_factor)

    @property
    def heatmap_size(self) -> int:
        return self.hourglass_size + 2 * self.pad - 6

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.channels,) + tuple(
            min(self.max_features, self.block_expansion * 2 ** (i + 1)) for i in range(self.num_blocks)
        )

    def build(self):
        from .hourglass import KeypointDetector

        return KeypointDetector(self)


class SegmentationTask:
    """What every segmenter config shares: one `logits` output and its task."""

    family = "segmenter"
    output_names = ("logits",)
    num_classes: int
    class_names: tuple[str, ...] = ()

    @property
    def task(self) -> dict:
        names = self.class_names if len(self.class_names) == self.num_classes else range(self.num_classes)
        return {"kind": "segmentation", "classes": self.num_classes, "names": [str(n) for n in names]}


@dataclass(frozen=True)
class EncDecConfig(SegmentationTask):
    """A lightweight encoder-decoder for semantic segmentation. The default
    input is a quarter of Cityscapes' 512x1024 side, to benchmark on small CPUs."""

    arch: str = "erfnet"
    num_classes: int = 19
    height: int = 256
    width: int = 512

    class_names = CITYSCAPES_CLASSES

    def __post_init__(self):
        check_choice("encoder-decoder", self.arch, ENCDEC_ARCHS)
        if self.height % 8 or self.width % 8:
            raise UserError(f"input {self.height}x{self.width} must be a multiple of 8 on both sides")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.height, self.width)

    def build(self):
        from .encdec import BUILDERS, Segmenter

        return Segmenter(self, BUILDERS[self.arch](self.num_classes))


@dataclass(frozen=True)
class PetConfig(SegmentationTask):
    arch: str = "segnet"
    conv: str = "standard"
    num_classes: int = 3
    size: int = 128
    base: int = 64  # U-Net's first width

    class_names = PET_CLASSES

    def __post_init__(self):
        check_choice("pet network", self.arch, PET_ARCHS)
        check_kind("conv", self.conv, ("standard", "dsc"))
        if self.size % 16:
            raise UserError(f"input size {self.size} must be a multiple of 16 (four 2x2 poolings)")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def build(self):
        from .pet import build

        return build(self)
