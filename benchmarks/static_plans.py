"""OpenVINO compiled at the shape it is called with, against compiled once with its dynamic axes, in one
interleaved run per bundle.

    python benchmarks/static_plans.py [--artifacts artifacts] [--variants dsc,dsc-lite] [--threads 2] [--runs 100]

Every bundle under `--artifacts` with an OpenVINO FP32 artifact (or those of `--variants`) is
loaded twice: as the runtime loads it (a plan compiled at the spec's example shape, see
`STATIC_PLANS` in runtime/backends/openvino.py) and with no static plan (the IR compiled once,
its dynamic batch kept). Prints both p50s at batch 1 and their ratio. Needs no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import runtime
from runtime.backends import openvino as plugin
from runtime.bench import bench_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--variants", help="comma-separated bundle names (default: every bundle there)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()

    names = args.variants.split(",") if args.variants else sorted(
        p.parent.name for p in args.artifacts.glob("*/manifest.json"))
    print(f"batch 1, {args.threads} threads, {args.runs} interleaved runs each; p50 ms")
    print(f"{'bundle':14s} {'static plan':>12s} {'dynamic only':>13s} {'speed-up':>9s}")
    for name in names:
        bundle = runtime.Bundle.open(args.artifacts / name)
        if not any(a.backend == plugin.BACKEND.name and a.precision == "fp32" for a in bundle.artifacts):
            continue
        spec = bundle.spec.inputs
        feeds = {i.name: np.random.default_rng(0).random(i.example, dtype=np.float32) for i in spec}
        static = runtime.load(bundle, plugin.BACKEND.name, "fp32", args.threads, cache=False)
        default, plugin.STATIC_PLANS = plugin.STATIC_PLANS, 0
        try:
            dynamic = runtime.load(bundle, plugin.BACKEND.name, "fp32", args.threads, cache=False)
        finally:
            plugin.STATIC_PLANS = default
        stats = bench_interleaved({"static": static, "dynamic": dynamic}, feeds, warmup=10, runs=args.runs)
        s, d = stats["static"]["p50_ms"], stats["dynamic"]["p50_ms"]
        print(f"{name:14s} {s:12.2f} {d:13.2f} {d / s:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
