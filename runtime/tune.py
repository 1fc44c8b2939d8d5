"""Each artifact's backend settings, chosen by measurement where they run.

A few candidate settings per backend (ONNX Runtime: spinning, graph
optimisation level, execution mode; OpenVINO: streams, CPU pinning; its f32
precision hint stays as the artifact's precision asks and is recorded), all on
one thread count, loaded side by side and timed interleaved within a small
budget. A candidate is chosen only where it beats the backend's defaults by
more than `MARGIN` at p50 and the bootstrap interval of the ratio says the
difference is real; a win the interval cannot confirm is recorded as
undecided and not acted on.

The build tunes on its own machine (the artifact's manifest entry `settings`,
used by `runtime.load` only on a CPU with the build machine's signature);
`runtime bench --choose --tune` tunes on the device, kept beside its choice.
Numpy and the backends only: it runs on the device too.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .backends import REGISTRY
from .bench import bench_interleaved, difference
from .bundle import Artifact
from .errors import backend_reason
from .spec import ModelSpec

MARGIN = 0.05  # a candidate must be this much faster (p50) than the defaults to be chosen


def candidates(backend: str, memory: bool = False) -> list[dict[str, Any]]:
    """The settings tried for `backend`: the defaults first, then one change at a time (its plugin's).
    No candidate changes the thread count: how many threads are fastest is a fact of the
    machine and of what else runs on it (another job holding a core made one thread
    look 1.75x faster than two), not of the model, so it never travels in a bundle."""
    return REGISTRY[backend].candidates(memory)


def _peaks(a: Artifact, folder: Path, tried: list[dict], threads: int | None) -> list[float]:
    from .memory import measure

    return [measure(folder, a.backend, a.precision, threads, settings=c, cache=False)["peak_mb"] for c in tried]


def tune(artifacts: list[Artifact], folder: Path, spec: ModelSpec, outputs: list[dict],
         feeds: Mapping[str, np.ndarray], threads: int | None, budget: float,
         memory_budget: float | None = None) -> dict[str, dict[str, Any]]:
    """Per artifact key, the record of its tuning; sets each artifact's `settings` to the choice.
    `budget` is the seconds of timed calls per artifact. Under `memory_budget` (MB) the backend's
    memory settings join the candidates, each candidate's peak is measured in a fresh process, and
    the fastest that fits is chosen (over the defaults, as above, where the defaults fit)."""
    records = {}
    for a in artifacts:
        with contextlib.ExitStack() as stack:
            tried, runners, refused = _open(stack, a, folder, spec, outputs, feeds, threads,
                                            candidates(a.backend, memory=memory_budget is not None))
            peaks = _peaks(a, folder, tried, threads) if memory_budget is not None else [None] * len(tried)
            fits = [p is None or p <= memory_budget for p in peaks]
            times: dict[str, list[float]] = {}
            stats = bench_interleaved(runners, feeds, warmup=3, runs=200, rounds=5, max_seconds=budget, times=times)
        p50 = [stats[str(i)]["p50_ms"] for i in range(len(tried))]
        best = min((i for i in range(len(tried)) if fits[i]), key=lambda i: p50[i], default=0)
        versus = difference(times["0"], times[str(best)], stats["0"]["others_cores"]) if best else None
        wins = best and p50[best] < (1 - MARGIN) * p50[0]
        chosen = best if (wins and versus["real"]) or (best and not fits[0]) else 0
        a.settings = tried[chosen]
        records[a.key] = {"chosen": tried[chosen], "defaults": tried[0], "speedup": p50[0] / p50[chosen],
                          "best_vs_defaults": versus, "undecided": bool(wins and not versus["real"]),
                          **({"memory_budget_mb": memory_budget} if memory_budget is not None else {}),
                          "candidates": [{"settings": c, "p50_ms": t, "runs": stats[str(i)]["runs"],
                                          **({"peak_mb": peaks[i]} if peaks[i] is not None else {})}
                                         for i, (c, t) in enumerate(zip(tried, p50))],
                          **({"cannot_run": refused} if refused else {})}
    return records


def _open(stack: contextlib.ExitStack, a: Artifact, folder: Path, spec: ModelSpec, outputs: list[dict],
          feeds: Mapping[str, np.ndarray], threads: int | None, tried: list[dict[str, Any]]):
    """A runner for each candidate that runs the artifact on `feeds` (the candidates kept, their runners
    by index, as strings), and the candidates that cannot, each with its reason (LiteRT's reference
    kernels refuse some graphs its XNNPACK delegate runs). The defaults are the artifact's own: loaded
    and checked before tuning, they are always kept, and their failure is not hidden."""
    kept, runners, refused = [], {}, []
    for c in tried:
        try:
            runner = stack.enter_context(REGISTRY[a.backend].runner(folder / a.file, spec.inputs, outputs,
                                                                    a.precision, threads, tuned=c))
            runner.infer(feeds)
        except Exception as err:  # noqa: BLE001 (the backends raise RuntimeError and their own types)
            if not kept:
                raise
            refused.append({"settings": c, "reason": backend_reason(err)})
            continue
        runners[str(len(kept))] = runner
        kept.append(c)
    return kept, runners, refused
