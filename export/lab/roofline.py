"""The roofline of the machine a figure is measured on, and each part's place under it.

Two roofs, measured in the same run as the times they judge: the FP32 matrix-multiply
rate (`matmul_peak`) and the rate of a copy (`bandwidth`) at several sizes, from one
that fits in the cores' own caches to one that only main memory holds. A node is held
to the bandwidth of the smallest copy its bytes fit in, so a layer whose tensors stay in
cache is not excused by main memory's speed.

Work and bytes are counted node by node on the ONNX graph that runs (after the graph
rewrites), at batch 1, not on the PyTorch module, so a rewritten graph is held to the
work it still does:

- work: 2 flops per multiply-add of Conv, ConvTranspose, MatMul and Gemm; one per
  output element for every other op that computes (norms, activations, pooling,
  resizes, unpooling); none for the ops that only reshape (`MOVES_NOTHING`);
- bytes: what a node reads (its tensors and its weights) and writes, at their element
  size. An elementwise op whose only tensor input is the output of one node, which no
  other node reads, is an epilogue every backend here fuses into that node: its
  output replaces the producer's and it moves nothing more. Reshapes move nothing.
- a node that reads only constants (Winograd's weight transform) is folded when the
  runtimes load the graph: it does no work, and its output is a weight of its readers.

A node's bound is the longer of its work at the peak and its bytes at its bandwidth; a
part's bound is its nodes' bounds summed, and the part is compute-bound when its
compute-limited nodes make the larger share of that sum. What a figure shows: the
share of the bound a measured time achieves (bound / measured) and the gap, measured
minus bound, in milliseconds: how much the part could still gain on this machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import onnx
import torch
from onnx import helper

from runtime.bench import latency_stats

from ..rewrite import run_exposing

from .harness import matmul_peak

GEMM_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
MOVES_NOTHING = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Constant", "Dropout"}
ELEMENTWISE = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
               "Mul", "Add", "Sub", "Div", "BatchNormalization", "Cast"}
COPY_MIB = (2, 16, 512)  # the cores' own caches, the shared cache, main memory (a smaller copy times the call)


@dataclass(frozen=True)
class Roofs:
    """The machine's two roofs: FP32 GFLOP/s, and GB/s of a copy per size in bytes."""

    gflops: float
    bandwidth: dict[int, float]
    threads: int
    peak: dict[str, Any]  # how the peak was measured (`matmul_peak`)

    def gbytes_s(self, nbytes: int) -> float:
        """The bandwidth of the smallest measured copy that `nbytes` fit in (main memory's above all)."""
        fits = [size for size in sorted(self.bandwidth) if nbytes <= size]
        return self.bandwidth[fits[0] if fits else max(self.bandwidth)]

    @property
    def ridge(self) -> float:
        """flop per byte where main memory's roof meets the peak."""
        return self.gflops / self.bandwidth[max(self.bandwidth)]

    def to_dict(self) -> dict[str, Any]:
        return {"gflops": self.gflops, "threads": self.threads, "peak": self.peak,
                "bandwidth_gb_s": {f"{size / 2**20:g} MiB": rate for size, rate in sorted(self.bandwidth.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Roofs":
        return cls(d["gflops"], {int(float(k.split()[0]) * 2**20): v for k, v in d["bandwidth_gb_s"].items()},
                   d["threads"], d["peak"])


def bandwidth(threads: int, sizes_mib: Iterable[float] = COPY_MIB, seconds: float = 0.3) -> dict[int, float]:
    """GB/s of `dst.copy_(src)` with `threads` threads, bytes read plus written, per size (the
    median of about `seconds` of copies each); a size is the bytes a copy reads and writes."""
    torch.set_num_threads(threads)
    rates = {}
    for mib in sizes_mib:
        nbytes = int(mib * 2**20)
        src = torch.rand(nbytes // 8)  # half read, half written
        dst = torch.empty_like(src)
        dst.copy_(src)
        repeat = max(1, int(2**24 // nbytes))  # calls per sample: a sample of a small copy lasts long enough to time
        samples = []
        deadline = time.perf_counter() + seconds
        while len(samples) < 5 or time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(repeat):
                dst.copy_(src)
            samples.append((time.perf_counter() - start) * 1e3 / repeat)
        rates[nbytes] = nbytes / latency_stats(samples)["p50_ms"] / 1e6
    return rates


def measure(threads: int) -> Roofs:
    """Both roofs of this machine, now."""
    peak = matmul_peak(threads)
    return Roofs(peak["gflops"], bandwidth(threads), threads, peak)


@dataclass(frozen=True)
class NodeWork:
    name: str
    op: str
    flops: int
    bytes: int


def graph_work(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | None = None) -> dict[str, NodeWork]:
    """Each node's flops and bytes, as the module docstring counts them: at the shapes of one
    inference on `feeds` (batch 1 is the figure to quote), else at the shapes ONNX's inference
    gives with every dimension it leaves open taken as 1 (a graph of static sizes but the batch)."""
    shapes, sizes = _run_shapes(model, feeds) if feeds is not None else _inferred_shapes(model)
    constants = set()
    for init in model.graph.initializer:
        shapes[init.name], sizes[init.name] = list(init.dims), helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        constants.add(init.name)
    folded = set()
    for node in model.graph.node:  # in graph order: a constant expression's inputs come first
        if all(i in constants for i in node.input if i):  # a Constant, or computed from constants at load
            constants.update(node.output)
            folded.add(node.name)

    def nbytes(name: str) -> int:
        return int(np.prod(shapes.get(name, [0]))) * sizes.get(name, 4)

    readers: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in model.graph.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    work = {}
    for node in model.graph.node:
        out = shapes.get(node.output[0], [0])
        elements = int(np.prod(out))
        if node.op_type in MOVES_NOTHING or node.name in folded:
            work[node.name] = NodeWork(node.name, node.op_type, 0, 0)
            continue
        if node.op_type == "Conv":
            flops = 2 * elements * int(np.prod(shapes[node.input[1]][1:]))
        elif node.op_type == "ConvTranspose":  # every input pixel times the weights
            flops = 2 * int(np.prod(shapes[node.input[0]])) * int(np.prod(shapes[node.input[1]][1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            flops = 2 * elements * shapes[node.input[0]][-1]
        else:
            flops = elements
        tensors = [i for i in node.input if i and i not in constants]
        weights = sum(nbytes(i) for i in node.input if i in constants)
        written = sum(nbytes(o) for o in node.output if o)
        fused = (node.op_type in ELEMENTWISE and len(tensors) == 1 and tensors[0] in producer
                 and readers.get(tensors[0]) == 1 and tensors[0] not in outputs
                 and producer[tensors[0]].op_type not in MOVES_NOTHING)
        moved = weights if fused else weights + sum(nbytes(i) for i in tensors) + written
        if fused:  # the producer wrote this node's output instead of its own: the same bytes
            moved += max(0, written - nbytes(tensors[0]))
        work[node.name] = NodeWork(node.name, node.op_type, flops, moved)
    return work


def _inferred_shapes(model: onnx.ModelProto) -> tuple[dict[str, list[int]], dict[str, int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes, sizes = {}, {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = v.type.tensor_type
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        sizes[v.name] = helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize if t.elem_type else 4
    return shapes, sizes


def _run_shapes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Every tensor's shape and element size in one inference (every node's output made a graph
    output): exact where the graph computes its own shapes, as SegNet's unpooling does."""
    values = run_exposing(model, [o for node in model.graph.node for o in node.output if o], feeds)
    values.update(feeds)
    return ({k: list(np.shape(v)) for k, v in values.items()},
            {k: np.asarray(v).dtype.itemsize for k, v in values.items()})


@dataclass(frozen=True)
class Place:
    """A part under the roofline: its work, its bytes, and the time the roofs allow it."""

    flops: int
    bytes: int
    compute_ms: float  # the bound of its compute-limited nodes
    memory_ms: float  # ... and of its memory-limited ones

    @property
    def bound_ms(self) -> float:
        return self.compute_ms + self.memory_ms

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"

    @property
    def intensity(self) -> float:
        """flop per byte moved"""
        return self.flops / self.bytes if self.bytes else float("inf")

    def share(self, measured_ms: float) -> float:
        return self.bound_ms / measured_ms

    def gap_ms(self, measured_ms: float) -> float:
        return measured_ms - self.bound_ms

    def achieved(self, measured_ms: float) -> float:
        """GFLOP/s of the graph's own work"""
        return self.flops / measured_ms / 1e6

    def to_dict(self, measured_ms: float | None = None) -> dict[str, Any]:
        d = {"gflop": self.flops / 1e9, "mbytes": self.bytes / 1e6, "bound": self.bound,
             "bound_ms": self.bound_ms, "intensity": self.intensity}
        if measured_ms is not None:
            d.update(measured_ms=measured_ms, share=self.share(measured_ms), gap_ms=self.gap_ms(measured_ms),
                     gflops=self.achieved(measured_ms))
        return d


def place(nodes: Iterable[NodeWork], roofs: Roofs) -> Place:
    compute = memory = 0.0
    flops = moved = 0
    for n in nodes:
        c = n.flops / roofs.gflops / 1e6
        m = n.bytes / roofs.gbytes_s(n.bytes) / 1e6
        compute, memory = (compute + c, memory) if c >= m else (compute, memory + m)
        flops, moved = flops + n.flops, moved + n.bytes
    return Place(flops, moved, compute, memory)


def parts(modules: Mapping[str, str]) -> dict[str, str]:
    """node -> its part: the path of the module it was made in, cut at the first depth where
    the model splits (a model whose top level is one module, as `net`, is cut inside it)."""
    paths = [p.split(".") for p in modules.values()]
    depth = 1
    while paths and len({tuple(p[:depth]) for p in paths}) == 1 and any(len(p) > depth for p in paths):
        depth += 1
    return {node: ".".join(path.split(".")[:depth]) for node, path in modules.items()}


def places(work: Mapping[str, NodeWork], part_of: Mapping[str, str | None], roofs: Roofs) -> dict[str | None, Place]:
    """Each part's place, the nodes grouped by `part_of` (node -> part)."""
    grouped: dict[str | None, list[NodeWork]] = {}
    for name, w in work.items():
        grouped.setdefault(part_of.get(name), []).append(w)
    return {part: place(nodes, roofs) for part, nodes in grouped.items()}


def plot(points: Mapping[str, tuple[float, float]], roofs: Roofs, path, title: str) -> None:
    """Parts on the roofline: label -> (flop per byte, achieved GFLOP/s), under the peak and
    each measured bandwidth's roof."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {k: v for k, v in points.items() if np.isfinite(v[0]) and v[0] > 0 and v[1] > 0}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    lo = min([0.1, *(i for i, _ in shown.values())]) / 2
    hi = max([roofs.ridge * 4, *(i for i, _ in shown.values())]) * 2
    x = np.geomspace(lo, hi, 200)
    for size, rate in sorted(roofs.bandwidth.items()):
        ax.plot(x, np.minimum(roofs.gflops, rate * x), lw=1, label=f"copy of {size / 2**20:g} MiB: {rate:.0f} GB/s")
    ax.axhline(roofs.gflops, color="black", lw=1.5, label=f"FP32 matmul peak: {roofs.gflops:.0f} GFLOP/s")
    for label, (intensity, rate) in shown.items():
        ax.scatter(intensity, rate, zorder=3)
        ax.annotate(label, (intensity, rate), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="flop per byte moved (the graph as it runs)",
           ylabel="achieved GFLOP/s", title=title)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
