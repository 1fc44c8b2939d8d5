"""Latency of Runners, measured honestly.

The first inference (after load) is reported apart; then an explicit warm-up;
then timed synchronous runs, one call at a time, with percentiles. Several
runners are timed interleaved, in rounds, so that a noisy machine does not
favour whichever ran first. A throughput figure from concurrent callers is
never called latency.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np


def latency_stats(times_ms: list[float]) -> dict[str, float]:
    t = np.asarray(times_ms)
    return {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "std_ms": float(t.std()),
            "min_ms": float(t.min())}


def _time_ms(runner: Any, feeds: Mapping[str, np.ndarray]) -> float:
    start = time.perf_counter()
    runner.infer(feeds)
    return (time.perf_counter() - start) * 1e3


def bench_interleaved(runners: Mapping[str, Any], feeds: Mapping[str, np.ndarray] | None, warmup: int = 10,
                      runs: int = 100, rounds: int = 5, max_seconds: float | None = None,
                      feeds_of: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                      settle: float = 0.05) -> dict[str, dict]:
    """Time each runner's `infer(feeds)`: `runs` timed calls each, spread over
    `rounds` rounds that visit the runners in turn. Every runner is timed the
    same number of times: with `max_seconds`, the timed calls of all runners
    together stop near that budget (after at least 10 calls each), and the
    number actually timed is recorded. `feeds_of` gives runners that take other
    inputs their own feeds. Before each runner's turn the timer waits `settle`
    seconds, so that the worker threads of the runner before (PyTorch's OpenMP
    pool, ONNX Runtime's spinning threads) are idle, as they would be on a
    device running one model."""
    own = {name: (feeds_of or {}).get(name, feeds) for name in runners}
    first = {name: _time_ms(r, own[name]) for name, r in runners.items()}
    for name, r in runners.items():
        for _ in range(warmup):
            r.infer(own[name])
    times: dict[str, list[float]] = {name: [] for name in runners}
    per_round = max(1, -(-runs // rounds))
    target, done = runs, 0
    while done < target:
        n = min(per_round, target - done)
        for name, r in runners.items():
            time.sleep(settle)  # the previous runner's worker threads stop spinning before this one is timed
            times[name] += [_time_ms(r, own[name]) for _ in range(n)]
        done += n
        if max_seconds is not None:  # how many calls of every runner fit in what is left of the budget
            spent = sum(map(sum, times.values())) / 1e3
            fits = done + int(max(0.0, max_seconds - spent) / (spent / done))
            target = min(runs, max(fits, min(10, runs)))
    return {name: {"first_ms": first[name], "warmup": warmup, "runs": len(times[name]),
                   **latency_stats(times[name]), "batch": int(next(iter(own[name].values())).shape[0]),
                   "settings": dict(getattr(runners[name], "settings", {}))}
            for name in runners}


def bench(runner: Any, feeds: Mapping[str, np.ndarray], warmup: int = 10, runs: int = 100,
          max_seconds: float | None = None) -> dict[str, Any]:
    """Latency of one runner (see `bench_interleaved`)."""
    return bench_interleaved({"runner": runner}, feeds, warmup, runs, rounds=1, max_seconds=max_seconds)["runner"]


def throughput(runner: Any, feeds: Mapping[str, np.ndarray], seconds: float = 5.0,
               warmup: int = 10) -> dict[str, Any]:
    """Inferences per second with the runner's concurrent callers (load it with
    mode="throughput"). This is not latency: calls overlap, so no per-call time
    is reported."""
    for _ in range(warmup):
        runner.infer(feeds)
    count, elapsed = runner.run_for(feeds, seconds)
    batch = int(next(iter(feeds.values())).shape[0])
    return {"mode": "throughput", "inferences": count, "seconds": elapsed, "batch": batch,
            "inferences_per_s": count / elapsed, "images_per_s": count * batch / elapsed,
            "parallel": runner.callers, "settings": dict(getattr(runner, "settings", {}))}
