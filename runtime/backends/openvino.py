"""OpenVINO: IRs (an .xml graph and its .bin weights) in FP32, FP16 (weights stored in FP16) and INT8,
compiled for the CPU plugin with a pool of infer requests."""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .base import EMULATED, RUNS, SLOW, Backend, BaseRunner, cache_dir, op_table, trim_cache

# What OpenVINO is asked for, by artifact precision. A CPU without native f16
# arithmetic computes an FP16 IR (compressed weights) in bf16 where it has
# AVX512_BF16, else in f32; the compiled model's answer is what gets recorded.
PRECISION_HINT = {"fp32": "f32", "fp16": "f16", "int8": "f32"}


# A model exported with dynamic axes is compiled at the spec's example shape when it loads, a
# static plan: the CPU plugin picks its kernels and plans its memory once, not at every call
# (dsc FP32, batch 1, on a 2-core AMX Xeon: 1.11x the same IR compiled with its dynamic batch).
# Each further shape up to this many in all gets its own; later shapes share one plan compiled
# with the dynamic axes. One: a build checks every artifact at two more batch sizes, and a
# static plan for each of them cost the test suite's builds 10 more CPU minutes.
STATIC_PLANS = 1


class _Plan:
    """One compiled model and its pool of infer requests, one per concurrent caller."""

    def __init__(self, compiled, output_names):
        self.compiled = compiled
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.ports = {name: compiled.output(name) for name in output_names}

    def run(self, feeds):
        try:
            request = self.requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            result = request.infer(feeds, share_inputs=True)
            return {name: np.array(result[port]) for name, port in self.ports.items()}
        finally:
            self.requests.put(request)


class OpenVINORunner(BaseRunner):
    """An OpenVINO model compiled for the CPU plugin: a static plan at the spec's example shape,
    compiled at load (more with `STATIC_PLANS`), and one with the dynamic axes for other shapes."""

    def __init__(self, model: Path, inputs, outputs, precision: str, threads: int | None,
                 mode: str = "latency", profile: bool = False, cache: bool = False,
                 tuned: Mapping[str, Any] | None = None):
        super().__init__(inputs, outputs, BACKEND.name, precision)
        import openvino as ov

        tuned = dict(tuned or {})
        self._core = ov.Core()
        hint = mode.upper()
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": PRECISION_HINT[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if "streams" in tuned:
            config["NUM_STREAMS"] = tuned["streams"]
        if "pinning" in tuned:  # threads held to their cores, or left to the OS scheduler
            config["ENABLE_CPU_PINNING"] = tuned["pinning"]
        if profile:
            config["PERF_COUNT"] = True
        if cache:
            config["CACHE_DIR"] = str(cache_dir() / "openvino")
        self._config = config
        self._model = self._core.read_model(str(model))
        self._dynamic = any(i.get_partial_shape().is_dynamic for i in self._model.inputs)
        self._plans: dict[tuple, _Plan] = {}  # by input shapes
        self._shared: _Plan | None = None
        self._lock = threading.Lock()
        self.compiled = self._plan({i.name: i.example for i in inputs}).compiled
        self.callers = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.settings = {
            "mode": mode,
            "threads": threads or "default",
            "performance_hint": hint,
            "precision_hint_requested": config["INFERENCE_PRECISION_HINT"],
            "precision_hint": self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "streams": int(self.compiled.get_property("NUM_STREAMS")),
            "pinning": bool(self.compiled.get_property("ENABLE_CPU_PINNING")),
            "cache_dir": config.get("CACHE_DIR"),
            "openvino": ov.get_version(),
        }
        if self._dynamic:
            self.settings["plans"] = f"static at the first {STATIC_PLANS} input shape(s) called; then one with the dynamic axes"
        if mode == "throughput":
            self.settings["async_requests"] = self.callers

    def _plan(self, shapes: Mapping[str, tuple[int, ...]]) -> _Plan:
        """The plan for these input shapes, compiled on first use."""
        key = tuple(tuple(shapes[name]) for name in self.input_names)
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key)
                if plan is None:
                    plan = self._plans[key] = self._compile(shapes)
        return plan

    def _compile(self, shapes: Mapping[str, tuple[int, ...]]) -> _Plan:
        """The model compiled at these shapes, while fewer than STATIC_PLANS are; after that, the model
        as exported (its dynamic axes kept), one plan shared by every later shape. A model without
        dynamic axes has one plan, its own."""
        if self._dynamic and list(self.plans.values()).count("static") < STATIC_PLANS:
            model = self._model.clone()
            model.reshape({port: list(shapes[port.get_any_name()]) for port in model.inputs})
            return _Plan(self._compiled(model), self.output_names)
        if self._shared is None:
            self._shared = _Plan(self._compiled(self._model), self.output_names)
        return self._shared

    def _compiled(self, model):
        compiled = self._core.compile_model(model, "CPU", self._config)
        if "CACHE_DIR" in self._config:  # OpenVINO wrote its blob there, or read it
            trim_cache(Path(self._config["CACHE_DIR"]))
        return compiled

    @property
    def plans(self) -> dict[str, str]:
        """The input shapes called so far and the plan each runs on: "static" (compiled at that shape,
        or a model without dynamic axes) or "dynamic" (the shared plan that keeps them)."""
        return {" ".join("x".join(map(str, shape)) for shape in key):
                "dynamic" if self._dynamic and plan is self._shared else "static" for key, plan in self._plans.items()}

    def _plan_for(self, feeds) -> _Plan:
        return self._plan({name: feeds[name].shape for name in self.input_names})

    def _run(self, feeds):
        return self._plan_for(feeds).run(feeds)

    def run_for(self, feeds, seconds):
        """OpenVINO's own way to throughput: an AsyncInferQueue of the optimal number of requests."""
        import openvino as ov

        feeds = self.check(feeds)
        jobs = ov.AsyncInferQueue(self._plan_for(feeds).compiled, self.callers)
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            jobs.start_async(feeds, share_inputs=True)
            count += 1
        jobs.wait_all()
        return count, time.perf_counter() - start

    def profile(self, feeds, runs):
        """Real time per executed layer type, from OpenVINO's performance counters (load with profile=True)."""
        per_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for p in self._counters(feeds, runs):
            per_op[p.node_type][0] += p.real_time.total_seconds() * 1e3
            per_op[p.node_type][1] += 1
        return op_table({op: (ms, n) for op, (ms, n) in per_op.items()}, runs)

    def node_times(self, feeds, runs):
        """Real time per executed layer (load with profile=True), named after the ONNX node it
        came from (a fused layer after its first node; layout reorders by their own names)."""
        times: dict[str, float] = defaultdict(float)
        for p in self._counters(feeds, runs):
            times[p.node_name.removesuffix("/WithoutBiases")] += p.real_time.total_seconds() * 1e3 / runs
        return dict(times)

    def _counters(self, feeds, runs) -> list:
        feeds = self.check(feeds)
        request = self._plan_for(feeds).compiled.create_infer_request()
        request.infer(feeds, share_inputs=True)  # the first inference is slow: left out
        counters = []
        for _ in range(runs):
            request.infer(feeds, share_inputs=True)
            counters += [p for p in request.profiling_info if p.status == p.Status.EXECUTED]
        if not counters:
            raise ValueError("this runner was loaded without profile=True")
        return counters

    def close(self):
        self.compiled = self._shared = None
        self._plans.clear()


class OpenVINO(Backend):
    name, title = "openvino", "OpenVINO"
    rank = 1
    distribution = module = "openvino"
    files = {"fp32": "openvino/model.xml", "fp16": "openvino/model.fp16.xml", "int8": "openvino/model.int8.xml"}
    bounds = {"fp32": 1e-3, "fp16": 1e-2, "int8": 1.0}
    runner = OpenVINORunner
    profiler = "OpenVINO performance counters"

    def parts(self, file):
        return (file, file.removesuffix(".xml") + ".bin")  # the graph, and its weights beside it

    def candidates(self, memory=False):
        # No memory candidates. Its documented lever, ENABLE_MMAP, moved no peak here (unet FP32 296.0 MB either
        # way: the CPU plugin repacks the weights it maps), and the CPU plugin of 2026.4 refuses
        # COMPILATION_NUM_THREADS; one stream, the latency default, is already its smallest.
        default = {"streams": 1, "pinning": True}
        return [default, {**default, "pinning": False}]

    def throughput(self, parallel):
        return f"{parallel} async requests, THROUGHPUT hint"

    def status(self, precision, flags, arm, flags_known):
        if precision == "int8" and arm:
            return EMULATED, "OpenVINO on ARM executes INT8 models in floating point (simulation mode)"
        return super().status(precision, flags, arm, flags_known)

    def fp16_status(self, flags, arm):
        if arm:
            return ((RUNS, "FP16 arithmetic (NEON FP16), accumulation included: verify tells whether it stays "
                           "within the bound proven on the build machine") if "asimdhp" in flags
                    else (SLOW, "no FP16 arithmetic here: computed in FP32"))
        if "avx512_fp16" in flags or "amx_fp16" in flags:
            return RUNS, "FP16 arithmetic"
        return ((RUNS, "computed in BF16 (AVX-512 BF16), weights stored in FP16") if "avx512_bf16" in flags
                else (SLOW, "no FP16 or BF16 arithmetic here: computed in FP32, weights stored in FP16"))


BACKEND = OpenVINO()
