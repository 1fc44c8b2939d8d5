"""Loading a user's checkpoint safely: tensors only, never pickled code."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from runtime.errors import UserError

# Keys under which training scripts commonly nest the weights (FOMM saves the
# detector under "kp_detector").
WRAPPERS = ("state_dict", "model", "kp_detector")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with `weights_only=True` and unwrap the usual nestings."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist or is not a file; "
                        "expected a state_dict saved with torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"checkpoint {str(path)!r} refused: it holds pickled objects that "
                        f"weights-only loading will not run ({first}); save model.state_dict() instead") from None
    except Exception as err:  # truncated zip, not a torch file, ...
        raise UserError(f"checkpoint {str(path)!r} is unreadable ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no detail'}); "
                        "expected a file written by torch.save") from None
    for key in WRAPPERS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {str(path)!r} is not a state dict (a mapping of names to tensors, "
                        f"optionally under one of {', '.join(WRAPPERS)})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """Why `state` does not fit `model` (missing/unexpected keys, or the first shape mismatch), or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "") or "none"
        return f"missing keys: {show(missing)}; unexpected keys: {show(unexpected)}"
    for key, value in own.items():
        if state[key].shape != value.shape:
            return f"{key} has shape {tuple(state[key].shape)}, the variant expects {tuple(value.shape)}"
    return None


def load_into(model: nn.Module, path: str | Path) -> nn.Module:
    """`model` with the weights of the state dict at `path`, or a UserError saying why they do not fit."""
    state = read_state_dict(path)
    problem = mismatch(model, state)
    if problem:
        raise UserError(f"checkpoint {str(path)!r} does not fit {type(model).__name__}: {problem}")
    model.load_state_dict(state)
    return model
