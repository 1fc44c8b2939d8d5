"""Loading a user's checkpoint safely: tensors only, never pickled code.

A checkpoint is what `torch.save` writes (its zip, or the legacy format) or a
`.safetensors` file, as HuggingFace's `save_pretrained` writes. A transformers
model whose own names differ from the file's (transformers 5 renames modules and
keeps the old names on disk) is read through the library's own key mapping.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from runtime.errors import UserError

# Keys under which training scripts commonly nest the weights (FOMM saves the
# detector under "kp_detector").
WRAPPERS = ("state_dict", "model", "kp_detector")
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip; its legacy format starts with a pickle


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict (weights only) and unwrap the usual nestings."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {str(path)!r} is a folder; name the weights file in it (a save_pretrained "
                        "folder holds model.safetensors)")
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist or is not a file; "
                        "expected a state_dict saved with torch.save, or a .safetensors file")
    with path.open("rb") as f:
        head = f.read(9)
    if _is_safetensors(head, path):
        obj = _read_safetensors(path)
    elif head.startswith(TORCH_MAGIC):
        obj = _read_torch(path)
    else:
        raise UserError(f"checkpoint {str(path)!r} is neither a torch.save file (a zip, or the legacy pickle) nor "
                        f"safetensors (it starts with {head[:4]!r}); expected a state_dict saved with torch.save "
                        "or a .safetensors file")
    for key in WRAPPERS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {str(path)!r} is not a state dict (a mapping of names to tensors, "
                        f"optionally under one of {', '.join(WRAPPERS)})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_safetensors(head: bytes, path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header."""
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"checkpoint {str(path)!r} is not a readable safetensors file ({_first(err)})") from None


def _read_torch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:  # code weights-only loading will not run; anything else the unpickler stops at is damage
            raise UserError(f"checkpoint {str(path)!r} refused: it holds pickled objects that weights-only loading "
                            f"will not run ({found[1]}); save model.state_dict() instead") from None
        problem = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        raise UserError(f"checkpoint {str(path)!r} is a damaged torch.save file "
                        f"({problem[1].strip() if problem else _first(err)}); save it again with torch.save") from None
    except Exception as err:  # a truncated zip, a damaged pickle, ...
        raise UserError(f"checkpoint {str(path)!r} is a damaged torch.save file ({type(err).__name__}: "
                        f"{_first(err)}); save it again with torch.save") from None


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "") or "none"


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no detail"


def mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """Why `state` does not fit `model` (missing/unexpected keys, or the first shape mismatch), or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        return f"missing keys: {_show(missing)}; unexpected keys: {_show(unexpected)}"
    for key, value in own.items():
        if state[key].shape != value.shape:
            return f"{key} has shape {tuple(state[key].shape)}, the variant expects {tuple(value.shape)}"
    return None


def load_into(model: nn.Module, path: str | Path) -> dict | None:
    """Load the state dict at `path` into `model`, or raise a UserError saying why it does not fit.
    Returns how it was read when its names were not the module's own (as `models.load` does), else None."""
    state = read_state_dict(path)
    problem = mismatch(model, state)
    note = None
    if problem and _is_transformers(model):
        state, problem = _transformers_mapped(model, state)
        note = {"layout": f"transformers' {type(model).__name__} (the library's own key mapping)",
                "renamed": len(state), "unused": []}
    if problem:
        raise UserError(f"checkpoint {str(path)!r} does not fit {type(model).__name__}: {problem}")
    model.load_state_dict(state)
    return note


def _is_transformers(model: nn.Module) -> bool:
    import sys

    transformers = sys.modules.get("transformers")  # imported already if the model is one of its classes
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def _transformers_mapped(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, str | None]:
    """`state` under the module's names, as transformers' own loading maps them (its checkpoint
    conversion, which renames keys saved in older layouts), and what still does not fit."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        loaded, info = type(model).from_pretrained(None, config=model.config, state_dict=state,
                                                   output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    shapes = [str(m[0]) if isinstance(m, tuple) else str(m) for m in info["mismatched_keys"]]
    if missing or unexpected or shapes:
        return state, (f"even through transformers' key mapping: missing keys: {_show(missing)}; unexpected keys: "
                       f"{_show(unexpected)}" + (f"; other shapes: {_show(shapes)}" if shapes else ""))
    return loaded.state_dict(), None
