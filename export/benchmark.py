"""Stage: latency of every artifact and of PyTorch eager, interleaved in one run."""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from runtime.bench import bench_interleaved, latency_stats

EAGER = "pytorch/eager"


class TorchRunner:
    """PyTorch eager behind the Runner interface, for the same timing code."""

    backend, precision = "pytorch", "fp32"

    def __init__(self, model: nn.Module, threads: int):
        self.model = model
        torch.set_num_threads(threads)
        self.settings = {"threads": threads, "mode": "eager, inference_mode", "torch": torch.__version__}

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds in forward's order; outputs by name (a dict's keys, an `Exportable`'s spec, or output0...)."""
        with torch.inference_mode():
            out = self.model(*(torch.from_numpy(v) for v in feeds.values()))
        if isinstance(out, Mapping):
            return {k: v.numpy() for k, v in out.items()}
        out = (out,) if isinstance(out, torch.Tensor) else out
        names = getattr(getattr(self.model, "spec", None), "outputs", None) or [f"output{i}" for i in range(len(out))]
        return {k: v.numpy() for k, v in zip(names, out)}


def measure(runners: Mapping[str, Any], model: nn.Module, feeds: dict[str, np.ndarray], threads: int,
            warmup: int, runs: int) -> dict[str, dict]:
    """Latency of each runner and of `model` in eager PyTorch, interleaved, the
    same number of timed runs each: `runs`, or fewer where a slow model would
    take more than about 3 s per contender in all."""
    everyone = {**runners, EAGER: TorchRunner(model, threads)}
    return bench_interleaved(everyone, feeds, warmup=warmup, runs=runs, max_seconds=3.0 * len(everyone))


def matmul_peak(threads: int, sizes: tuple[int, ...] = (512, 1024, 2048), seconds: float = 1.0) -> dict[str, Any]:
    """This machine's FP32 matrix-multiply rate (torch.mm, square n x n, `threads`
    threads): the median of about `seconds` of calls per size; the best size is
    the peak that achieved GFLOP/s are held against."""
    torch.set_num_threads(threads)
    per_size = {}
    for n in sizes:
        a, b = torch.rand(n, n), torch.rand(n, n)
        flop = 2 * n**3
        times = []
        for i in range(3 + max(5, int(seconds * 100e9 / flop))):  # 3 warm-up calls, then about `seconds`
            start = time.perf_counter()
            torch.mm(a, b)
            if i >= 3:
                times.append((time.perf_counter() - start) * 1e3)
        per_size[n] = flop / latency_stats(times)["p50_ms"] / 1e6
    best = max(per_size, key=per_size.get)
    return {"gflops": per_size[best], "size": best, "per_size": per_size, "threads": threads,
            "method": "torch.mm FP32, square matrices, median per size"}
