"""Winograd's F(2x2, 3x3) against the build's graph at any width, on every backend that runs ONNX, in one interleaved run.

    python benchmarks/winograd.py [--variants segnet,unet] [--min-channels 256] [--threads 2] [--runs 30]

What the build's timed choice (`export.winograd`) measures, with the width it matches open: each variant's
graph is made as a build makes it (simplified, the graph rewrites of `export.rewrite` applied, its sizes left
dynamic), then every dense 3x3 convolution at stride 1, padded by 1, at sides known to be even, with at least
`--min-channels` channels in and out, is rewritten by `export.winograd.Winograd`. Both graphs are loaded
by the device runtime's runners (OpenVINO compiles its static plan at the example shape) and timed
interleaved at batch 1, FP32. Prints the p50s, the largest difference between the graphs' outputs (relative
to the largest output), the ONNX file's weights (the 3x3 kernels either way) and the weights the runtimes
hold once they fold the transform (16/9 of the kernels replaced).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np
import onnx

import models
from export.artifacts import make_fp32_artifacts
from export.backends import REGISTRY
from export.contract import Exportable
from export.golden import golden_inputs
from export.rewrite import Graph, apply_rewrites
from export.winograd import Winograd
from runtime.backends import DEFAULT_BACKENDS
from runtime.bench import bench_interleaved


def weight_mb(model: onnx.ModelProto) -> float:
    return sum(int(np.prod(i.dims)) * 4 for i in model.graph.initializer) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="segnet,unet", help="comma-separated zoo variants (default: segnet,unet)")
    parser.add_argument("--min-channels", type=int, default=256, help="rewrite convolutions this wide, in and out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    backends = [b for b in DEFAULT_BACKENDS if REGISTRY[b].runs_onnx]
    contenders, feeds_of, rows = {}, {}, {}
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as opened:
        for variant in args.variants.split(","):
            spec = models.spec(variant)
            model = Exportable(models.create(variant), spec).eval()
            feeds = golden_inputs(spec, 2, 0)
            (Path(work) / variant).mkdir()
            made = make_fp32_artifacts(model, feeds, Path(work) / variant, 20, ())
            graph = onnx.load(str(made.onnx))
            rewritten, applied = apply_rewrites(graph, (Winograd(args.min_channels),))
            constants = Graph.of(graph).constants
            kernels = sum(constants[next(n for n in graph.graph.node if n.name == a.where).input[1]].nbytes
                          for a in applied) / 1e6
            files = {"build": made.onnx, "winograd": Path(work) / variant / "winograd.onnx"}
            onnx.save(rewritten, str(files["winograd"]))
            outputs = {}
            for backend in backends:
                for when, file in files.items():
                    name = f"{variant} {backend} {when}"
                    contenders[name] = opened.enter_context(REGISTRY[backend].runtime.runner(
                        file, spec.inputs, [{"name": n} for n in spec.outputs], "fp32", args.threads))
                    feeds_of[name] = {k: v[:1] for k, v in feeds.items()}
                    if when not in outputs:  # the graphs' outputs, from the first backend
                        outputs[when] = contenders[name].infer(feeds_of[name])[spec.outputs[0]]
            moved = np.abs(outputs["winograd"] - outputs["build"]).max() / np.abs(outputs["build"]).max()
            rows[variant] = (len(applied), moved, weight_mb(graph), weight_mb(rewritten),
                             weight_mb(graph) + kernels * 7 / 9)
        stats = bench_interleaved(contenders, None, warmup=5, runs=args.runs, rounds=10, feeds_of=feeds_of)
    print(f"batch 1, {args.threads} threads, FP32, p50 ms of {args.runs} interleaved runs each; "
          f"F(2x2, 3x3) on dense 3x3 convolutions of at least {args.min_channels} channels in and out")
    titles = {b: REGISTRY[b].runtime.title for b in backends}
    print(f"{'variant':10} {'convs':>5} {'moved':>8} {'file MB':>15} {'held MB':>8} |"
          + " |".join(f" {titles[b]:>12} {'winograd':>8} {'ratio':>6}" for b in backends) + " |")
    for variant, (n, moved, before_mb, after_mb, held_mb) in rows.items():
        row = f"{variant:10} {n:5d} {moved:8.1e} {before_mb:6.1f} -> {after_mb:5.1f} {held_mb:8.1f} |"
        for backend in backends:
            b, a = (stats[f"{variant} {backend} {w}"]["p50_ms"] for w in ("build", "winograd"))
            row += f" {b:12.2f} {a:8.2f} {b / a:5.2f}x |"
        print(row)


if __name__ == "__main__":
    main()
