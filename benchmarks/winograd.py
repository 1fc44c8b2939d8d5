"""Wide dense 3x3 convolutions as Winograd's F(2x2, 3x3), against the build's graph, in one interleaved run.

    python benchmarks/winograd.py [--variants segnet,unet] [--min-channels 256] [--threads 2] [--runs 30]

Why the build has no such rewrite. Each variant's graph is made as a build makes it (simplified, the
graph rewrites of `export.rewrite` applied), its input fixed at the example shape; then every dense
3x3 convolution at stride 1, padded by 1, with at least `--min-channels` channels in and out, is
rewritten as F(2x2, 3x3): a padded space-to-depth of the input and four shifted slices (each 4x4
tile of the input, at stride 2), the input transform B^T d B as one matrix product over the tile,
16 matrix products of the transformed weights G g G^T by the tiles (4 mult-adds per output pixel
and weight instead of 9), the output transform A^T m A as one matrix product and a depth-to-space.
Times both graphs on ONNX Runtime and OpenVINO (FP32, batch 1), interleaved, and prints the p50s,
the largest difference between the graphs' outputs (relative to the largest output), and the
weights' size: the transformed weights are 16/9 of the 3x3 kernels they replace.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

import models
from export.artifacts import make_fp32_artifacts
from export.contract import Exportable
from export.golden import golden_inputs
from export.rewrite import Applied, Emitter, Graph, apply_rewrites, attrs
from runtime.bench import bench_interleaved

from detector_parts import Session  # benchmarks/, beside this script

# F(2x2, 3x3) (Lavin and Gray, 2016): Y = A^T [(G g G^T) * (B^T d B)] A over 4x4 input tiles d
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


class Winograd:
    """A dense 3x3 convolution (stride 1, padded by 1, static even size, wide) as F(2x2, 3x3)."""

    name = "winograd"

    def __init__(self, min_channels: int):
        self.min_channels = min_channels

    def matches(self, g: Graph) -> list[onnx.NodeProto]:
        return [n for n in g.model.graph.node if self._wide_3x3(g, n)]

    def _wide_3x3(self, g: Graph, conv: onnx.NodeProto) -> bool:
        if conv.op_type != "Conv" or conv.input[1] not in g.constants:
            return False
        a, w, x = attrs(conv), g.constants[conv.input[1]], g.static(conv.input[0])
        return (w.shape[2:] == (3, 3) and a.get("group", 1) == 1 and a.get("pads") == [1, 1, 1, 1]
                and a.get("strides", [1, 1]) == [1, 1] and a.get("dilations", [1, 1]) == [1, 1]
                and x is not None and x[2] % 2 == 0 and x[3] % 2 == 0 and min(w.shape[:2]) >= self.min_channels)

    def emit(self, g: Graph, conv: onnx.NodeProto) -> tuple[Emitter, Applied]:
        w = g.constants[conv.input[1]].astype(np.float64)
        k, c = w.shape[:2]
        _, _, height, width = g.static(conv.input[0])
        h, wd = height // 2, width // 2  # tiles down and across
        tile = np.einsum("ai,bj->abij", BT, BT).reshape(16, 4, 4)  # B^T d B, by tile position
        # the concatenated shifts hold tile row 2*di + bi, column 2*dj + bj at (di, dj, bi, bj)
        pick = np.stack([tile[:, 2 * di + bi, 2 * dj + bj] for di in (0, 1) for dj in (0, 1)
                         for bi in (0, 1) for bj in (0, 1)], axis=1)
        e = Emitter(f"{conv.name}/{self.name}")
        blocks = e.op("SpaceToDepth", [e.op("Pad", [conv.input[0], e.ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])])],
                      blocksize=2)
        shifts = [e.op("Slice", [blocks, e.ints(f"from{di}{dj}", [di, dj]), e.ints(f"to{di}{dj}", [di + h, dj + wd]),
                                 e.ints(f"axes{di}{dj}", [2, 3])]) for di in (0, 1) for dj in (0, 1)]
        tiles = e.op("Reshape", [e.op("Concat", shifts, axis=1), e.ints("tiles", [0, 16, c * h * wd])])
        v = e.op("Reshape", [e.op("MatMul", [e.const("input_transform", pick.astype(np.float32)), tiles]),
                             e.ints("by_position", [0, 16, c, h * wd])])
        u = np.einsum("ai,bj,kcij->abkc", G, G, w).reshape(16, k, c).astype(np.float32)
        m = e.op("Reshape", [e.op("MatMul", [e.const("weights", u), v]), e.ints("products", [0, 16, k * h * wd])])
        out = np.einsum("ia,jb->ijab", AT, AT).reshape(4, 16).astype(np.float32)
        y = e.op("Reshape", [e.op("MatMul", [e.const("output_transform", out), m]), e.ints("blocks", [0, 4 * k, h, wd])])
        bias = g.constants[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else np.zeros(k, np.float32)
        e.op("Add", [e.op("DepthToSpace", [y], blocksize=2, mode="DCR"), e.const("bias", bias.reshape(1, k, 1, 1))],
             conv.output[0])
        pixels = 4 * h * wd
        return e, Applied(self.name, conv.name, (conv.name,), tuple(n.name for n in e.nodes),
                          9 * k * c * pixels, 4 * k * c * pixels + 64 * c * h * wd + 64 * k * h * wd)


def at_example_shape(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for i in fixed.graph.input:
        for d, n in zip(i.type.tensor_type.shape.dim, shapes[i.name]):
            d.Clear()
            d.dim_value = n
    del fixed.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(fixed)


def weight_mb(model: onnx.ModelProto) -> float:
    return sum(np.prod(i.dims) * 4 for i in model.graph.initializer) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="segnet,unet", help="comma-separated zoo variants (default: segnet,unet)")
    parser.add_argument("--min-channels", type=int, default=256, help="rewrite convolutions this wide, in and out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    contenders, rows = {}, {}
    for variant in args.variants.split(","):
        model = Exportable(models.create(variant), models.spec(variant)).eval()
        feeds = golden_inputs(model.spec, 2, 0)
        one = {k: v[:1] for k, v in feeds.items()}
        with tempfile.TemporaryDirectory() as work:
            made = make_fp32_artifacts(model, feeds, Path(work), 20, ())
            graph = at_example_shape(onnx.load(str(made.onnx)), {k: v.shape for k, v in one.items()})
        rewritten, applied = apply_rewrites(graph, (Winograd(args.min_channels),))
        outputs = {}
        for when, g in (("build", graph), ("winograd", rewritten)):
            for backend in ("onnxruntime", "openvino"):
                contenders[f"{variant} {backend} {when}"] = (Session(g, backend, args.threads), one)
            outputs[when] = next(iter(contenders[f"{variant} onnxruntime {when}"][0].infer(one).values()))
        moved = np.abs(outputs["winograd"] - outputs["build"]).max() / np.abs(outputs["build"]).max()
        rows[variant] = (len(applied), moved, weight_mb(graph), weight_mb(rewritten))
    stats = bench_interleaved({k: r for k, (r, _) in contenders.items()}, None, warmup=5, runs=args.runs, rounds=10,
                              feeds_of={k: f for k, (_, f) in contenders.items()})
    print(f"batch 1, {args.threads} threads, FP32, p50 ms of {args.runs} interleaved runs each; "
          f"F(2x2, 3x3) on dense 3x3 convolutions of at least {args.min_channels} channels in and out")
    print(f"{'variant':10} {'convs':>5} {'moved':>8} {'weights MB':>15} | {'ONNX Runtime':>12} {'winograd':>8} "
          f"{'ratio':>6} | {'OpenVINO':>8} {'winograd':>8} {'ratio':>6}")
    for variant, (n, moved, before_mb, after_mb) in rows.items():
        row = f"{variant:10} {n:5d} {moved:8.1e} {before_mb:6.1f} -> {after_mb:5.1f} |"
        for backend, width in (("onnxruntime", 12), ("openvino", 8)):
            b, a = (stats[f"{variant} {backend} {w}"]["p50_ms"] for w in ("build", "winograd"))
            row += f" {b:{width}.2f} {a:8.2f} {b / a:5.2f}x |"
        print(row)


if __name__ == "__main__":
    main()
