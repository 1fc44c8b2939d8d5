"""The settings of every family: frozen dataclasses that import no torch.

A config checks its own values, says what its model takes and gives as a
`ModelSpec` (`spec()`), and imports the family's PyTorch module only when
`build()` makes a model. So the registry, `python -m export list` and every check of a user's
command line run before (and without) importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import UserError, check_choice
from runtime.spec import ModelSpec, Preprocess, TensorSpec

from .kinds import CONV_KINDS, NORM_KINDS, UPSAMPLE_KINDS, check_kind
from .tasks import KEYPOINT_NAMES, PET_CLASSES

ENCDEC_ARCHS = ("erfnet", "edanet", "esnet", "lednet")
PET_ARCHS = ("segnet", "unet")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")


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

    def __post_init__(self):
        check_kind("conv", self.conv, CONV_KINDS)
        check_kind("head conv", self.head_conv, CONV_KINDS)
        check_kind("norm", self.norm, NORM_KINDS)
        check_kind("upsample", self.upsample, UPSAMPLE_KINDS)
        check_choice("predictor", self.predictor, ("hourglass", *ENCDEC_ARCHS))
        if self.depth < 1:
            raise UserError(f"depth {self.depth} must be at least 1 conv per block")

    def spec(self, name: str, summary: str = "", source: dict | None = None) -> ModelSpec:
        """A fixed-size image in [0, 1] (the keypoint grid is built for it); keypoints,
        their Jacobians and heatmaps out."""
        names = list(KEYPOINT_NAMES) if self.num_kp == len(KEYPOINT_NAMES) else [str(i) for i in range(self.num_kp)]
        side = self.image_size
        image = TensorSpec("image", ("batch", self.channels, side, side), range=(0.0, 1.0),
                           example=(1, self.channels, side, side))
        return ModelSpec(name, (image,), ("value", "jacobian", "heatmap"), "dict",
                         {"kind": "keypoints", "output": "value", "image_size": side, "names": names},
                         Preprocess((side, side), mean=(0.0,) * self.channels, std=(1.0,) * self.channels),
                         summary=summary, source=source or {})

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
    """What every segmenter config shares: any image size that is a multiple of
    `multiple` (fully convolutional), one `logits` output at the input's size."""

    family = "segmenter"
    num_classes: int
    class_names: tuple[str, ...] = ()
    multiple: int = 8

    input_shape: tuple[int, int, int]

    def spec(self, name: str, summary: str = "", source: dict | None = None) -> ModelSpec:
        names = self.class_names if len(self.class_names) == self.num_classes else range(self.num_classes)
        image = TensorSpec("image", ("batch", 3, "height", "width"), range=(0.0, 1.0), multiple=self.multiple,
                           example=(1, *self.input_shape))
        return ModelSpec(name, (image,), ("logits",), "dict",
                         {"kind": "segmentation", "output": "logits", "classes": self.num_classes,
                          "names": [str(n) for n in names]},
                         Preprocess(None), summary=summary, source=source or {})


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
        if self.height % self.multiple or self.width % self.multiple:
            raise UserError(f"input {self.height}x{self.width} must be a multiple of {self.multiple} on both sides")
        if self.num_classes < 2:
            raise UserError(f"--classes {self.num_classes} must be at least 2")

    @property
    def multiple(self) -> int:
        """Three stride-2 downsamplings; LEDNet's attention pyramid halves its input thrice more, to a quarter."""
        return 32 if self.arch == "lednet" else 8

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
    multiple = 16

    def __post_init__(self):
        check_choice("pet network", self.arch, PET_ARCHS)
        check_kind("conv", self.conv, ("standard", "dsc"))
        if self.size % 16:
            raise UserError(f"input size {self.size} must be a multiple of 16 (four 2x2 poolings)")
        if self.num_classes < 2:
            raise UserError(f"--classes {self.num_classes} must be at least 2")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def build(self):
        from .pet import build

        return build(self)
