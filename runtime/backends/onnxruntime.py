"""ONNX Runtime: the exported ONNX graph (FP32) and its QDQ INT8 model, on the CPU execution provider."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

from ..files import atomic_file
from ..machine import usable_cores
from .base import Backend, BaseRunner, cache_dir, op_table, trim_cache

# ONNX Runtime's settings where a bundle has none tuned (`runtime.tune` measures others)
DEFAULTS = {"spinning": True, "graph_optimization": "all", "execution_mode": "sequential", "arena": True,
            "mem_pattern": True}
GRAPH_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC"}


class OnnxRuntimeRunner(BaseRunner):
    """An `InferenceSession` on the CPU; sessions are safe to call from several threads."""

    def __init__(self, model: Path, inputs, outputs, precision: str, threads: int | None,
                 mode: str = "latency", profile: bool = False, cache: bool = False,
                 tuned: Mapping[str, Any] | None = None):
        super().__init__(inputs, outputs, BACKEND.name, precision)
        import onnxruntime as ort

        tuned = {**DEFAULTS, **(tuned or {})}
        options = ort.SessionOptions()
        level = GRAPH_LEVELS[tuned["graph_optimization"]]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.log_severity_level = 3
        options.inter_op_num_threads = 1
        usable = usable_cores()  # read once: the CPUs this process may use
        if tuned["execution_mode"] == "parallel":  # independent branches at once, on a pool of their own
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
            options.inter_op_num_threads = threads or usable
        # worker threads spin between ops: 1.4x lower latency than sleeping on 2 cores (dsc 8.5 vs 12.3 ms)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if tuned["spinning"] else "0")
        # memory: the CPU arena keeps freed blocks for reuse; the memory pattern plans one block per run
        options.enable_cpu_mem_arena, options.enable_mem_pattern = tuned["arena"], tuned["mem_pattern"]
        if mode == "throughput":
            # parallel callers, one core each, instead of one caller on every core
            self.callers = threads or usable
            options.intra_op_num_threads = 1
        elif threads or usable < (os.cpu_count() or 1):
            # its own default counts the machine's cores, even in a process held to fewer (taskset, a cpuset)
            threads = options.intra_op_num_threads = threads or usable
        self._profile_dir = None
        if profile:
            self._profile_dir = tempfile.TemporaryDirectory(prefix="edge-export-profile-")
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(self._profile_dir.name) / "ort")
        # The graph ONNX Runtime optimizes at load (fusions, layouts for this CPU) is
        # kept in the cache and loaded without optimizing again: large models start
        # up to 2x sooner.
        cached = _optimized_graph(model, f"{ort.__version__}|{level}") if cache else None
        self.session = None
        if cached is not None and cached.is_file():
            optimizing, options.graph_optimization_level = (options.graph_optimization_level,
                                                            ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
            try:
                self.session = ort.InferenceSession(str(cached), options, providers=["CPUExecutionProvider"])
            except Exception:  # noqa: BLE001 (trimmed by another process meanwhile, or unreadable: made anew)
                options.graph_optimization_level = optimizing
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(cached)  # used now: the last to go when the cache is trimmed
        if self.session is None:
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(cached) if cached is not None else contextlib.nullcontext() as partial:  # published whole
                if partial is not None:
                    options.optimized_model_filepath = str(partial)
                self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            if cached is not None:
                trim_cache(cached.parent)
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


def _optimized_graph(model: Path, version: str) -> Path:
    """Where ONNX Runtime's optimized graph of `model` is cached, keyed by the
    model file (path, size, modification time) and the ONNX Runtime version."""
    import hashlib

    model = model.resolve()
    stat = model.stat()
    key = hashlib.sha256(f"{model}|{stat.st_size}|{stat.st_mtime_ns}|{version}".encode()).hexdigest()
    return cache_dir() / "onnxruntime" / f"{key[:24]}.onnx"


class OnnxRuntime(Backend):
    name, title = "onnxruntime", "ONNX Runtime"
    rank = 0
    distribution = module = "onnxruntime"
    files = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    # INT8 is judged by the task (runtime.compare); its tensor bound only catches a broken model
    bounds = {"fp32": 1e-4, "int8": 1.0}
    runner = OnnxRuntimeRunner
    profiler = "ONNX Runtime profiler"

    def candidates(self, memory=False):
        changes: list[dict[str, Any]] = [{"spinning": False}, {"graph_optimization": "extended"},
                                         {"execution_mode": "parallel"}]
        if memory:  # under a memory budget: the arena and the memory pattern off, alone and together
            changes += [{"mem_pattern": False}, {"arena": False}, {"arena": False, "mem_pattern": False}]
        return [dict(DEFAULTS), *({**DEFAULTS, **c} for c in changes)]


BACKEND = OnnxRuntime()
