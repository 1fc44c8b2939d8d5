"""Wide 3x3 convolutions as Winograd's F(2x2, 3x3), where the build's machine runs them faster.

A dense 3x3 convolution at stride 1, padded by 1, computes each 2x2 block of its output from a
4x4 tile of its input (Lavin and Gray, 2016):

    Y = A^T [ (G g G^T) * (B^T d B) ] A

16 products per tile and pair of channels where the convolution does 36: 4 mult-adds per output
pixel and weight instead of 9. `Winograd` writes it with operators every backend runs fast:

- the input transform B^T d B as one grouped convolution (a 4x4 kernel at stride 2, padded by 1,
  16 outputs per input channel, taps 0 and +-1: exact; the file holds one channel's, tiled at load),
  reshaped to [B, 16, C, tiles];
- the 16 products by the transformed weights U = G g G^T [16, K, C], one batched matrix product;
- the output transform A^T m A as one matrix product over the 16 positions, and a depth-to-space.

The ONNX graph keeps the 3x3 kernels: U is a matrix product of them by a constant, which ONNX Runtime
folds when it loads the graph, so `model.onnx` does not grow. OpenVINO's converter folds it when it
converts, so its IR stores U, 16/9 the size of the kernels it replaces.

Why it is timed. The gain depends on the backend, the CPU and the sizes: on an AMD EPYC (Zen 4,
AVX-512), SegNet ran 1.21x faster on OpenVINO and 1.17x on ONNX Runtime with its ten convolutions of
256 channels and more rewritten, slower on OpenVINO with its 128-channel ones as well, and the
standard hourglass's two deepest (256 to 512 channels at 8x8, 512 to 1024 at 4x4) ran 0.82x to 0.97x.
So only convolutions of at least `MIN_CHANNELS` in and out at sides known to be even are matched, and
the build keeps the rewrite only where the rewritten graph runs faster on every backend that runs the
ONNX graph, by more than `runtime.tune.MARGIN` at p50 with the bootstrap interval confirming it
(`choose`), as it chooses the backends' settings; the manifest's `rewrites.winograd` holds what it
measured. An INT8 build is not offered it (its plans are made from this graph, and INT8 rounding in
the transformed domain is larger), nor one under a memory budget (the runtimes hold U).

Why 2x2 blocks. F(4x4, 3x3) (`Winograd(m=4)`: 6x6 tiles at stride 4, 2.25 mult-adds where F(2x2)
does 4) is written the same way, and `benchmarks/winograd.py` times it beside F(2x2). Its U is 36/9
the kernels' size, so the runtimes hold four times the weights of what it rewrites; its transforms
round more (values up to 8); and it needs sides known to be multiples of 4, which leaves out 6 of
SegNet's 10 wide convolutions (it then ran SegNet slower than F(2x2) on all 10). Padded to whole
tiles so that all 10 matched, it ran 3% to 5% faster than F(2x2) while the runtimes held 231 MB of
weights against 105: not a trade for a device.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from runtime.bench import bench_interleaved, difference
from runtime.spec import ModelSpec
from runtime.tune import MARGIN

from .rewrite import Applied, Emitter, Graph, _dense_3x3, _multiple, apply_rewrites

MIN_CHANNELS = 256  # narrower convolutions ran slower as F(2x2, 3x3) on OpenVINO (SegNet's 128-channel ones)

# Y = A^T [(G g G^T) * (B^T d B)] A over (m+2)x(m+2) input tiles d, for m x m output blocks (Lavin and Gray)
TRANSFORMS = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])),
}


class Winograd:
    """A dense 3x3 convolution (stride 1, padded by 1, at least `min_channels` in and out, at sides known
    to be multiples of m) as F(m x m, 3x3): m = 2, the build's, or 4 (`benchmarks/winograd.py` compares them)."""

    name = "winograd"

    def __init__(self, min_channels: int = MIN_CHANNELS, m: int = 2):
        self.min_channels, self.m = min_channels, m

    def matches(self, g: Graph) -> list[onnx.NodeProto]:
        return [n for n in g.model.graph.node if n.op_type == "Conv" and self._wide(g, n)]

    def _wide(self, g: Graph, conv: onnx.NodeProto) -> bool:
        shape = g.shapes.get(conv.input[0], [])
        return (_dense_3x3(g, conv) and min(g.constants[conv.input[1]].shape[:2]) >= self.min_channels
                and len(shape) == 4 and all(_multiple(d, self.m) for d in shape[2:]))

    def emit(self, g: Graph, conv: onnx.NodeProto) -> tuple[Emitter, Applied]:
        k, c = g.constants[conv.input[1]].shape[:2]
        m = self.m
        t, bt, gm, at = m + 2, *TRANSFORMS[m]  # input tiles of t x t
        p = t * t  # products per tile and pair of channels
        e = Emitter(f"{conv.name}/{self.name}")
        # B^T d B for every tile: output channel p c + (t a + b) of a grouped convolution over channel c
        taps = np.einsum("ai,bj->abij", bt, bt).reshape(p, 1, t, t).astype(np.float32)
        per_channel = e.op("Tile", [e.const("input_transform", taps), e.ints("channels", [c, 1, 1, 1])])  # folded at load
        tiles = e.op("Conv", [conv.input[0], per_channel], group=c, kernel_shape=[t, t], strides=[m, m], pads=[1, 1, 1, 1])
        sides = e.op("Slice", [e.op("Shape", [tiles]), e.ints("sides_from", [2]), e.ints("sides_to", [4])])
        v = e.op("Transpose", [e.op("Reshape", [tiles, e.ints("by_channel", [0, c, p, -1])])], perm=[0, 2, 1, 3])
        # U = G g G^T of the 3x3 kernels, a constant expression the runtimes fold at load
        gg = np.einsum("ai,bj->ijab", gm, gm).reshape(9, p).astype(np.float32)
        kernels = e.op("Reshape", [conv.input[1], e.ints("kernels", [k * c, 9])])
        u = e.op("Reshape", [e.op("Transpose", [e.op("MatMul", [kernels, e.const("weight_transform", gg)])], perm=[1, 0]),
                             e.ints("by_position", [p, k, c])])
        products = e.op("Reshape", [e.op("MatMul", [u, v]), e.ints("products", [0, p, -1])])  # [B, p, K * tiles]
        out = np.einsum("ia,jb->ijab", at, at).reshape(m * m, p).astype(np.float32)  # A^T m A, by block position
        y = e.op("Reshape", [e.op("MatMul", [e.const("output_transform", out), products]),
                             e.op("Concat", [e.ints("blocks", [0, m * m * k]), sides], axis=0)])
        bias = g.constants[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else np.zeros(k, np.float32)
        e.op("Add", [e.op("DepthToSpace", [y], blocksize=m, mode="DCR"), e.const("bias", bias.reshape(1, k, 1, 1))],
             conv.output[0])
        return e, Applied(self.name, conv.name, (conv.name,), tuple(n.name for n in e.nodes), 0, 0,
                          f"{c}->{k} channels: 9 -> {p / m**2:g} mult-adds per output pixel and weight (F({m}x{m}, 3x3))")


@dataclass(frozen=True)
class Timing:
    """How the build may time a choice: on which backends' runners (those that run the ONNX graph),
    with how many threads, for how many seconds of timed calls per backend; or why it may not (`refused`)."""

    backends: Sequence[Any] = ()  # the runtime halves of the backend plugins (`runtime.backends.base.Backend`)
    threads: int | None = None
    budget: float = 0.0
    refused: str = ""

    @property
    def why_not(self) -> str:
        """Why nothing is timed ('' where it is)."""
        return self.refused or ("" if self.backends else "no backend to time it on")


def choose(model: onnx.ModelProto, spec: ModelSpec, feeds: Mapping[str, np.ndarray],
           timing: Timing) -> tuple[onnx.ModelProto, list[Applied], dict[str, Any]]:
    """`model`, with every match of `Winograd` rewritten where the rewritten graph runs faster on every
    backend of `timing` (on `feeds`, one image), else as it is; what was applied; and the record of
    what was measured (or why nothing was: `timing.why_not`)."""
    matched = len(Winograd().matches(Graph.of(model)))  # counted without rewriting: most builds stop here
    record: dict[str, Any] = {"min_channels": MIN_CHANNELS, "convolutions": matched, "margin": MARGIN, "kept": False}
    if not matched or timing.why_not:
        return model, [], {**record, **({"not_timed": timing.why_not} if matched else {})}
    rewritten, applied = apply_rewrites(model, (Winograd(),))
    outputs = [{"name": n} for n in spec.outputs]
    measured = {}
    with tempfile.TemporaryDirectory(prefix="winograd-") as work:
        files = {}
        for name, graph in (("as built", model), ("winograd", rewritten)):
            files[name] = Path(work) / f"{name.replace(' ', '-')}.onnx"
            onnx.save(graph, str(files[name]))
        for backend in timing.backends:
            with contextlib.ExitStack() as opened:
                runners = {name: opened.enter_context(backend.runner(f, spec.inputs, outputs, "fp32", timing.threads))
                           for name, f in files.items()}
                times: dict[str, list[float]] = {}
                stats = bench_interleaved(runners, feeds, warmup=2, runs=200, rounds=5, max_seconds=timing.budget,
                                          times=times)
            versus = difference(times["as built"], times["winograd"], stats["winograd"]["others_cores"])
            p50 = {n: stats[n]["p50_ms"] for n in files}
            measured[backend.name] = {"p50_ms": p50, "runs": stats["winograd"]["runs"],
                                      "speedup": p50["as built"] / p50["winograd"],
                                      "faster": versus["real"] and p50["winograd"] < (1 - MARGIN) * p50["as built"],
                                      "versus": versus}
    record.update(backends=measured, kept=all(m["faster"] for m in measured.values()))
    return (rewritten, applied, record) if record["kept"] else (model, [], record)
