"""Stage: onnxsim simplification, then a numeric check of simplified vs
unsimplified on real inputs (onnxsim's own check uses random data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxsim

from runtime.compare import compare
from runtime.backends.onnxruntime import OnnxRuntimeRunner
from runtime.spec import ModelSpec

# Simplification folds constants and fuses nothing numeric: the two graphs
# must agree to float32 rounding.
SIMPLIFY_BOUND = 1e-5


def simplify(src: Path, dst: Path, spec: ModelSpec, feeds: dict[str, np.ndarray]) -> dict:
    model = onnx.load(str(src))
    simplified, ok = onnxsim.simplify(model, check_n=0)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model")
    onnx.save(simplified, str(dst))
    outputs = {}
    for name, path in (("original", src), ("simplified", dst)):
        with OnnxRuntimeRunner(path, spec.inputs, [{"name": n} for n in spec.outputs], "fp32", threads=None) as runner:
            outputs[name] = runner.infer(feeds)
    parity = compare(outputs["original"], outputs["simplified"], SIMPLIFY_BOUND)
    return {"tool": f"onnxsim {onnxsim.__version__}", "nodes_before": len(model.graph.node),
            "nodes_after": len(simplified.graph.node), "check": parity.to_dict()}
