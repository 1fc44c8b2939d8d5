"""LiteRT, build side: `.tflite` models converted straight from PyTorch by litert-torch (its converter
starts at the module, not at ONNX), FP16 weights and static INT8 by AI Edge Quantizer, calibrated on
the build's calibration set.

The converter keeps the spec's dynamic axes where it can; where it cannot (a reshape it must know
the size of), it converts at the example's shape, batch 1, and says so in the manifest; the runner
then runs a batch one image at a time and takes that size only.
"""

from __future__ import annotations

import re
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


# a plan's kept op types (ONNX), as TFLite names them
TFLITE_TYPES = {"Softmax": ("SOFTMAX",), "MatMul": ("BATCH_MATMUL", "FULLY_CONNECTED"), "Div": ("DIV",)}


class LiteRTQuantizer:
    """AI Edge Quantizer's static INT8 (INT8 weights and activations) of the FP32 .tflite, calibrated on
    the build's calibration images. A plan's layers stay in float by their PyTorch modules (the
    converter names each op after the modules it was made in) and its op types by their TFLite names."""

    backend = RUNTIME.name
    method = "minmax"

    def __init__(self, fp32: Path, data: Mapping[str, np.ndarray], modules: Mapping[str, str]):
        """`modules`: ONNX node -> the module it was made in (a plan names ONNX nodes)."""
        self.fp32, self.data, self.modules = fp32, data, modules

    def quantize(self, plan: "Plan", dst: Path) -> dict[str, Any]:
        from importlib.metadata import version

        from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

        if plan.only:
            raise ValueError(f"the plan {plan.name!r} quantizes chosen nodes alone; LiteRT's plans keep layers in float")
        tool = quantizer.Quantizer(str(self.fp32), recipe.static_wi8_ai8())
        kept = sorted({self.modules[n] for n in plan.keep_nodes if self.modules.get(n)})
        types = [op for t in plan.keep_types for op in TFLITE_TYPES.get(t, ())]
        for regex, op in [*((scope(m), "*") for m in kept), *((".*", op) for op in types)]:
            tool.update_quantization_recipe(regex, qtyping.TFLOperationName(op),
                                            algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
        names = list(self.data)
        samples = [{f"args_{i}": self.data[n][j:j + 1] for i, n in enumerate(names)}
                   for j in range(len(self.data[names[0]]))]
        with quiet(*LOGGERS), silenced(1, 2):
            result = tool.calibrate({"serving_default": samples})
            dst.parent.mkdir(parents=True, exist_ok=True)
            tool.quantize(result).export_model(str(dst), overwrite=True)
        dst.chmod(0o644)
        _runs_in_a_child(dst)
        return {"tool": f"ai-edge-quantizer {version('ai-edge-quantizer')} static_wi8_ai8 (INT8 weights and "
                        "activations, min-max calibration)",
                "method": self.method, "name": plan.name, "kept_fp32": {"modules": kept, "op_types": types}}


def scope(module: str) -> str:
    """The ops made in the module at `module` ("predictor.decoder"), as a regex over the .tflite's tensor
    names, which litert-torch writes as the path of modules ("..._module/..._predictor/..._decoder;3"),
    naming an element of a ModuleList by its index alone ("down_blocks.0" -> ".../...DownBlock2d_0")."""
    parts = module.split(".")
    steps = [f"(?:/[^/;]*_{re.escape(part)})?" if i + 1 < len(parts) and parts[i + 1].isdigit()
             else f"/[^/;]*_{re.escape(part)}" for i, part in enumerate(parts)]
    return ".*_module" + "".join(steps) + "($|[/;]).*"


class LiteRT(ExportBackend):
    runtime = RUNTIME
    marker = "D"
    needs = ("litert_torch", "ai_edge_quantizer")
    extra = "litert"
    runs_onnx = False  # its interpreter runs no ONNX: no QDQ model of the sensitivity pass or timed graph runs on it

    def stage(self, precisions):
        return f"LiteRT ({', '.join(precisions)}), converted from PyTorch"

    def convert(self, model, feeds, onnx_file, folder, precisions):
        import torch

        from ..onnx_export import dynamic_shapes

        fp32 = Path(folder) / RUNTIME.files["fp32"]
        fp32.parent.mkdir(parents=True, exist_ok=True)
        args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in model.spec.input_names)
        record: dict[str, Any] = {"converter": "litert_torch.convert"}
        model, rewritten = _lowerable(model)
        if rewritten:
            record["rewritten"] = rewritten
        dynamic = any(t.dynamic_axes for t in model.spec.inputs)
        try:
            _convert(model, args, fp32, dynamic_shapes(model) if dynamic else None)
            record["shape"] = "dynamic" if dynamic else "the spec's"
        except Exception as err:  # noqa: BLE001 - the converter's failures have no common type
            if not dynamic:
                raise ConversionError(_reason(err)) from err
            one = tuple(a[:1] for a in args)
            try:
                _convert(model, one, fp32, None)
            except Exception as again:  # noqa: BLE001 - as above
                raise ConversionError(_reason(again)) from again
            record["shape"] = {n: list(a.shape) for n, a in zip(model.spec.input_names, one)}
            record["why_fixed"] = f"the converter could not keep the dynamic axes: {_reason(err)}"
        written = {"fp32": fp32}
        if "fp16" in precisions:
            written["fp16"] = Path(folder) / RUNTIME.files["fp16"]
            _fp16(fp32, written["fp16"])
        return written, record

    def quantizer(self, folder, calib, qdq, modules):
        return LiteRTQuantizer(Path(folder) / RUNTIME.files["fp32"], calib, modules)

    def activations(self, model_file, spec, feeds, tensors, outputs, folder, threads):
        """The interpreter keeps every tensor (without a delegate, which would fuse them away); the
        converter names each op's output after the modules it was made in, the producing op's first. A
        module's output is the last tensor made inside it; an op fused into another leaves its module
        unmatched, as a fused ONNX node does."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interpreter = Interpreter(model_path=str(model_file), num_threads=threads,
                                  experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        ops = getattr(interpreter, "_get_ops_details", None)  # the execution order; no public call gives it
        if ops is None:
            return None
        key = next(iter(interpreter.get_signature_list()))
        done = interpreter.get_signature_runner(key)(
            **{f"args_{i}": np.ascontiguousarray(feeds[n]) for i, n in enumerate(spec.input_names)})
        by_output = {name: np.array(done[f"output_{i}"]) for i, name in enumerate(spec.outputs) if name in outputs}
        names = {d["index"]: d["name"].split(";;")[0] for d in interpreter.get_tensor_details()}
        made = [int(t) for op in ops() for t in op["outputs"]]
        by_module = {}
        for module in tensors:
            inside = re.compile(scope(module.removeprefix("module.")))
            last = [t for t in made if inside.fullmatch(names[t])]
            if last:
                by_module[module] = np.array(interpreter.get_tensor(last[-1]))
        return by_module, by_output

    def plans(self, qdq, quantizer):
        return quantizer


def _convert(model, args: tuple, dst: Path, dynamic) -> None:
    # litert-torch loads JAX, which warns at every later fork of the process; the build's forks (OpenVINO's
    # and NNCF's usage reports, sent from a forked child that never touches JAX) are not its user's concern
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    import litert_torch
    import torch

    with quiet(*LOGGERS), silenced(1, 2), torch.no_grad():
        litert_torch.convert(model, args, dynamic_shapes=dynamic).export(str(dst))


def _lowerable(model):
    """`model` (an Exportable), or a copy of it in which each transposed convolution with an output padding (a 3x3 of
    stride 2: ERFNet's and ESNet's upsampling) is the same convolution without padding, then
    cropped, which litert-torch can lower and the padded form it cannot ("failed to legalize operation
    'mhlo.convolution'"); with what was rewritten, for the manifest. Parity judges the result like any."""
    import copy

    from torch import nn

    found = [name for name, m in model.module.named_modules() if type(m) is nn.ConvTranspose2d
             and any(m.output_padding) and m.padding_mode == "zeros"
             and all(o <= p for o, p in zip(m.output_padding, m.padding))]
    if not found:
        return model, []
    model = copy.deepcopy(model)
    for name in found:  # named as in the user's module, as the manifest names modules
        parent, _, child = name.rpartition(".")
        holder = model.module.get_submodule(parent) if parent else model.module
        setattr(holder, child, _cropped_transpose(getattr(holder, child)))
    return model, [f"{name}: ConvTranspose2d with output_padding, as one without padding, cropped" for name in found]


def _cropped_transpose(conv):
    """ConvTranspose2d(padding p, output_padding o) as the unpadded one with p rows and columns cropped at
    the start and p - o at the end: the same values from the same weights."""
    from torch import nn

    class CroppedTranspose(nn.Module):
        def __init__(self):
            super().__init__()
            self.full = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, 0,
                                           conv.groups, conv.bias is not None, conv.dilation)
            self.full.weight, self.full.bias = conv.weight, conv.bias
            self.start, self.end = conv.padding, tuple(p - o for p, o in zip(conv.padding, conv.output_padding))

        def forward(self, x):
            y = self.full(x)
            return y[:, :, self.start[0]:y.shape[2] - self.end[0], self.start[1]:y.shape[3] - self.end[1]]

    return CroppedTranspose()


def _fp16(fp32: Path, dst: Path) -> None:
    """The FP32 model with its weights stored in FP16 (AI Edge Quantizer's float casting)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    tool = quantizer.Quantizer(str(fp32))
    tool.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    with quiet(*LOGGERS), silenced(1, 2):
        tool.quantize().export_model(str(dst), overwrite=True)
    dst.chmod(0o644)  # the quantizer writes it executable


def _runs_in_a_child(model: Path) -> None:
    """Run `model` once on zeros, as the runtime runs it (the XNNPACK delegate), in a child process
    first: LiteRT's interpreter can abort the process on a quantized graph it cannot run (glibc's
    "double free or corruption" on some INT8 models), which no exception reports. A ValueError
    saying how the child ended, where it did not succeed."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from ai_edge_litert.interpreter import Interpreter; "
            "it = Interpreter(model_path=sys.argv[1], num_threads=1); "
            "run = it.get_signature_runner(next(iter(it.get_signature_list()))); "
            "run(**{k: np.zeros(d['shape'], d['dtype']) for k, d in run.get_input_details().items()})")
    done = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        how = f"was killed by signal {-done.returncode}" if done.returncode < 0 else "failed"
        raise ValueError(f"LiteRT's interpreter {how} running the INT8 model: {(lines or ['no message'])[-1][:200]}")


class ConversionError(RuntimeError):
    """litert_torch could not convert the model; the message is the converter's, in one line."""


def _reason(err: BaseException) -> str:
    """The converter's complaint in one line: its first line, where in the installed packages the failing
    operation was traced (`torch/nn/modules/conv.py:1198`) rather than the whole path, and without the
    MLIR operation it prints after the reason (`: %410 = "mhlo.convolution"(...)`)."""
    line = next((line.strip() for line in str(err).splitlines() if line.strip()), "no message")
    line = re.sub(r"\S*/site-packages/(\S+?:\d+):\d+: error: ", r"at \1: ", line)
    line = re.split(r": %\w+ = ", line)[0]
    return f"{type(err).__name__}: {line[:300]}"


BACKEND = LiteRT()
