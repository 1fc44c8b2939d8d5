"""State dicts saved by the published code of the encoder-decoders, read into the zoo's modules.

The zoo computes what the published ERFNet, EDANet, ESNet and LEDNet modules
compute, with its own module names. A state dict their training scripts saved
is recognised by its names, renamed to the zoo's, and the tensors the published
module holds but its forward never uses (an encoder-only `output_conv` kept for
encoder pre-training) are reported and skipped. Their training scripts use 20
classes (Cityscapes' 19 and void): build with `--classes 20` for those.

Sources (the names below are theirs):
- ERFNet: Eromera/erfnet_pytorch, train/erfnet.py, `Net(num_classes)`
- EDANet: xiaoyufenfei/Efficient-Segmentation-Networks, model/EDANet.py, `EDANet(classes)`; and
  wpf535236337/pytorch_EDANet, EDANet.py, `EDANet(num_classes)`, the one the EDANet authors point to: the same
  348 tensors in the same order, its blocks in one flat list (its forward ends at twice the input's size,
  an extra x2 upsampling the zoo does not add)
- ESNet: xiaoyufenfei/ESNet, model/ESNet.py, `ESNet(num_classes)`
- LEDNet: xiaoyufenfei/LEDNet, train/lednet.py, `Net(num_classes)` (its attention pyramid is 20 wide whatever
  num_classes says)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

Rename = tuple[str, str | Callable[[re.Match], str]]


def _shift(prefix: str, by: int) -> Callable[[re.Match], str]:
    return lambda m: f"{prefix}{int(m[1]) + by}."


# LEDNet's SS-nbt: `<conv>_l` / `<conv>_r` attributes -> the zoo's left/right lists (the right half starts with 1x3)
_SSNBT = {f"{name}_{side}": f"{'left' if side == 'l' else 'right'}.{i}"
          for side, order in (("l", ("conv3x1_1", "conv1x3_1", "bn1", "conv3x1_2", "conv1x3_2", "bn2")),
                              ("r", ("conv1x3_1", "conv3x1_1", "bn1", "conv1x3_2", "conv3x1_2", "bn2")))
          for i, name in enumerate(order)}


@dataclass(frozen=True)
class Layout:
    """How one published module names its tensors: a key that matches `signature` is
    theirs; `renames` (regex, replacement) applied in order give the zoo's name;
    keys matching `unused` are held by the published module but never used."""

    name: str
    signature: str
    renames: tuple[Rename, ...]
    unused: tuple[str, ...] = ()
    classes_at: tuple[str, int] = ("", 0)  # the key and axis of the tensor whose size is the class count

    def recognises(self, state: Mapping[str, object]) -> bool:
        return any(re.match(self.signature, k) for k in state)

    def classes(self, state: Mapping) -> int | None:
        key, axis = self.classes_at
        return int(state[key].shape[axis]) if key in state else None

    def translate(self, state: Mapping) -> tuple[dict, list[str]]:
        """(the state under the zoo's names, the unused keys skipped)."""
        renamed, unused = {}, []
        for key, value in state.items():
            if any(re.match(u, key) for u in self.unused):
                unused.append(key)
                continue
            new = key
            for pattern, replacement in self.renames:
                new = re.sub(pattern, replacement, new)
            renamed[new] = value
        return renamed, unused


LAYOUTS: dict[str, tuple[Layout, ...]] = {
    "erfnet": (Layout(
        "ERFNet (Eromera/erfnet_pytorch train/erfnet.py)", r"encoder\.initial_block\.conv\.weight$",
        ((r"^encoder\.initial_block\.", "net.encoder.0."), (r"^encoder\.layers\.(\d+)\.", _shift("net.encoder.", 1)),
         (r"^decoder\.layers\.", "net.decoder."), (r"^decoder\.output_conv\.", "net.decoder.6.")),
        (r"^encoder\.output_conv\.",), ("decoder.output_conv.weight", 1)),),
    "esnet": (Layout(
        "ESNet (xiaoyufenfei/ESNet model/ESNet.py)", r"encoder\.initial_block\.conv\.weight$",
        ((r"^encoder\.initial_block\.", "net.encoder.0."), (r"^encoder\.layers\.(\d+)\.", _shift("net.encoder.", 1)),
         (r"^decoder\.layers\.", "net.decoder."), (r"^decoder\.output_conv\.", "net.decoder.6."),
         *((rf"\.conv{k}_2{d}\.", f".branches.{i}.{j}.") for i, d in enumerate((2, 5, 9))
           for j, k in enumerate(("3x1", "1x3")))),
        (r"^encoder_output_conv\.",), ("decoder.output_conv.weight", 1)),),
    "edanet": (Layout(
        "EDANet (xiaoyufenfei/Efficient-Segmentation-Networks model/EDANet.py)", r"layers\.2\.residual_dense_layers\.",
        ((r"^layers\.([01])\.", r"net.encoder.\1."), (r"^layers\.2\.residual_dense_layers\.(\d+)\.",
                                                      _shift("net.encoder.", 2)),
         (r"^layers\.3\.", "net.encoder.7."), (r"^layers\.4\.residual_dense_layers\.(\d+)\.", _shift("net.encoder.", 8)),
         (r"^project_layer\.", "net.decoder.0.")), (), ("project_layer.weight", 0)),
        Layout("EDANet (wpf535236337/pytorch_EDANet EDANet.py)", r"layers\.2\.conv1x1\.",
               ((r"^layers\.(\d+)\.", r"net.encoder.\1."), (r"^project_layer\.", "net.decoder.0.")), (),
               ("project_layer.weight", 0))),
    "lednet": (Layout(
        "LEDNet (xiaoyufenfei/LEDNet train/lednet.py)", r"decoder\.apn\.",
        ((r"^encoder\.initial_block\.", "net.encoder.0."), (r"^encoder\.layers\.(\d+)\.", _shift("net.encoder.", 1)),
         (r"\.(conv\w+_[lr]|bn\d_[lr])\.", lambda m: f".{_SSNBT[m[1]]}."),
         (r"^decoder\.apn\.", "net.decoder.0."), (r"^net\.decoder\.0\.mid\.0\.", "net.decoder.0.mid."),
         (r"\.conv\.(\d)\.", r".\1.")),
        (r"^encoder\.output_conv\.",), ("decoder.apn.mid.0.conv.0.weight", 0)),),
}


def layout_of(arch: str, state: Mapping) -> Layout | None:
    """The published layout `state` is saved in, for an encoder-decoder `arch`, or None."""
    return next((layout for layout in LAYOUTS.get(arch, ()) if layout.recognises(state)), None)
