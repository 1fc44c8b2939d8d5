"""Latency of Runners, measured honestly.

The first inference (after load) is reported apart; then an explicit warm-up;
then timed synchronous runs, one call at a time, with percentiles. Several
runners are timed interleaved, in rounds, so that a noisy machine does not
favour whichever ran first. A throughput figure from concurrent callers is
never called latency.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def latency_stats(times_ms: list[float]) -> dict[str, float]:
    t = np.asarray(times_ms)
    return {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "std_ms": float(t.std()),
            "min_ms": float(t.min())}


# other processes holding this many cores on average while a comparison was timed make it undecided:
# the intervals measure the noise within one run, not the bias another job puts on one side of it
BUSY_CORES = 0.25


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process has used, including time the hypervisor gave others (steal); CPU
    seconds this process has used), or None where /proc/stat does not exist."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    own = os.times()
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own.user + own.system


class Others:
    """The cores other processes held, on average, from its creation to each `cores()` call."""

    def __init__(self):
        self.start, self.began = _cpu_seconds(), time.perf_counter()

    def cores(self) -> float | None:
        end, wall = _cpu_seconds(), time.perf_counter() - self.began
        if self.start is None or end is None or wall <= 0:
            return None
        return max(0.0, (end[0] - self.start[0]) - (end[1] - self.start[1])) / wall


def _time_ms(runner: Any, feeds: Mapping[str, np.ndarray]) -> float:
    start = time.perf_counter()
    runner.infer(feeds)
    return (time.perf_counter() - start) * 1e3


def bench_interleaved(runners: Mapping[str, Any], feeds: Mapping[str, np.ndarray] | None, warmup: int = 10,
                      runs: int = 100, rounds: int = 5, max_seconds: float | None = None,
                      feeds_of: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                      settle: float = 0.05, times: dict[str, list[float]] | None = None) -> dict[str, dict]:
    """Time each runner's `infer(feeds)`: `runs` timed calls each, spread over
    `rounds` rounds that visit the runners in turn. Every runner is timed the
    same number of times: with `max_seconds`, the timed calls of all runners
    together stop near that budget (after at least 10 calls each), and the
    number actually timed is recorded. `feeds_of` gives runners that take other
    inputs their own feeds. Before each runner's turn the timer waits `settle`
    seconds, so that the worker threads of the runner before (PyTorch's OpenMP
    pool, ONNX Runtime's spinning threads) are idle, as they would be on a
    device running one model. `times`, where given, receives every timed call per runner."""
    own = {name: (feeds_of or {}).get(name, feeds) for name in runners}
    first = {name: _time_ms(r, own[name]) for name, r in runners.items()}
    for name, r in runners.items():
        for _ in range(warmup):
            r.infer(own[name])
    times = {} if times is None else times
    times.update({name: [] for name in runners})
    others = Others()
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
    held = others.cores()
    return {name: {"first_ms": first[name], "warmup": warmup, "runs": len(times[name]),
                   **latency_stats(times[name]), "batch": int(next(iter(own[name].values())).shape[0]),
                   "settings": dict(getattr(runners[name], "settings", {})), "others_cores": held}
            for name in runners}


def bench(runner: Any, feeds: Mapping[str, np.ndarray], warmup: int = 10, runs: int = 100,
          max_seconds: float | None = None) -> dict[str, Any]:
    """Latency of one runner (see `bench_interleaved`)."""
    return bench_interleaved({"runner": runner}, feeds, warmup, runs, rounds=1, max_seconds=max_seconds)["runner"]


# MLPerf's single-stream rule: at least this many queries and this long, scored on p90
SINGLE_STREAM_QUERIES, SINGLE_STREAM_SECONDS = 1024, 60.0
QUANTILES = {"p50_ms": 50, "p90_ms": 90, "p99_ms": 99}


def intervals(times_ms, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """Bootstrap intervals (percentile method, `level`) of p50, p90 and p99 of the timed calls."""
    t, rng = np.asarray(times_ms, np.float64), np.random.default_rng(seed)
    estimates = np.concatenate([np.percentile(rng.choice(t, size=(n, t.size)), list(QUANTILES.values()), axis=1).T
                                for n in _chunks(resamples, t.size)])  # (resamples, quantiles)
    tail = 100 * (1 - level) / 2
    return {name: [float(np.percentile(estimates[:, i], tail)), float(np.percentile(estimates[:, i], 100 - tail))]
            for i, name in enumerate(QUANTILES)}


def _chunks(resamples: int, size: int, budget: int = 2_000_000) -> list[int]:
    """Resamples per batch so that one batch holds at most `budget` numbers (16 MB): a board's memory."""
    per = max(1, budget // max(size, 1))
    return [min(per, resamples - i) for i in range(0, resamples, per)]


def difference(a_ms, b_ms, others_cores: float | None = None, resamples: int = 2000, level: float = 0.95,
               seed: int = 0) -> dict[str, Any]:
    """Whether `b` is really slower or faster than `a` at p50: the bootstrap interval of the ratio of
    their p50s (b over a); the difference is real when the interval leaves out 1, and the machine was
    not busy: with other processes holding `others_cores` >= BUSY_CORES while they were timed, it is
    undecided (`busy` says so), whatever the interval."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a_ms, np.float64), np.asarray(b_ms, np.float64)
    ratios = np.concatenate([np.median(rng.choice(b, size=(n, b.size)), axis=1)
                             / np.median(rng.choice(a, size=(n, a.size)), axis=1)
                             for n in _chunks(resamples, max(a.size, b.size))])
    tail = 100 * (1 - level) / 2
    low, high = float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))
    busy = others_cores is not None and others_cores >= BUSY_CORES
    return {"ratio_p50": float(np.median(b) / np.median(a)), "interval": [low, high], "level": level,
            "real": not busy and not low <= 1.0 <= high, "others_cores": others_cores, "busy": busy}


def conditions() -> dict[str, Any]:
    """What the machine was doing: load average, the CPU governor and frequency, the hottest thermal zone
    (None where this machine does not say)."""
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    freqs = [read(f) for f in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"))]
    temps = [read(f) for f in glob.glob("/sys/class/thermal/thermal_zone*/temp")]
    freqs_mhz = [int(f) / 1000 for f in freqs if f and f.isdigit()]
    temps_c = [int(t) / 1000 for t in temps if t and t.lstrip("-").isdigit()]
    return {"loadavg": [round(x, 2) for x in os.getloadavg()],
            "governor": read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "mhz": round(sum(freqs_mhz) / len(freqs_mhz)) if freqs_mhz else None,
            "temperature_c": max(temps_c) if temps_c else None}


def single_stream(runners: Mapping[str, Any], feeds: Mapping[str, np.ndarray], warmup: int = 10,
                  min_queries: int = SINGLE_STREAM_QUERIES, min_seconds: float = SINGLE_STREAM_SECONDS,
                  settle: float = 0.05) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """The single-stream protocol: each runner's synchronous calls, one at a time, interleaved in rounds
    of 32, until every runner has at least `min_queries` timed calls and `min_seconds` of them; p50, p90
    and p99 with bootstrap 95% intervals, and the machine's conditions before and after.
    Returns (figures per runner, the timed calls per runner)."""
    before = conditions()
    first = {name: _time_ms(r, feeds) for name, r in runners.items()}
    for r in runners.values():
        for _ in range(warmup):
            r.infer(feeds)
    times: dict[str, list[float]] = {name: [] for name in runners}
    others = Others()
    while any(len(t) < min_queries or sum(t) / 1e3 < min_seconds for t in times.values()):
        for name, r in runners.items():
            time.sleep(settle)
            times[name] += [_time_ms(r, feeds) for _ in range(32)]
    after, held = conditions(), others.cores()
    return {name: {"protocol": "single-stream", "others_cores": held, "first_ms": first[name], "warmup": warmup, "runs": len(t),
                   "seconds": sum(t) / 1e3, **latency_stats(t), "intervals": intervals(t),
                   "conditions": {"before": before, "after": after},
                   "batch": int(next(iter(feeds.values())).shape[0]),
                   "settings": dict(getattr(runners[name], "settings", {}))}
            for name, t in times.items()}, times


def sustained(runner: Any, feeds: Mapping[str, np.ndarray], seconds: float, window: float = 60.0,
              warmup: int = 10) -> dict[str, Any]:
    """Calls back to back for `seconds`: p50 per `window`, the CPU temperature at each window's end
    where the machine gives it, the cores other processes held during each window (a slowdown that is
    another job's, or the hypervisor's steal, rather than the board's throttling), and the drift of the
    last window's p50 from the first's."""
    for _ in range(warmup):
        runner.infer(feeds)
    windows, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        begun, t, others = time.perf_counter(), [], Others()
        while time.perf_counter() - begun < window and time.perf_counter() - start < seconds:
            t.append(_time_ms(runner, feeds))
        windows.append({"start_s": round(begun - start, 3), "runs": len(t), "p50_ms": float(np.median(t)),
                        "p90_ms": float(np.percentile(t, 90)), "temperature_c": conditions()["temperature_c"],
                        "others_cores": others.cores()})
    drift = windows[-1]["p50_ms"] / windows[0]["p50_ms"] - 1
    return {"seconds": seconds, "window_s": window, "windows": windows, "drift": drift}


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
