"""Latency of a detector bundle against PyTorch eager, in one interleaved run.

    python benchmarks/detector_speed.py [--bundle artifacts/dsc] [--against baseline] [--threads 2]

Prints p50 per contender and the speed-up of each artifact over PyTorch eager
on the bundle's own variant and on `--against` (batch 1, same weights, same
inputs, same thread count).
"""

from __future__ import annotations

import argparse

import models
import runtime
from export.benchmark import TorchRunner
from runtime.bench import bench_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="artifacts/dsc")
    parser.add_argument("--against", default="baseline", help="another variant to time in eager PyTorch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()

    bundle = runtime.Bundle.open(args.bundle)
    variant = bundle.name
    inputs, _ = bundle.golden()
    feeds = {k: v[:1] for k, v in inputs.items()}
    checkpoint = (bundle.manifest["checkpoint"] or {}).get("path")
    contenders = {
        f"eager {variant}": TorchRunner(models.from_source(bundle.spec.source, checkpoint), args.threads),
        f"eager {args.against}": TorchRunner(models.create(args.against), args.threads),
    }
    for art in bundle.artifacts:
        contenders[f"{variant} {art.backend} {art.precision}"] = runtime.load(bundle, art.backend, art.precision,
                                                                              args.threads)
    stats = bench_interleaved(contenders, feeds, warmup=10, runs=args.runs, rounds=10)

    own, other = stats[f"eager {variant}"]["p50_ms"], stats[f"eager {args.against}"]["p50_ms"]
    print(f"batch 1, {args.threads} threads, {args.runs} interleaved runs each (p50)")
    print(f"{'contender':32s} {'p50 ms':>8s} {'p90 ms':>8s} {'vs eager ' + variant:>16s} {'vs eager ' + args.against:>20s}")
    for name, s in stats.items():
        print(f"{name:32s} {s['p50_ms']:8.2f} {s['p90_ms']:8.2f} {own / s['p50_ms']:15.2f}x {other / s['p50_ms']:19.2f}x")


if __name__ == "__main__":
    main()
