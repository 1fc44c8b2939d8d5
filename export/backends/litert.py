"""LiteRT, build side: `.tflite` models converted straight from PyTorch by litert-torch (its converter
starts at the module, not at ONNX), FP16 weights and static INT8 by AI Edge Quantizer, calibrated on
the build's calibration set.

The converter keeps the spec's dynamic axes where it can; where it cannot (a reshape it must know
the size of), it converts at the example's shape, batch 1, and says so in the manifest; the runner
then runs a batch one image at a time and takes that size only.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from runtime.backends.litert import BACKEND as RUNTIME

from ..quiet import quiet, silenced
from .base import ExportBackend

if TYPE_CHECKING:
    from ..quantize import Plan

# the libraries' loggers and what their C++ side prints: progress and notices, never the build's output
LOGGERS = ("litert_torch", "absl", "jax", "torch._dynamo", "torch.export", "torchao")


class LiteRTQuantizer:
    """AI Edge Quantizer's static INT8 (INT8 weights and activations) of the FP32 .tflite, calibrated on
    the build's calibration images; it quantizes every op it supports (the full plan)."""

    backend = RUNTIME.name
    method = "minmax"

    def __init__(self, fp32: Path, data: Mapping[str, np.ndarray]):
        self.fp32, self.data = fp32, data

    def quantize(self, plan: "Plan", dst: Path) -> dict[str, Any]:
        if plan.keep_nodes or plan.keep_types or plan.only:
            raise ValueError(f"LiteRT's INT8 quantizes every op it supports: the plan {plan.name!r} keeps layers "
                             "in float, which it cannot")
        from importlib.metadata import version

        from ai_edge_quantizer import quantizer, recipe

        tool = quantizer.Quantizer(str(self.fp32), recipe.static_wi8_ai8())
        names = list(self.data)
        samples = [{f"args_{i}": self.data[n][j:j + 1] for i, n in enumerate(names)}
                   for j in range(len(self.data[names[0]]))]
        with quiet(*LOGGERS), silenced(1, 2):
            result = tool.calibrate({"serving_default": samples})
            dst.parent.mkdir(parents=True, exist_ok=True)
            tool.quantize(result).export_model(str(dst), overwrite=True)
        dst.chmod(0o644)
        return {"tool": f"ai-edge-quantizer {version('ai-edge-quantizer')} static_wi8_ai8 (INT8 weights and "
                        "activations, min-max calibration)",
                "method": self.method, "name": plan.name, "kept_fp32": {"nodes": [], "op_types": []}}


class LiteRT(ExportBackend):
    runtime = RUNTIME
    marker = "D"
    needs = ("litert_torch", "ai_edge_quantizer")
    extra = "litert"

    def stage(self, precisions):
        return f"LiteRT ({', '.join(precisions)}), converted from PyTorch"

    def convert(self, model, feeds, onnx_file, folder, precisions):
        import torch

        from ..onnx_export import dynamic_shapes

        fp32 = Path(folder) / RUNTIME.files["fp32"]
        fp32.parent.mkdir(parents=True, exist_ok=True)
        args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in model.spec.input_names)
        record: dict[str, Any] = {"converter": "litert_torch.convert"}
        dynamic = any(t.dynamic_axes for t in model.spec.inputs)
        try:
            _convert(model, args, fp32, dynamic_shapes(model) if dynamic else None)
            record["shape"] = "dynamic" if dynamic else "the spec's"
        except Exception as err:  # noqa: BLE001 - the converter's failures have no common type
            if not dynamic:
                raise
            one = tuple(a[:1] for a in args)
            _convert(model, one, fp32, None)
            record["shape"] = {n: list(a.shape) for n, a in zip(model.spec.input_names, one)}
            record["why_fixed"] = f"the converter could not keep the dynamic axes: {_reason(err)}"
        written = {"fp32": fp32}
        if "fp16" in precisions:
            written["fp16"] = Path(folder) / RUNTIME.files["fp16"]
            _fp16(fp32, written["fp16"])
        return written, record

    def quantizer(self, folder, calib, qdq):
        return LiteRTQuantizer(Path(folder) / RUNTIME.files["fp32"], calib)

    def plans(self, qdq):
        return None


def _convert(model, args: tuple, dst: Path, dynamic) -> None:
    # litert-torch loads JAX, which warns at every later fork of the process; the build's forks (OpenVINO's
    # and NNCF's usage reports, sent from a forked child that never touches JAX) are not its user's concern
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    import litert_torch
    import torch

    with quiet(*LOGGERS), silenced(1, 2), torch.no_grad():
        litert_torch.convert(model, args, dynamic_shapes=dynamic).export(str(dst))


def _fp16(fp32: Path, dst: Path) -> None:
    """The FP32 model with its weights stored in FP16 (AI Edge Quantizer's float casting)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    tool = quantizer.Quantizer(str(fp32))
    tool.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    with quiet(*LOGGERS), silenced(1, 2):
        tool.quantize().export_model(str(dst), overwrite=True)
    dst.chmod(0o644)  # the quantizer writes it executable


def _reason(err: BaseException) -> str:
    """The converter's complaint in one line: the first line of its message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {(lines or ['no message'])[0][:200]}"


BACKEND = LiteRT()
