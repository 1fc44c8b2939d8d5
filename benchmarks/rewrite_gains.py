"""Whole models before and after the graph rewrites, in one interleaved run.

    python benchmarks/rewrite_gains.py [--variants unet,baseline] [--threads 2] [--runs 100]

Exports each variant twice as a build does (simplified; then once more with the
graph rewrites of `export.rewrite`), and times both graphs on ONNX Runtime and
OpenVINO (FP32, batch 1; OpenVINO compiled at the example shape, as the runtime
compiles it), interleaved. Prints the rewrites applied, the mult-adds of the
Conv, ConvTranspose, MatMul and Gemm nodes before and after
(`export.lab.roofline`'s count), and each backend's p50s and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import onnx

import models
from export.artifacts import make_fp32_artifacts
from export.contract import Exportable
from export.golden import golden_inputs
from export.lab import roofline
from runtime.bench import bench_interleaved

from detector_parts import Session  # benchmarks/, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="unet", help="comma-separated zoo variants (default: unet)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()

    contenders, applied, work = {}, {}, {}
    for variant in args.variants.split(","):
        model = Exportable(models.create(variant), models.spec(variant)).eval()
        feeds = golden_inputs(model.spec, 2, 0)
        one = {k: v[:1] for k, v in feeds.items()}
        with tempfile.TemporaryDirectory() as work_dir:
            for when, rewrites in (("before", False), ("after", True)):
                (Path(work_dir) / when).mkdir()
                made = make_fp32_artifacts(model, feeds, Path(work_dir) / when, 20, (), rewrites=rewrites)
                graph = onnx.load(str(made.onnx))
                work[(variant, when)] = sum(w.flops for w in roofline.graph_work(graph, one).values()
                                            if w.op in roofline.GEMM_OPS) // 2
                for backend in ("onnxruntime", "openvino"):
                    contenders[f"{variant} {backend} {when}"] = (Session(graph, backend, args.threads, {k: v.shape for k, v in one.items()}), one)
                if rewrites:
                    applied[variant] = Counter(a["rewrite"] for a in made.rewrites["applied"])
    stats = bench_interleaved({k: r for k, (r, _) in contenders.items()}, None, warmup=10, runs=args.runs, rounds=10,
                              feeds_of={k: f for k, (_, f) in contenders.items()})
    print(f"batch 1, {args.threads} threads, FP32, p50 ms of {args.runs} interleaved runs each")
    print(f"{'variant':12} {'M mult-adds':>17} | {'ONNX Runtime before':>20} {'after':>7} {'ratio':>6} | "
          f"{'OpenVINO before':>16} {'after':>7} {'ratio':>6} | rewrites")
    for variant in args.variants.split(","):
        row = f"{variant:12} {work[(variant, 'before')] / 1e6:7.1f} -> {work[(variant, 'after')] / 1e6:6.1f} |"
        for backend, width in (("onnxruntime", 20), ("openvino", 16)):
            b, a = (stats[f"{variant} {backend} {w}"]["p50_ms"] for w in ("before", "after"))
            row += f" {b:{width}.2f} {a:7.2f} {b / a:5.2f}x |"
        print(row, ", ".join(f"{name} x{n}" for name, n in applied[variant].items()) or "none")


if __name__ == "__main__":
    main()
