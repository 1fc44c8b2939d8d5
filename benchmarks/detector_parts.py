"""Where the dsc detector's time goes, part by part, before and after the graph rewrites, in one interleaved
run, and how far each part is from its roofline.

    python benchmarks/detector_parts.py [--variant dsc] [--threads 2] [--runs 100] [--plot roofline.png]

Exports the variant twice as a build does (simplified; then once more with the
graph rewrites of `export.rewrite`), cuts each graph into its parts at the
same tensors (the anti-aliased resize, the hourglass, the keypoint head, the
Jacobian head with its heatmap-weighted contraction, the keypoint extraction),
and times every part and both whole graphs on ONNX Runtime and OpenVINO
(FP32, batch 1), interleaved. Prints p50 per part, before and after side by
side, with the ratio and each part's mult-adds; then each part's place under
the machine's roofline (`export.lab.roofline`, the roofs measured in the same
run): compute- or memory-bound, the time its bound allows, and each backend's
share of that bound and gap to it in ms. `--plot` draws the parts, before and
after, on the roofline.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
from onnx.utils import Extractor

import models
from export.artifacts import make_fp32_artifacts
from export.contract import Exportable
from export.golden import golden_inputs
from export.lab import roofline
from runtime.bench import bench_interleaved

PARTS = {"down": "resize (anti-aliased)", "predictor": "hourglass", "kp": "keypoint head",
         "jacobian": "Jacobian head + contraction", None: "keypoint extraction"}


class Session:
    """`infer(feeds)` of a graph on a backend, FP32; OpenVINO's compiled at `shapes` (by input) where given."""

    def __init__(self, model: onnx.ModelProto, backend: str, threads: int, shapes: dict | None = None):
        self.inputs = [i.name for i in model.graph.input]
        if backend == "onnxruntime":
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            self.run = lambda feeds: dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        else:
            graph = ov.Core().read_model(model.SerializeToString(), b"")
            if shapes:
                graph.reshape({port: list(shapes[port.get_any_name()]) for port in graph.inputs})
            compiled = ov.Core().compile_model(graph, "CPU", {
                "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
            request = compiled.create_infer_request()
            names = [o.get_any_name() for o in compiled.outputs]
            self.run = lambda feeds: dict(zip(names, request.infer(feeds).values()))

    def infer(self, feeds):
        return self.run({k: feeds[k] for k in self.inputs})


def parts_of(model: onnx.ModelProto, modules: dict[str, str], contraction: set[str]) -> dict:
    """Part -> (input tensors, output tensors): nodes grouped by top-level module, the nodes in
    `contraction` (the weighted sum the rewrite folds in) counted with the Jacobian head."""
    part_of = {}
    for node in model.graph.node:
        module = modules.get(node.name)
        part_of[node.name] = "jacobian" if node.name in contraction else module.split(".")[0] if module else None
    constants = {i.name for i in model.graph.initializer}
    made = {}
    for node in model.graph.node:  # what only reads the Jacobian head's values (its final reshape) is its own
        reads = {made.get(i, "input") for i in node.input if i and i not in constants}
        if part_of[node.name] is None and reads == {"jacobian"}:
            part_of[node.name] = "jacobian"
        made.update(dict.fromkeys(node.output, part_of[node.name]))
    graph_outputs = {o.name for o in model.graph.output}
    io = defaultdict(lambda: (set(), set()))
    for node in model.graph.node:
        part = part_of[node.name]
        for i in node.input:
            if i and i not in constants and made.get(i, "input") != part:
                io[part][0].add(i)
                if i in made:
                    io[made[i]][1].add(i)
        io[part][1].update(o for o in node.output if o in graph_outputs)
    return {p: (sorted(ins), sorted(outs)) for p, (ins, outs) in io.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="dsc")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--plot", type=Path, help="write the parts on the roofline to this PNG")
    args = parser.parse_args()

    model = Exportable(models.create(args.variant), models.spec(args.variant)).eval()
    feeds = golden_inputs(model.spec, 2, 0)
    with tempfile.TemporaryDirectory() as work:
        graphs, records = {}, {}
        for when, rewrites in (("before", False), ("after", True)):
            (Path(work) / when).mkdir()
            made = make_fp32_artifacts(model, feeds, Path(work) / when, 20, (), rewrites=rewrites)
            graphs[when], records[when] = (onnx.load(str(made.onnx)), made.modules), made.rewrites
    replaced = {n for a in records["after"]["applied"] if a["rewrite"] == "reduce-before-conv" for n in a["replaced"]}
    one = {k: v[:1] for k, v in feeds.items()}
    contenders, feeds_of, work_of, place_of = {}, {}, {}, {}
    for when, (graph, modules) in graphs.items():
        parts = parts_of(graph, modules, replaced if when == "before" else set())
        values = dict(one)  # every boundary tensor, from the parts in order
        pending = dict(parts)
        while pending:
            part, (ins, outs) = next((p, io) for p, io in pending.items() if all(i in values for i in io[0]))
            sub = Extractor(graph).extract_model(ins, outs)
            values.update(Session(sub, "onnxruntime", args.threads).infer(values))
            for backend in ("onnxruntime", "openvino"):
                contenders[(when, backend, part)] = Session(sub, backend, args.threads)
                feeds_of[(when, backend, part)] = {i: values[i] for i in ins}
            work_of[(when, part)] = mult_adds(sub)
            place_of[(when, part)] = roofline.graph_work(sub)
            del pending[part]
        for backend in ("onnxruntime", "openvino"):
            contenders[(when, backend, "whole")] = Session(graph, backend, args.threads)
            feeds_of[(when, backend, "whole")] = one
        work_of[(when, "whole")] = mult_adds(graph)
        place_of[(when, "whole")] = roofline.graph_work(graph)
    roofs = roofline.measure(args.threads)  # the roofs, measured just before the times they judge
    place_of = {k: roofline.place(w.values(), roofs) for k, w in place_of.items()}
    names = {k: " ".join(map(str, k)) for k in contenders}
    stats = bench_interleaved({names[k]: r for k, r in contenders.items()}, None, warmup=10, runs=args.runs,
                              rounds=10, feeds_of={names[k]: f for k, f in feeds_of.items()})
    print(f"{args.variant}, batch 1, {args.threads} threads, FP32, p50 ms of {stats[names[next(iter(contenders))]]['runs']} "
          "interleaved runs each; mult-adds from the graph's Conv/ConvTranspose/MatMul/Gemm")
    print(f"{'part':32} {'M mult-adds':>17} | {'ONNX Runtime before':>20} {'after':>7} {'ratio':>6} | "
          f"{'OpenVINO before':>16} {'after':>7} {'ratio':>6}")
    for part in [*PARTS, "whole"]:
        row = f"{PARTS.get(part, 'whole detector'):32} {work_of[('before', part)] / 1e6:7.1f} -> {work_of[('after', part)] / 1e6:6.1f} |"
        for backend in ("onnxruntime", "openvino"):
            b, a = (stats[names[(w, backend, part)]]["p50_ms"] for w in ("before", "after"))
            row += f" {b:{20 if backend == 'onnxruntime' else 16}.3f} {a:7.3f} {b / a:5.2f}x |"
        print(row.rstrip("|"))
    for backend in ("onnxruntime", "openvino"):
        summed = {w: sum(stats[names[(w, backend, p)]]["p50_ms"] for p in PARTS) for w in ("before", "after")}
        print(f"{backend}: parts sum to {summed['before']:.2f} ms before, {summed['after']:.2f} ms after")
    print_roofline(roofs, place_of, lambda when, backend, part: stats[names[(when, backend, part)]]["p50_ms"])
    if args.plot:
        points = {f"{PARTS.get(part, 'whole')} ({when}, {short})": (
                      place_of[(when, part)].intensity,
                      place_of[(when, part)].achieved(stats[names[(when, backend, part)]]["p50_ms"]))
                  for when in ("before", "after") for part in [*PARTS, "whole"]
                  for backend, short in (("onnxruntime", "ORT"), ("openvino", "OV"))
                  if when == "after" or work_of[("before", part)] != work_of[("after", part)]}
        roofline.plot(points, roofs, args.plot, f"{args.variant}: its parts on this machine's roofline, "
                                                f"{args.threads} threads, FP32")
        print(f"plot: {args.plot}")


def print_roofline(roofs: roofline.Roofs, place_of: dict, ms) -> None:
    """Each part's bound and each backend's share of it (bound / measured) and gap (measured - bound)."""
    copies = ", ".join(f"{size / 2**20:g} MiB {rate:.0f}" for size, rate in sorted(roofs.bandwidth.items()))
    print(f"\nroofline: FP32 matmul peak {roofs.gflops:.0f} GFLOP/s; copy bandwidth GB/s: {copies}; "
          "work and bytes counted on the graph that runs")
    print(f"{'part':32} {'':6} {'bound':>7} {'GFLOP':>6} {'MB':>6} {'flop/B':>6} {'bound ms':>8} | "
          f"{'ONNX Runtime share':>18} {'gap ms':>6} | {'OpenVINO share':>14} {'gap ms':>6}")
    for part in [*PARTS, "whole"]:
        for when in ("before", "after"):
            p = place_of[(when, part)]
            row = (f"{PARTS.get(part, 'whole detector'):32} {when:6} {p.bound:>7} {p.flops / 1e9:6.3f} "
                   f"{p.bytes / 1e6:6.2f} {p.intensity:6.1f} {p.bound_ms:8.3f} |")
            for backend, width in (("onnxruntime", 18), ("openvino", 14)):
                t = ms(when, backend, part)
                row += f" {p.share(t):{width}.0%} {p.gap_ms(t):6.2f} |"
            print(row.rstrip("|"))


def mult_adds(model: onnx.ModelProto) -> int:
    """Mult-adds of the Conv, ConvTranspose, MatMul and Gemm nodes at batch 1, from inferred shapes."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shape = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    shape.update({i.name: list(i.dims) for i in model.graph.initializer})
    total = 0
    for node in model.graph.node:
        out = shape.get(node.output[0])
        if out is None:
            continue
        if node.op_type == "Conv":
            w = shape[node.input[1]]
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":  # every input pixel times the weights
            total += int(np.prod(shape[node.input[0]])) * int(np.prod(shape[node.input[1]][1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            total += int(np.prod(out)) * shape[node.input[0]][-1]
    return total


if __name__ == "__main__":
    main()
