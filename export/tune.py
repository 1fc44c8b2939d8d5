"""Stage: each artifact's backend settings, chosen by measurement on the build machine.

A few candidate settings per backend (ONNX Runtime: spinning, graph
optimisation level, execution mode; OpenVINO: streams, CPU pinning; its f32
precision hint stays as the artifact's precision asks and is recorded), all on
the build's thread count,
loaded side by side and timed interleaved within a small budget. The fastest
is kept only where it beats the backend's defaults by more than `MARGIN`, so
noise never changes a setting. The choice goes into the artifact's manifest
entry (`settings`), which `runtime.load` uses by default; a device can still
choose its own artifact (`runtime bench --choose`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from runtime import runners as rt
from runtime.bench import bench_interleaved
from runtime.bundle import Artifact
from runtime.spec import ModelSpec

MARGIN = 0.05  # a candidate must be this much faster (p50) than the defaults to be chosen


def candidates(backend: str) -> list[dict[str, Any]]:
    """The settings tried for `backend`: the defaults first, then one change at a time.
    No candidate changes the thread count: how many threads are fastest is a fact of the
    machine and of what else runs on it (another job holding a core made one thread
    look 1.75x faster than two), not of the model, so it never travels in a bundle."""
    if backend == "onnxruntime":
        default = dict(rt.ORT_DEFAULTS)
        changes = [{"spinning": False}, {"graph_optimization": "extended"}, {"execution_mode": "parallel"}]
    else:
        default = {"streams": 1, "pinning": True}
        changes = [{"pinning": False}]
    return [default, *({**default, **c} for c in changes)]


def tune(artifacts: list[Artifact], folder: Path, spec: ModelSpec, outputs: list[dict],
         feeds: Mapping[str, np.ndarray], threads: int, budget: float) -> dict[str, dict[str, Any]]:
    """Per artifact key, the record of its tuning; sets each artifact's `settings` to the choice.
    `budget` is the seconds of timed calls per artifact."""
    records = {}
    for a in artifacts:
        tried = candidates(a.backend)
        with contextlib.ExitStack() as stack:
            runners = {str(i): stack.enter_context(rt.RUNNERS[a.backend](
                folder / a.file, spec.inputs, outputs, a.precision, threads, tuned=c))
                for i, c in enumerate(tried)}
            stats = bench_interleaved(runners, feeds, warmup=3, runs=200, rounds=5, max_seconds=budget)
        p50 = [stats[str(i)]["p50_ms"] for i in range(len(tried))]
        best = int(np.argmin(p50))
        chosen = best if p50[best] < (1 - MARGIN) * p50[0] else 0
        a.settings = tried[chosen]
        records[a.key] = {"chosen": tried[chosen], "defaults": tried[0], "speedup": p50[0] / p50[chosen],
                          "candidates": [{"settings": c, "p50_ms": t, "runs": stats[str(i)]["runs"]}
                                         for i, (c, t) in enumerate(zip(tried, p50))]}
    return records
