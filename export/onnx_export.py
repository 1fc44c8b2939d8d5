"""Stage: PyTorch -> ONNX with the dynamo exporter (the TorchScript one as a fallback), then `onnx.checker`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import torch

from runtime.errors import UserError

from .contract import Exportable, example_tensors
from .quiet import quiet, silenced
from .settings import check_opset

MAX_SIDE = 8192  # the largest dynamic height or width an export allows


def quiet_exporter():
    """The exporter logs about optional packages (torchvision), its IR library
    about empty attribute lists (SegNet's max-unpool), and prints its progress;
    none of it helps the user of a build."""
    return quiet("torch.onnx", "onnx_ir")


def dynamic_shapes(model: Exportable) -> tuple[tuple[dict[int, Any], ...]]:
    """torch.export dims for every named axis of the spec's inputs (one Dim per name,
    so inputs that share an axis name share its size); a side that must be a
    multiple of m is m times a dim."""
    dims: dict[str, Any] = {}
    per_input = []
    for t in model.spec.inputs:
        axes = {}
        for axis, name in t.dynamic_axes.items():
            if name not in dims:
                if axis == 0:
                    dims[name] = torch.export.Dim(name, min=1, max=1024)
                elif t.multiple > 1:
                    dims[name] = t.multiple * torch.export.Dim(f"{name}_over_{t.multiple}", min=1,
                                                               max=MAX_SIDE // t.multiple)
                else:
                    dims[name] = torch.export.Dim(name, min=1, max=MAX_SIDE)
            axes[axis] = dims[name]
        per_input.append(axes)
    return (tuple(per_input),)  # forward(*inputs): the dims of the one varargs tuple


def export_onnx(model: Exportable, inputs: Mapping[str, np.ndarray], path: Path, opset: int,
                optimize: bool = True, fallback: bool = True) -> dict:
    """Export with the spec's dynamic axes; returns the export options for the manifest.
    Where the dynamo exporter fails, the TorchScript exporter (`dynamo=False`) is tried
    and recorded; where both fail, a UserError names where each stopped.
    `optimize=False` keeps the graph as traced, one node per PyTorch op (for diagnosis)."""
    check_opset(opset)
    spec = model.spec
    args = example_tensors(spec, inputs)
    names = {"input_names": spec.input_names, "output_names": list(spec.outputs)}
    axes = {t.name: {str(a): n for a, n in t.dynamic_axes.items()} for t in spec.inputs if t.dynamic_axes}
    try:
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(model, args, str(path), dynamo=True, opset_version=opset, external_data=False,
                              dynamic_shapes=dynamic_shapes(model), verbose=False, optimize=optimize, **names)
        exporter = "torch.onnx.export(dynamo=True)"
        why = None
    except Exception as err:  # the exporter raises many kinds; each is summarised, none hidden
        why = exporter_failure(err)
        if not fallback:
            raise UserError(f"the dynamo exporter cannot export {spec.name!r}: {why}") from None
        try:
            with quiet_exporter(), torch.no_grad(), silenced(1):
                torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset,
                                  dynamic_axes={k: {int(a): n for a, n in v.items()} for k, v in axes.items()}, **names)
        except Exception as err2:
            raise UserError(f"{spec.name!r} cannot be exported to ONNX: the dynamo exporter stopped at {why}; "
                            f"the TorchScript exporter (dynamo=False) at {exporter_failure(err2)}") from None
        exporter = "torch.onnx.export(dynamo=False), the TorchScript exporter"
    onnx.checker.check_model(str(path), full_check=True)
    info = {"exporter": exporter, "opset": opset, "dynamic_axes": axes,
            "checker": "onnx.checker.check_model(full_check=True)"}
    if why is not None:
        info["dynamo_failure"] = why
    return info


def exporter_failure(err: BaseException) -> str:
    """One line of what an exporter stopped at: the exception's summary, without the advice around it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    summary = text.split("## Exception summary", 1)[-1]
    lines = [line.strip() for line in summary.splitlines() if line.strip()]
    skip = ("For more information", "The error above", "(Refer to", "- ", "Failed to export")
    useful = [line for line in lines if not line.startswith(skip)]
    line = useful[0] if useful else type(err).__name__
    line = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", line)
    return line if len(line) <= 300 else line[:297] + "..."
