"""Stage: latency of every artifact and of PyTorch eager, interleaved in one run."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from runtime.bench import bench_interleaved

EAGER = "pytorch/eager"


class TorchRunner:
    """PyTorch eager behind the Runner interface, for the same timing code."""

    backend, precision = "pytorch", "fp32"

    def __init__(self, model: nn.Module, threads: int):
        self.model = model
        torch.set_num_threads(threads)
        self.settings = {"threads": threads, "mode": "eager, inference_mode", "torch": torch.__version__}

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        (x,) = feeds.values()
        with torch.inference_mode():
            return {k: v.numpy() for k, v in self.model(torch.from_numpy(x)).items()}


def measure(runners: Mapping[str, Any], model: nn.Module, feeds: dict[str, np.ndarray], threads: int,
            warmup: int, runs: int) -> dict[str, dict]:
    """Latency of each runner and of `model` in eager PyTorch (capped at a few
    seconds of timed runs each, so a slow baseline does not dominate the build)."""
    everyone = {**runners, EAGER: TorchRunner(model, threads)}
    return bench_interleaved(everyone, feeds, warmup=warmup, runs=runs, max_seconds=3.0)
