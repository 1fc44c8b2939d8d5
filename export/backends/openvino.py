"""OpenVINO, build side: IRs converted from the final ONNX graph (FP32, and FP16 with its weights
stored in FP16), INT8 by NNCF's post-training quantization of the FP32 IR, and past the full plan
ONNX Runtime's QDQ models converted (OpenVINO runs their Quantize/Dequantize pairs as INT8)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from runtime.backends.openvino import BACKEND as RUNTIME

from ..quiet import quiet
from .base import ExportBackend

if TYPE_CHECKING:
    from ..quantize import OnnxRuntimeQuantizer, Plan

NNCF_TYPES = {"Softmax": "Softmax", "MatMul": "MatMul"}  # a plan's kept op types, as OpenVINO names them
# (NNCF quantizes no Divide)


class OpenVINOQuantizer:
    """NNCF post-training quantization of an IR; a plan's nodes and types go into its ignored scope."""

    backend = RUNTIME.name
    method = "nncf"

    def __init__(self, fp32_xml: Path, data: Mapping[str, np.ndarray]):
        from ..quantize import one_at_a_time

        self.xml = fp32_xml
        self.items = one_at_a_time(data)

    def quantize(self, plan: "Plan", dst: Path) -> dict[str, Any]:
        import nncf
        import openvino as ov

        model = ov.Core().read_model(str(self.xml))
        keep = set(plan.keep_nodes)
        # the converter names a Conv node's convolution "<node>/WithoutBiases" and its bias "<node>"
        names = [op.get_friendly_name() for op in model.get_ops()
                 if op.get_friendly_name().removesuffix("/WithoutBiases") in keep]
        types = [NNCF_TYPES[t] for t in plan.keep_types if t in NNCF_TYPES]
        ignored = nncf.IgnoredScope(names=names, types=types, validate=False) if names or types else None
        with quiet("nncf"):
            quantized = nncf.quantize(model, nncf.Dataset(self.items), subset_size=len(self.items),
                                      ignored_scope=ignored)
        dst.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(quantized, str(dst))
        return {"tool": f"nncf {nncf.__version__} quantize (default preset)", "method": "nncf",
                "name": plan.name, "kept_fp32": {"nodes": list(plan.keep_nodes), "op_types": types}}


class QDQForOpenVINO:
    """ONNX Runtime's QDQ model of a plan, converted to an OpenVINO IR (OpenVINO runs its
    Quantize/Dequantize pairs as INT8): the same plan, with the same ranges, on both backends."""

    backend = RUNTIME.name

    def __init__(self, source: "OnnxRuntimeQuantizer"):
        self.source = source
        self.method = f"{source.method} QDQ"

    def quantize(self, plan: "Plan", dst: Path) -> dict[str, Any]:
        import openvino as ov

        qdq = dst.with_suffix(".qdq.onnx")
        made = self.source.quantize(plan, qdq)
        ov.save_model(ov.convert_model(str(qdq)), str(dst), compress_to_fp16=False)
        qdq.unlink()
        return {**made, "tool": made["tool"] + ", converted by openvino.convert_model", "method": self.method}


class OpenVINO(ExportBackend):
    runtime = RUNTIME
    marker = "^"

    def stage(self, precisions):
        return f"OpenVINO IR ({', '.join(precisions)})"

    def convert(self, model, feeds, onnx_file, folder, precisions):
        """`compress_to_fp16` stores weights in FP16; OpenVINO keeps the subgraphs it marks
        precision-sensitive (such as the softmax and reductions) in FP32."""
        import openvino as ov

        model = ov.convert_model(str(onnx_file))
        written = {}
        for precision in precisions:
            xml = Path(folder) / RUNTIME.files[precision]
            xml.parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(model, str(xml), compress_to_fp16=(precision == "fp16"))
            written[precision] = xml
        return written, {}

    def quantizer(self, folder, calib, qdq, modules):
        return OpenVINOQuantizer(Path(folder) / RUNTIME.files["fp32"], calib)

    def plans(self, qdq, quantizer):
        # past the full plan, OpenVINO runs ONNX Runtime's QDQ models: NNCF's ignored scope cannot keep
        # every node of a plan in FP32 (it names nodes its own way), a QDQ model can
        return QDQForOpenVINO(qdq)

    def fallback(self, qdq, err):
        return QDQForOpenVINO(qdq), f"NNCF failed ({type(err).__name__}: {err}); ONNX Runtime's QDQ model instead"

    def expose(self, model_file, names, folder):
        import openvino as ov

        model = ov.Core().read_model(str(model_file))
        present = {n for op in model.get_ops() for out in op.outputs() for n in out.get_names()}
        wanted = [n for n in names if n in present]
        model.add_outputs(wanted)
        path = Path(folder) / "exposed.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)
        return path, wanted


BACKEND = OpenVINO()
