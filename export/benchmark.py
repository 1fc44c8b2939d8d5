"""Stage: latency of every artifact and of PyTorch eager (a Runner like the others), interleaved in one run."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from runtime.bench import bench_interleaved
from runtime.backends.base import BaseRunner, Runner, op_table

from .contract import Exportable

EAGER = "pytorch/eager"


class TorchRunner(BaseRunner):
    """PyTorch eager behind the one Runner protocol: the same input checks and timing code as the artifacts."""

    def __init__(self, model: Exportable, threads: int):
        super().__init__(model.spec.inputs, [{"name": n} for n in model.spec.outputs], "pytorch", "fp32")
        self.model = model
        torch.set_num_threads(threads)
        self.settings = {"threads": threads, "mode": "eager, inference_mode", "torch": torch.__version__}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.model(*(torch.from_numpy(feeds[name]) for name in self.input_names))
        return {k: v.numpy() for k, v in zip(self.output_names, out)}

    def profile(self, feeds: Mapping[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
        """CPU time per ATen op, from torch.profiler (the first inference left out)."""
        from torch.profiler import ProfilerActivity, profile

        feeds = self.check(feeds)
        self._run(feeds)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                self._run(feeds)
        per_op = {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()
                  if e.self_cpu_time_total > 0}
        return op_table(per_op, runs)


def measure(runners: Mapping[str, Runner], model: Exportable, feeds: dict[str, np.ndarray], threads: int,
            warmup: int, runs: int, times: dict[str, list[float]] | None = None) -> dict[str, dict]:
    """Latency of each runner and of `model` in eager PyTorch, interleaved, the
    same number of timed runs each: `runs`, or fewer where a slow model would
    take more than about 3 s per contender in all (`times` receives every timed call)."""
    everyone = {**runners, EAGER: TorchRunner(model, threads)}
    return bench_interleaved(everyone, feeds, warmup=warmup, runs=runs, max_seconds=3.0 * len(everyone), times=times)


