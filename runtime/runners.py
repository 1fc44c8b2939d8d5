"""One Runner protocol, one implementation per backend.

Each backend is imported inside its runner, so a device needs only the
backends it uses. Inputs are checked against the manifest before they reach a
backend: a wrong name, dtype, rank, shape or a non-finite value is a
`ValueError` that names the input, what was expected and what came.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from .bundle import BACKENDS, PRECISIONS, Bundle
from .errors import BackendError, UserError, backend_reason, check_choice
from .files import atomic_file
from .spec import TensorSpec

# What OpenVINO is asked for, by artifact precision. A CPU without native f16
# arithmetic computes an FP16 IR (compressed weights) in bf16 where it has
# AVX512_BF16, else in f32; the compiled model's answer is what gets recorded.
OV_PRECISION_HINT = {"fp32": "f32", "fp16": "f16", "int8": "f32"}
MODES = ("latency", "throughput")
# ONNX Runtime's settings where a bundle has none tuned (`runtime.tune` measures others)
ORT_DEFAULTS = {"spinning": True, "graph_optimization": "all", "execution_mode": "sequential", "arena": True,
                "mem_pattern": True}
ORT_GRAPH_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC"}


@runtime_checkable
class Runner(Protocol):
    backend: str
    precision: str
    input_names: list[str]
    output_names: list[str]
    settings: dict[str, Any]

    def infer(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def run_for(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[int, float]: ...
    def profile(self, feeds: Mapping[str, np.ndarray], runs: int) -> list[dict[str, Any]]: ...
    def node_times(self, feeds: Mapping[str, np.ndarray], runs: int) -> dict[str, float]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Runner": ...
    def __exit__(self, *exc: object) -> None: ...


class BaseRunner:
    """What every runner shares (the PyTorch ones of the build side too): inputs checked against
    the model contract before `_run` sees them, `run_for` from repeated calls, `close`."""

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: list[dict], backend: str, precision: str):
        self.inputs = inputs
        self.input_names = [i.name for i in inputs]
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
            spec.check(feeds[spec.name])
        return dict(feeds)

    def infer(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(self.check(feeds))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    callers = 1  # concurrent callers in throughput mode

    def run_for(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[int, float]:
        """Keep `self.callers` threads calling the model for `seconds`;
        returns (completed calls, elapsed seconds)."""
        feeds = self.check(feeds)
        counts = [0] * self.callers
        start = time.perf_counter()
        deadline = start + seconds

        def caller(i: int) -> None:
            while time.perf_counter() < deadline:
                self._run(feeds)
                counts[i] += 1

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(self.callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts), time.perf_counter() - start

    def profile(self, feeds: Mapping[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
        raise ValueError(f"the {self.backend} runner has no per-op profile")

    def node_times(self, feeds: Mapping[str, np.ndarray], runs: int) -> dict[str, float]:
        """Kernel time per executed node (ms per inference), named as the backend's profiler names it."""
        raise ValueError(f"the {self.backend} runner has no per-node profile")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OnnxRuntimeRunner(BaseRunner):
    """An `InferenceSession` on the CPU; sessions are safe to call from several threads."""

    def __init__(self, model: Path, inputs, outputs, precision: str, threads: int | None,
                 mode: str = "latency", profile: bool = False, cache: bool = False,
                 tuned: Mapping[str, Any] | None = None):
        super().__init__(inputs, outputs, "onnxruntime", precision)
        import onnxruntime as ort

        tuned = {**ORT_DEFAULTS, **(tuned or {})}
        options = ort.SessionOptions()
        level = ORT_GRAPH_LEVELS[tuned["graph_optimization"]]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.log_severity_level = 3
        options.inter_op_num_threads = 1
        if tuned["execution_mode"] == "parallel":  # independent branches at once, on a pool of their own
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
            options.inter_op_num_threads = threads or os.cpu_count() or 1
        # worker threads spin between ops: 1.4x lower latency than sleeping on 2 cores (dsc 8.5 vs 12.3 ms)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if tuned["spinning"] else "0")
        # memory: the CPU arena keeps freed blocks for reuse; the memory pattern plans one block per run
        options.enable_cpu_mem_arena, options.enable_mem_pattern = tuned["arena"], tuned["mem_pattern"]
        if mode == "throughput":
            # parallel callers, one core each, instead of one caller on every core
            self.callers = threads or os.cpu_count() or 1
            options.intra_op_num_threads = 1
        elif threads:
            options.intra_op_num_threads = threads
        self._profile_dir = None
        if profile:
            self._profile_dir = tempfile.TemporaryDirectory(prefix="edge-export-profile-")
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(self._profile_dir.name) / "ort")
        # The graph ONNX Runtime optimizes at load (fusions, layouts for this CPU) is
        # kept in the cache and loaded without optimizing again: large models start
        # up to 2x sooner.
        source, cached = model, _optimized_graph(model, f"{ort.__version__}|{level}") if cache else None
        writes = cached is not None and not cached.is_file()
        if cached is not None and not writes:
            source = cached
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        elif writes:
            cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cached) if writes else contextlib.nullcontext() as partial:  # published whole
            if partial is not None:
                options.optimized_model_filepath = str(partial)
            self.session = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        self.settings = {"mode": mode, "threads": threads or "default",
                         "graph_optimization": tuned["graph_optimization"], "execution_mode": tuned["execution_mode"],
                         "provider": "CPUExecutionProvider", "spinning": tuned["spinning"],
                         "arena": tuned["arena"], "mem_pattern": tuned["mem_pattern"],
                         "onnxruntime": ort.__version__,
                         "optimized_model_cache": str(cached) if cache else None}
        if mode == "throughput":
            self.settings.update(threads=1, parallel_callers=self.callers)

    def _run(self, feeds):
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def profile(self, feeds, runs):
        """Kernel time per op type, from ONNX Runtime's profiler (load with profile=True)."""
        kernels, inferences = self._kernels(feeds, runs)
        per_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for e in kernels:
            per_op[e["args"]["op_name"]][0] += e["dur"] / 1e3
            per_op[e["args"]["op_name"]][1] += 1
        return op_table({op: (ms, n) for op, (ms, n) in per_op.items()}, inferences)

    def node_times(self, feeds, runs):
        """Kernel time per node (load with profile=True). A node the optimizer rewrote is named
        after its output with a suffix (`conv2d_3_nchwc` for the node writing `conv2d_3`)."""
        kernels, inferences = self._kernels(feeds, runs)
        times: dict[str, float] = defaultdict(float)
        for e in kernels:
            times[e["name"].removesuffix("_kernel_time")] += e["dur"] / 1e3 / inferences
        return dict(times)

    def _kernels(self, feeds, runs) -> tuple[list[dict], int]:
        """The profiler's kernel events of `runs` inferences (the first, slow one left out);
        the profiler stops here, so a session is profiled once."""
        if self._profile_dir is None:
            raise ValueError("this runner was loaded without profile=True")
        feeds = self.check(feeds)
        for _ in range(runs + 1):
            self._run(feeds)
        events = json.loads(Path(self.session.end_profiling()).read_text())
        model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                            if e.get("cat") == "Session" and e["name"] == "model_run")
        after = model_runs[0][1] if len(model_runs) > 1 else 0
        inferences = max(1, len(model_runs) - (len(model_runs) > 1))
        return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                and e["ts"] >= after], inferences

    def close(self):
        self.session = None
        if self._profile_dir is not None:
            self._profile_dir.cleanup()


class OpenVINORunner(BaseRunner):
    """A compiled OpenVINO model with a pool of infer requests, one per concurrent caller."""

    def __init__(self, model: Path, inputs, outputs, precision: str, threads: int | None,
                 mode: str = "latency", profile: bool = False, cache: bool = False,
                 tuned: Mapping[str, Any] | None = None):
        super().__init__(inputs, outputs, "openvino", precision)
        import openvino as ov

        tuned = dict(tuned or {})
        core = ov.Core()
        hint = mode.upper()
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": OV_PRECISION_HINT[precision]}
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
        self.compiled = core.compile_model(str(model), "CPU", config)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._ports = {name: self.compiled.output(name) for name in self.output_names}
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
        if mode == "throughput":
            self.settings["async_requests"] = self.callers

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

    def run_for(self, feeds, seconds):
        """OpenVINO's own way to throughput: an AsyncInferQueue of the optimal number of requests."""
        import openvino as ov

        feeds = self.check(feeds)
        jobs = ov.AsyncInferQueue(self.compiled, self.callers)
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
        request = self.compiled.create_infer_request()
        request.infer(feeds, share_inputs=True)  # the first inference is slow: left out
        counters = []
        for _ in range(runs):
            request.infer(feeds, share_inputs=True)
            counters += [p for p in request.profiling_info if p.status == p.Status.EXECUTED]
        if not counters:
            raise ValueError("this runner was loaded without profile=True")
        return counters

    def close(self):
        self.compiled = None
        self._requests = queue.SimpleQueue()


def op_table(per_op: Mapping[str, tuple[float, int]], runs: int) -> list[dict[str, Any]]:
    """Rows of (op type, ms per inference, share of the total, kernels per inference), slowest first."""
    total = sum(ms for ms, _ in per_op.values()) or 1.0
    rows = [{"op_type": op, "ms": ms / runs, "share": ms / total, "count": n // runs}
            for op, (ms, n) in per_op.items()]
    return sorted(rows, key=lambda r: -r["ms"])


RUNNERS = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVINORunner}


def cache_dir() -> Path:
    """Where compiled models are cached: $EDGE_EXPORT_CACHE, else ~/.cache/edge-export."""
    return Path(os.environ.get("EDGE_EXPORT_CACHE") or Path.home() / ".cache" / "edge-export")


def _optimized_graph(model: Path, version: str) -> Path:
    """Where ONNX Runtime's optimized graph of `model` is cached, keyed by the
    model file (path, size, modification time) and the ONNX Runtime version."""
    import hashlib

    model = model.resolve()
    stat = model.stat()
    key = hashlib.sha256(f"{model}|{stat.st_size}|{stat.st_mtime_ns}|{version}".encode()).hexdigest()
    return cache_dir() / "onnxruntime" / f"{key[:24]}.onnx"


def choose(bundle: Bundle, backend: str | None, precision: str | None) -> tuple[str, str]:
    """The artifact to run where the caller leaves it open: the one `runtime bench
    --choose` measured fastest on this kind of CPU, else the build's recommendation
    (its fastest shipped artifact on the build machine); FP32 on a backend the caller names."""
    from .machine import cpu_signature

    recommended = (bundle.device_choice(cpu_signature()) if backend is None and precision is None else None) \
        or bundle.manifest.get("recommended") or {"backend": "onnxruntime", "precision": "fp32"}
    if backend is None:
        backend = recommended["backend"] if recommended["backend"] in installed_backends() else installed_backends()[0]
    if precision is None:
        precision = recommended["precision"] if backend == recommended["backend"] else "fp32"
    return backend, precision


def load(bundle: str | Path | Bundle, backend: str | None = None, precision: str | None = None,
         threads: int | None = None, mode: str = "latency", profile: bool = False, cache: bool = True,
         settings: Mapping[str, Any] | None = None) -> Runner:
    """Load one artifact of a bundle: by default the one `runtime bench --choose`
    measured fastest on this kind of CPU, else the one the build measured fastest
    (its manifest's `recommended`). `threads=None` lets the backend
    choose. `mode="throughput"` sets the backend up for many concurrent calls
    (OpenVINO's THROUGHPUT hint; ONNX Runtime one core per caller);
    `profile=True` turns the backend's profiler on for `runner.profile()`;
    `cache=True` keeps OpenVINO's compiled model and ONNX Runtime's optimized
    graph in `cache_dir()`, so the next load on this device skips that work.
    The backend settings are `settings` where given (a candidate being measured), else those
    measured on this kind of CPU (`Bundle.settings_here`; `runner.settings["tuned_on"]` says
    whose), else the backends' defaults."""
    from .machine import cpu_signature

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    backend, precision = choose(bundle, backend, precision)
    check_choice("backend", backend, BACKENDS)
    check_choice("precision", precision, PRECISIONS)
    check_choice("mode", mode, MODES)
    if threads is not None and threads < 1:
        raise UserError(f"threads {threads} is not a positive number; pass None to let the backend choose")
    entry = bundle.artifact(backend, precision)
    tuned, source = ((dict(settings), "caller") if settings is not None else
                     bundle.settings_here(entry, cpu_signature()) if mode == "latency" else ({}, "defaults"))
    try:
        runner = RUNNERS[backend](bundle.path / entry.file, bundle.spec.inputs, bundle.manifest["outputs"], precision,
                                  threads, mode, profile, cache, tuned=tuned)
        runner.settings["tuned_on"] = source
        return runner
    except ImportError:
        raise UserError(f"backend {backend!r} is not installed here; pip install {backend}") from None
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 (each backend raises its own types)
        raise BackendError(f"{backend} cannot load {entry.file} ({precision}) here: {backend_reason(err)}") from err


def installed_backends() -> list[str]:
    import importlib.util

    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
