"""LiteRT (TensorFlow Lite): `.tflite` models in FP32, FP16 (weights stored in FP16) and INT8, run by
its interpreter with the XNNPACK delegate, its CPU engine on ARM and x86.

A converter may fix a model's input shape where it cannot keep the spec's dynamic axes: the runner
reads that from the model itself, runs a larger batch one image at a time, and refuses another size
in one line (`fixed_shape`), so parity is taken at the size the model takes.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .base import SLOW, Backend, BaseRunner
from ..machine import usable_cores

DEFAULTS = {"xnnpack": True}  # XNNPACK, LiteRT's default CPU delegate; off: the builtin reference kernels


class LiteRTRunner(BaseRunner):
    """A pool of LiteRT interpreters, one per concurrent caller (an interpreter is not thread-safe)."""

    def __init__(self, model: Path, inputs, outputs, precision: str, threads: int | None,
                 mode: str = "latency", profile: bool = False, cache: bool = False,
                 tuned: Mapping[str, Any] | None = None):
        super().__init__(inputs, outputs, BACKEND.name, precision)
        from ai_edge_litert import __version__ as version
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        tuned = {**DEFAULTS, **(tuned or {})}
        resolver = OpResolverType.AUTO if tuned["xnnpack"] else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.callers = (threads or usable_cores()) if mode == "throughput" else 1
        per_caller = 1 if mode == "throughput" else threads or usable_cores()
        self._make = lambda: Interpreter(model_path=str(model), num_threads=per_caller,
                                         experimental_op_resolver_type=resolver)
        first = self._make()
        signature = first.get_signature_list()
        key = next(iter(signature))
        self._key = key
        runner = first.get_signature_runner(key)
        self._pool: queue.SimpleQueue = queue.SimpleQueue()  # (interpreter, its signature runner), one per caller
        self._pool.put((first, runner))
        # the signature names inputs and outputs args_0, args_1 ... and output_0, output_1 ... in the spec's order
        self._inputs = sorted(signature[key]["inputs"], key=_position)
        self._outputs = sorted(signature[key]["outputs"], key=_position)
        details, out_details = runner.get_input_details(), runner.get_output_details()
        # an INT8 model may take and give quantized tensors: the runner (de)quantizes them, as an app would
        self._in_q = [_quantization(details[name]) for name in self._inputs]
        self._out_q = [_quantization(out_details[name]) for name in self._outputs]
        signatures = [tuple(int(d) for d in details[name]["shape_signature"]) for name in self._inputs]
        # fixed: a side the spec leaves dynamic that the model holds to one size
        self.fixed_shape = ({i.name: list(s) for i, s in zip(inputs, signatures)}
                            if any(s[axis] != -1 for i, s in zip(inputs, signatures) for axis in i.dynamic_axes
                                   if axis > 0) else None)
        self._batch_fixed = all(s and s[0] == 1 for s in signatures)
        self.settings = {"mode": mode, "threads": per_caller, "delegate": "XNNPACK" if tuned["xnnpack"] else "none",
                         "xnnpack": tuned["xnnpack"], "litert": version,
                         **({"parallel_callers": self.callers} if mode == "throughput" else {}),
                         **({"fixed_shape": self.fixed_shape} if self.fixed_shape else {}),
                         **({"batch_fixed_at_1": True} if self._batch_fixed else {})}

    def check(self, feeds):
        feeds = super().check(feeds)
        if self.fixed_shape:
            for name, shape in self.fixed_shape.items():
                if list(feeds[name].shape[1:]) != shape[1:]:
                    raise ValueError(f"input {name!r}: this .tflite takes {'x'.join(map(str, shape[1:]))} only "
                                     f"(its converter fixed the shape), not {'x'.join(map(str, feeds[name].shape[1:]))}")
        return feeds

    def _run(self, feeds):
        try:
            pair = self._pool.get_nowait()
        except queue.Empty:
            made = self._make()
            pair = made, made.get_signature_runner(self._key)
        run = pair[1]
        try:
            batch = len(next(iter(feeds.values())))
            if self._batch_fixed and batch > 1:  # a model fixed at batch 1 runs a batch one image at a time
                parts = [self._call(run, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(batch)]
                return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}
            return self._call(run, feeds)
        finally:
            self._pool.put(pair)

    def _call(self, run, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = run(**{arg: _quantize(feeds[name], q) for arg, name, q in zip(self._inputs, self.input_names, self._in_q)})
        return {name: _dequantize(done[out], q) for name, out, q in zip(self.output_names, self._outputs, self._out_q)}

    def close(self):
        self._pool = queue.SimpleQueue()


def _position(name: str) -> int:
    return int(name.rsplit("_", 1)[-1])


def _quantization(detail: Mapping[str, Any]) -> tuple[float, int, Any] | None:
    """(scale, zero point, integer type) of a quantized input or output; None for a float one."""
    scale, zero = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero), detail["dtype"]) if np.issubdtype(detail["dtype"], np.integer) and scale else None


def _quantize(x: np.ndarray, q) -> np.ndarray:
    if q is None:
        return np.ascontiguousarray(x)
    scale, zero, kind = q
    limits = np.iinfo(kind)
    return np.clip(np.round(x / scale) + zero, limits.min, limits.max).astype(kind)


def _dequantize(y: np.ndarray, q) -> np.ndarray:
    return np.array(y) if q is None else ((y.astype(np.float32) - q[1]) * q[0]).astype(np.float32)


class LiteRT(Backend):
    name, title = "litert", "LiteRT"
    rank = 2
    default = False  # built when asked for (--backends): see the README
    distribution, module = "ai-edge-litert", "ai_edge_litert"
    files = {"fp32": "litert/model.tflite", "fp16": "litert/model.fp16.tflite", "int8": "litert/model.int8.tflite"}
    bounds = {"fp32": 1e-3, "fp16": 1e-2, "int8": 1.0}
    runner = LiteRTRunner
    profiler = "none: LiteRT's Python interpreter has no per-op profiler"

    def candidates(self, memory=False):
        return [dict(DEFAULTS), {**DEFAULTS, "xnnpack": False}]

    def fp16_status(self, flags, arm):
        return SLOW, ("weights stored in FP16, computed in FP32 where the CPU has no FP16 arithmetic (XNNPACK "
                      "expands them at load): a smaller file; bench --choose measures whether it is faster here")


BACKEND = LiteRT()
