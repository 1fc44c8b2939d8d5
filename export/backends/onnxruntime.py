"""ONNX Runtime, build side: the final ONNX graph is its FP32 artifact, ONNX Runtime's QDQ model its INT8."""

from __future__ import annotations

from pathlib import Path

from runtime.backends.onnxruntime import BACKEND as RUNTIME

from .base import ExportBackend


class OnnxRuntime(ExportBackend):
    runtime = RUNTIME
    marker = "s"

    def stage(self, precisions):
        return None

    def convert(self, model, feeds, onnx_file, folder, precisions):
        return {"fp32": onnx_file}, {}

    def expose(self, model_file, names, folder):
        import onnx

        inferred = onnx.shape_inference.infer_shapes(onnx.load(str(model_file)))
        known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
        have = {o.name for o in inferred.graph.output}
        inferred.graph.output.extend(known[n] for n in names if n in known and n not in have)
        path = Path(folder) / "exposed.onnx"
        onnx.save(inferred, str(path))
        return path, [o.name for o in inferred.graph.output if o.name in names]


BACKEND = OnnxRuntime()
