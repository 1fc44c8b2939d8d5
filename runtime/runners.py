"""One Runner protocol, one implementation per backend.

Each backend is imported inside its runner, so a device needs only the
backends it uses. Inputs are checked against the manifest before they reach a
backend: a wrong name, dtype, rank, shape or a non-finite value is a
`ValueError` that names the input, what was expected and what came.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from .bundle import BACKENDS, PRECISIONS, Bundle, check_choice
from .errors import UserError

# What OpenVINO is asked for, by artifact precision. This CPU family has no
# native f16 arithmetic, so FP16 IRs (compressed weights) also compute in f32
# unless a device offers f16; the compiled model's answer is what gets recorded.
OV_PRECISION_HINT = {"fp32": "f32", "fp16": "f16", "int8": "f32"}


class Runner(Protocol):
    backend: str
    precision: str
    input_names: list[str]
    output_names: list[str]
    settings: dict[str, Any]

    def infer(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def close(self) -> None: ...


class _Base:
    def __init__(self, inputs: list[dict], outputs: list[dict], backend: str, precision: str):
        self.inputs = inputs
        self.input_names = [i["name"] for i in inputs]
        self.output_names = [o["name"] for o in outputs]
        self.backend, self.precision = backend, precision
        self.settings: dict[str, Any] = {}

    def check(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            if len(self.inputs) != 1:
                raise ValueError(f"this model takes {len(self.inputs)} inputs ({', '.join(self.input_names)}); "
                                 "pass a dict of named arrays")
            feeds = {self.input_names[0]: feeds}
        unknown = [k for k in feeds if k not in self.input_names]
        missing = [k for k in self.input_names if k not in feeds]
        if unknown or missing:
            raise ValueError(f"inputs expected: {', '.join(self.input_names)}; "
                             f"missing: {', '.join(missing) or 'none'}; unknown: {', '.join(map(str, unknown)) or 'none'}")
        for spec in self.inputs:
            name, value = spec["name"], feeds[spec["name"]]
            expected = "(" + ", ".join(str(d) for d in spec["shape"]) + ")"
            if not isinstance(value, np.ndarray):
                raise ValueError(f"input {name!r}: expected a numpy array of {spec['dtype']} {expected}, "
                                 f"got {type(value).__name__}")
            if value.dtype != np.dtype(spec["dtype"]):
                raise ValueError(f"input {name!r}: expected dtype {spec['dtype']}, got {value.dtype}")
            if value.ndim != len(spec["shape"]):
                raise ValueError(f"input {name!r}: expected rank {len(spec['shape'])} {expected}, "
                                 f"got rank {value.ndim} {tuple(value.shape)}")
            for want, got in zip(spec["shape"], value.shape):
                if (isinstance(want, int) and want != got) or got < 1:
                    raise ValueError(f"input {name!r}: expected shape {expected}, got {tuple(value.shape)}")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ValueError(f"input {name!r}: holds NaN or infinite values; expected finite numbers")
        return dict(feeds)

    def infer(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(self.check(feeds))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OnnxRuntimeRunner(_Base):
    """An `InferenceSession` on the CPU; sessions are safe to call from several threads."""

    def __init__(self, model: Path, inputs, outputs, precision: str, threads: int | None):
        super().__init__(inputs, outputs, "onnxruntime", precision)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.settings = {"threads": threads or "default", "graph_optimization": "all",
                         "provider": "CPUExecutionProvider", "onnxruntime": ort.__version__}

    def _run(self, feeds):
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def close(self):
        self.session = None


class OpenVINORunner(_Base):
    """A compiled OpenVINO model with a pool of infer requests, one per concurrent caller."""

    def __init__(self, model: Path, inputs, outputs, precision: str, threads: int | None):
        super().__init__(inputs, outputs, "openvino", precision)
        import openvino as ov

        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OV_PRECISION_HINT[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(str(model), "CPU", config)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._ports = {name: self.compiled.output(name) for name in self.output_names}
        self.settings = {
            "threads": threads or "default",
            "performance_hint": "LATENCY",
            "precision_hint_requested": config["INFERENCE_PRECISION_HINT"],
            "precision_hint": self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "streams": int(self.compiled.get_property("NUM_STREAMS")),
            "openvino": ov.get_version(),
        }

    def _run(self, feeds):
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            result = request.infer(feeds, share_inputs=True)
            return {name: np.array(result[port]) for name, port in self._ports.items()}
        finally:
            self._requests.put(request)

    def close(self):
        self.compiled = None
        self._requests = queue.SimpleQueue()


RUNNERS = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVINORunner}


def load(bundle: str | Path | Bundle, backend: str = "onnxruntime", precision: str = "fp32",
         threads: int | None = None) -> Runner:
    """Load one artifact of a bundle. `threads=None` lets the backend choose."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    check_choice("backend", backend, BACKENDS)
    check_choice("precision", precision, PRECISIONS)
    entry = bundle.artifact(backend, precision)
    try:
        runner_cls = RUNNERS[backend]
        return runner_cls(bundle.path / entry["file"], bundle.manifest["inputs"],
                          bundle.manifest["outputs"], precision, threads)
    except ImportError:
        raise UserError(f"backend {backend!r} is not installed here; pip install {backend}") from None


def installed_backends() -> list[str]:
    import importlib.util

    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
