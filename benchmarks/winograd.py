"""Winograd's F(2x2, 3x3) and F(4x4, 3x3) against the build's graph at any width, on every backend that runs ONNX, in one interleaved run.

    python benchmarks/winograd.py [--variants segnet,unet] [--min-channels 256] [--tiles 2,4] [--threads 2] [--runs 30]

What the build's timed choice (`export.winograd`) measures, with the width and the block size open: each
variant's graph is made as a build makes it (simplified, the graph rewrites of `export.rewrite` applied, its
sizes left dynamic), then, for each block side m of `--tiles`, every dense 3x3 convolution at stride 1,
padded by 1, at sides known to be multiples of m, with at least `--min-channels` channels in and out, is
rewritten by `export.winograd.Winograd` (the build uses m = 2). All the graphs are loaded by the device
runtime's runners (OpenVINO compiles its static plan at the example shape) and timed interleaved at batch 1,
FP32. Prints the p50s and their ratio to the build's graph, the largest difference from the build's outputs
(relative to the largest output), the ONNX file's weights (the 3x3 kernels either way) and the weights the
runtimes hold once they fold the transform ((m+2)^2/9 of the kernels replaced).
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
from export.winograd import TRANSFORMS, Winograd
from runtime.backends import DEFAULT_BACKENDS
from runtime.bench import bench_interleaved


def weight_mb(model: onnx.ModelProto) -> float:
    return sum(int(np.prod(i.dims)) * 4 for i in model.graph.initializer) / 1e6


def tile_sides(text: str) -> list[int]:
    sides = [t.strip() for t in text.split(",")]
    if not sides or any(t not in {str(m) for m in TRANSFORMS} for t in sides):
        raise argparse.ArgumentTypeError(f"{text!r}: give block sides from {sorted(TRANSFORMS)}, comma-separated")
    return [int(t) for t in sides]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="segnet,unet", help="comma-separated zoo variants (default: segnet,unet)")
    parser.add_argument("--min-channels", type=int, default=256, help="rewrite convolutions this wide, in and out")
    parser.add_argument("--tiles", default="2,4", type=tile_sides,
                        help="comma-separated output block sides m of F(m x m, 3x3), each 2 or 4 (default: 2,4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    tiles = args.tiles

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
            files, made_forms, file_mb = {"build": made.onnx}, {}, weight_mb(graph)
            constants = Graph.of(graph).constants
            kernel_of = {n.name: n.input[1] for n in graph.graph.node if n.op_type == "Conv"}
            for m in tiles:
                rewritten, applied = apply_rewrites(graph, (Winograd(args.min_channels, m),))
                kernels = sum(constants[kernel_of[a.where]].nbytes for a in applied) / 1e6
                files[f"F{m}"] = Path(work) / variant / f"winograd{m}.onnx"
                onnx.save(rewritten, str(files[f"F{m}"]))
                # the runtimes hold U, (m+2)^2 / 9 the size of the kernels it replaces
                made_forms[f"F{m}"] = (len(applied), weight_mb(rewritten), file_mb + kernels * ((m + 2) ** 2 / 9 - 1))
            outputs = {}
            for backend in backends:
                for form, file in files.items():
                    name = f"{variant} {backend} {form}"
                    contenders[name] = opened.enter_context(REGISTRY[backend].runtime.runner(
                        file, spec.inputs, [{"name": n} for n in spec.outputs], "fp32", args.threads))
                    feeds_of[name] = {k: v[:1] for k, v in feeds.items()}
                    if form not in outputs:  # the graphs' outputs, from the first backend
                        outputs[form] = contenders[name].infer(feeds_of[name])[spec.outputs[0]]
            largest = np.abs(outputs["build"]).max()
            # per form: convolutions rewritten, file MB, held MB, largest output difference from the build's
            rows[variant] = {"build": (0, file_mb, file_mb, 0.0),
                             **{form: (*made, np.abs(outputs[form] - outputs["build"]).max() / largest)
                                for form, made in made_forms.items()}}
        stats = bench_interleaved(contenders, None, warmup=5, runs=args.runs, rounds=10, feeds_of=feeds_of)
    print(f"batch 1, {args.threads} threads, FP32, p50 ms of {args.runs} interleaved runs each; F(m x m, 3x3) "
          f"on dense 3x3 convolutions of at least {args.min_channels} channels in and out; ratio: build / rewritten")
    titles = {b: REGISTRY[b].runtime.title for b in backends}
    print(f"{'variant':10} {'form':5} {'convs':>5} {'moved':>8} {'file MB':>15} {'held MB':>8} |"
          + " |".join(f" {titles[b]:>12} {'ratio':>6}" for b in backends) + " |")
    for variant, row in rows.items():
        for form, (n, after_mb, held_mb, moved) in row.items():
            line = f"{variant:10} {form:5} {n:5d} {moved:8.1e} {row['build'][1]:6.1f} -> {after_mb:5.1f} {held_mb:8.1f} |"
            for backend in backends:
                b, a = (stats[f"{variant} {backend} {w}"]["p50_ms"] for w in ("build", form))
                line += f" {a:12.2f} {b / a:5.2f}x |"
            print(line)


if __name__ == "__main__":
    main()
