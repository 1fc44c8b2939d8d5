"""What the Runner costs over calling the backend by hand, in one interleaved run.

    python benchmarks/runner_overhead.py [--bundle artifacts/dsc] [--threads 2] [--runs 300]

For each backend, times `runner.infer(x)` (input checks, output dict) against
a bare `InferenceSession.run` / OpenVINO infer request on the same model file
with the same settings, and prints both p50s and the overhead in percent.
Needs no torch.
"""

from __future__ import annotations

import argparse

import numpy as np

import runtime
from runtime.bench import bench_interleaved


class BareOnnxRuntime:
    def __init__(self, runner):
        self.session = runner.session  # the same session object: only the wrapper differs

    def infer(self, feeds):
        return self.session.run(None, feeds)


class BareOpenVINO:
    def __init__(self, runner):
        self.request = runner.compiled.create_infer_request()

    def infer(self, feeds):
        result = self.request.infer(feeds)
        return [np.array(v) for v in result.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="artifacts/dsc")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()

    bundle = runtime.Bundle.open(args.bundle)
    inputs, _ = bundle.golden()
    feeds = {k: v[:1] for k, v in inputs.items()}
    contenders = {}
    for backend, bare in (("onnxruntime", BareOnnxRuntime), ("openvino", BareOpenVINO)):
        runner = runtime.load(bundle, backend, "fp32", args.threads)
        contenders[f"{backend} Runner.infer"] = runner
        contenders[f"{backend} bare"] = bare(runner)
    stats = bench_interleaved(contenders, feeds, warmup=20, runs=args.runs, rounds=20)

    print(f"{bundle.name}, batch 1, {args.threads} threads, {args.runs} interleaved runs each")
    print(f"{'backend':12s} {'bare p50 ms':>12s} {'Runner p50 ms':>14s} {'overhead':>9s}")
    for backend in ("onnxruntime", "openvino"):
        bare, runner = stats[f"{backend} bare"]["p50_ms"], stats[f"{backend} Runner.infer"]["p50_ms"]
        print(f"{backend:12s} {bare:12.3f} {runner:14.3f} {100 * (runner / bare - 1):+8.2f}%")


if __name__ == "__main__":
    main()
