"""Stage: graph rewrites that compute the same function with less work.

Run on the simplified ONNX graph, before conversion, so every backend gets
them; each is exact up to float rounding and checked against the graph it
came from on the golden inputs and on random ones (`check`). What a
rewrite changed is recorded in the manifest (`rewrites`).

The rewrites are algebra a JIT compiler does not do, matched on ops and
static shapes, never on names, so a user's model with the same computation
gets them too:

`ReduceBeforeConv`: FOMM's keypoint detector, and any model with the same
shape of computation, computes a Jacobian map with a convolution
`Y = conv(X, W) + b` of K*C' channels and uses it only through a heatmap-
weighted sum over the positions p: `J[b,k,c'] = sum_p Y[b, k*C'+c', p] U[b,k,p]`.
Because the convolution is linear,

    J[b,k,c'] = sum_{c,d} W[k*C'+c', c, d] Z[b,k,c,d] + b[k*C'+c'] sum_p U[b,k,p]
    Z[b,k,c,d] = sum_p X[b, c, p+d] U[b,k,p]

Z correlates the features with the heatmap as a data-dependent kernel:
about K*C*kh*kw*Ho*Wo mult-adds instead of the convolution's K*C'*C*kh*kw*Ho*Wo,
C' times less work (4x for a 2x2 Jacobian). Z is one batched matrix product
(see `_correlate`) per image of the batch, so any batch size runs it without
cross-batch work. Matched: MatMul(Reshape(Conv) [B,K,C',P], U [B,K,P,1]) (the
zoo's detectors) and ReduceSum(Mul(Reshape(Conv) [B,K,C',P], U [B,K,1,P]), -1)
(the published FOMM code's broadcast multiply-and-sum).

`SeparableDepthwise`: a depthwise convolution whose kernels are outer products
(a Gaussian blur) as a column pass, then a row pass.

`UpsampleIntoConv`: a nearest x2 upsampling followed by a dense 3x3 convolution
(the standard hourglass's up-blocks). Each output pixel reads a 3x3 window of
the upsampled tensor, which is a 2x2 window of the input whose taps are sums
of the 3x3 weights, one set for each position of the pixel in its 2x2 block:
a transposed 4x4 convolution at stride 2, padded by 1. 16 mult-adds per input
pixel and weight where there were 36, and no upsampled tensor is written or
read. Four 2x2 convolutions interleaved by a depth-to-space compute the same,
1-5% faster, but OpenVINO's INT8 transformations fail on a depth-to-space
after per-channel dequantization; the transposed convolution is one op every
backend quantizes. A depthwise 3x3 is left alone: transposed, both backends
ran it slower (dsc: 1.5x on OpenVINO, 1.7x on ONNX Runtime).

`TransposedIntoConv`: a U-Net's up-step, a 2x2 transposed convolution at
stride 2 joined to the skip and read by a dense 3x3 convolution. Over a join
the convolution is the sum of its parts over each joined tensor, and its part
over the up-sampled channels composes with the transposed convolution into one
transposed 4x4 convolution at stride 2 (the same taps as `UpsampleIntoConv`,
now weighted by the 2x2 kernel): 4 C_in K mult-adds per output pixel instead
of C_in C_mid + 9 C_mid K, and the joined tensor is never written. The 2x2's
bias reaches each output through the 3x3 taps that fall inside the picture, a
3x3 convolution of a picture of ones, whatever its size. Applied only where
the fold is less work.

`UnpoolAsMask`: SegNet's max-unpooling, which the exporter writes as a scatter
of the decoder's values into zeros at the flat positions a 2x2 max-pool chose.
Computing those positions takes the pool's index output (OpenVINO runs a
max-pool with indices in its slow reference kernel) and an index arithmetic
only a scatter can use. The same values come from the pooled tensor itself:
a position of a 2x2 window takes the value when it holds the window's maximum
and no earlier position of the window does (the pool's choice on ties), so
the unpooling is a space-to-depth of the pooled input, an equality with the
maximum, a first-of-four mask, a select and a depth-to-space: element-wise
work every backend runs fast, and the pool no longer returns indices.
Matched on the computation: the scatter's indices are checked, by running
that part of the graph, to be the pool's own choice on random inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime.compare import compare
from runtime.backends.onnxruntime import OnnxRuntimeRunner
from runtime.spec import ModelSpec

from .golden import NOISE_DRAWS, one_ulp

# A rewrite reorders sums: the graphs agree to float32 rounding of the reordered sums, that
# is within this bound, or within twice what the original graph's outputs move when its
# inputs move by one float32 ulp (as many draws as the build's, on each input checked), where the graph amplifies
# rounding more (as the build's parity bounds are raised to the reference's noise).
REWRITE_BOUND = 1e-5
RANDOM_CHECKS = 3  # random inputs each rewritten graph is checked on, besides the golden ones


@dataclass(frozen=True)
class Applied:
    """One rewrite at one place: what it replaced, and the work before and after."""

    rewrite: str
    where: str  # the node it rewrote (and the module it was made in, where known)
    replaced: tuple[str, ...]  # the nodes that are gone
    added: tuple[str, ...]  # the nodes that compute the same in their place
    mult_adds_before: int
    mult_adds_after: int
    change: str = ""  # what it changed, where the mult-adds do not say it

    def to_dict(self) -> dict[str, Any]:
        d = {"rewrite": self.rewrite, "where": self.where, "replaced": list(self.replaced),
             "nodes_added": len(self.added), "mult_adds_before": self.mult_adds_before,
             "mult_adds_after": self.mult_adds_after}
        return {**d, "change": self.change} if self.change else d


@dataclass
class Graph:
    """An ONNX model with the lookups a rewrite needs: shapes, producers, consumers, constants."""

    model: onnx.ModelProto
    shapes: dict[str, list[int | str]] = field(default_factory=dict)
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "Graph":
        inferred = onnx.shape_inference.infer_shapes(model)
        g = cls(model)
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            g.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                 for d in vi.type.tensor_type.shape.dim]
        for init in model.graph.initializer:
            g.constants[init.name] = numpy_helper.to_array(init)
            g.shapes[init.name] = list(init.dims)
        for node in model.graph.node:
            for out in node.output:
                g.producer[out] = node
            for i in node.input:
                g.consumers.setdefault(i, []).append(node)
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                g.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        return g

    def static(self, name: str, skip_batch: bool = True) -> list[int] | None:
        """The shape of `name` if every dim (but the batch, with `skip_batch`) is known."""
        shape = self.shapes.get(name)
        if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape[1 if skip_batch else 0:]):
            return None
        return shape

    def only_use(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        outputs = {o.name for o in self.model.graph.output}
        return users[0] if len(users) == 1 and name not in outputs else None


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class Emitter:
    """New nodes and constants for one rewrite, named under a prefix (the replaced node's name;
    the build maps them to that node's module)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        full = f"{self.prefix}/{name}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), full))
        return full

    def ints(self, name: str, values: list[int]) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attributes: Any) -> str:
        self.count += 1
        out = output or f"{self.prefix}/{op_type.lower()}_{self.count}"
        node = helper.make_node(op_type, inputs, [out], name=f"{self.prefix}/{op_type}_{self.count}", **attributes)
        self.nodes.append(node)
        return out


@dataclass(frozen=True)
class _Match:
    conv: onnx.NodeProto
    reshape: onnx.NodeProto
    reduce: tuple[onnx.NodeProto, ...]  # the MatMul, or the Mul and ReduceSum
    features: str  # X
    weights: np.ndarray  # W [K*C', C, kh, kw]
    bias: np.ndarray | None
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    heat: str  # U
    heat_layout: str  # "column" [B,K,P,1] or "row" [B,K,1,P]
    k: int
    c_out: int  # C'
    out_hw: tuple[int, int]
    output: str  # the tensor the reduction wrote
    output_shape: list[int | str]


class ReduceBeforeConv:
    """A convolution used only through a weighted sum over its positions: the sum first."""

    name = "reduce-before-conv"

    def matches(self, g: Graph) -> list[_Match]:
        return [m for m in (self._match(g, node) for node in g.model.graph.node) if m is not None]

    def _match(self, g: Graph, conv: onnx.NodeProto) -> _Match | None:
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in g.constants:
            return None
        a = attrs(conv)
        w = g.constants[conv.input[1]]
        if (w.ndim != 4 or w.dtype != np.float32 or a.get("group", 1) != 1 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                or any(s != 1 for s in a.get("strides", [1, 1])) or any(d != 1 for d in a.get("dilations", [1, 1]))):
            return None
        bias = g.constants.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if len(conv.input) > 2 and conv.input[2] and bias is None:
            return None
        y, x = g.static(conv.output[0]), g.static(conv.input[0])
        reshape = g.only_use(conv.output[0])
        if y is None or x is None or reshape is None or reshape.op_type != "Reshape":
            return None
        r = g.static(reshape.output[0])
        if r is None or len(r) != 4 or r[1] * r[2] != y[1] or r[3] != y[2] * y[3]:
            return None
        k, c_out = r[1], r[2]
        use = g.only_use(reshape.output[0])
        if use is None:
            return None
        if use.op_type == "MatMul" and use.input[0] == reshape.output[0]:
            heat, layout, reduce, out = use.input[1], "column", (use,), use.output[0]
            if g.static(heat) != [g.shapes[heat][0], k, r[3], 1]:
                return None
        elif use.op_type == "Mul":
            other = use.input[1] if use.input[0] == reshape.output[0] else use.input[0]
            summed = g.only_use(use.output[0])
            if summed is None or summed.op_type != "ReduceSum" or g.static(other) != [g.shapes[other][0], k, 1, r[3]]:
                return None
            axes = (g.constants.get(summed.input[1]) if len(summed.input) > 1 else np.asarray(attrs(summed).get("axes", [])))
            if axes is None or [int(v) % 4 for v in np.atleast_1d(axes)] != [3]:
                return None
            heat, layout, reduce, out = other, "row", (use, summed), summed.output[0]
        else:
            return None
        if g.shapes[heat][0] != r[0]:  # the same batch, never a heatmap broadcast over it
            return None
        pads = tuple(a.get("pads", [0, 0, 0, 0]))
        return _Match(conv, reshape, reduce, conv.input[0], w, bias, (pads[0], pads[1], pads[2], pads[3]), heat,
                      layout, k, c_out, (y[2], y[3]), out, g.shapes[out])

    def _correlate(self, e: Emitter, x: str, heat: str, m: _Match) -> str:
        """Z = the features correlated with the heatmap, [B, K, C*kh*kw, 1] in the weights' (c, dy, dx) order.

        One batched matrix product: the heatmap moved right by each dx (kw copies of a
        heatmap, small) against the features' rows dy .. dy+Ho, which channels-last and
        flattened are one contiguous run of Ho*Wp positions (kh slices):
        [B, 1, K*kw, Ho*Wp] @ [B, kh, Ho*Wp, C]. Channels-last is the layout the
        backends' convolutions leave the features in, so reading them costs no reorder."""
        c, kh, kw = m.weights.shape[1:]
        ho, wo = m.out_hw
        hp, wp = ho + kh - 1, wo + kw - 1
        h4 = e.op("Reshape", [heat, e.ints("h4", [0, m.k, ho, wo])])
        shifted = []
        for dx in range(kw):  # the heatmap moved right by dx in the features' width
            p = e.op("Pad", [h4, e.ints(f"pad{dx}", [0, 0, 0, dx, 0, 0, 0, kw - 1 - dx])])
            shifted.append(e.op("Unsqueeze", [p, e.ints("at2", [2]) if not shifted else f"{e.prefix}/at2"]))
        hs = e.op("Concat", shifted, axis=2)  # [B, K, kw, Ho, Wp]
        hs = e.op("Reshape", [hs, e.ints("hs", [0, 1, m.k * kw, ho * wp])])  # [B, 1, K*kw, Ho*Wp]
        xl = e.op("Transpose", [x], perm=[0, 2, 3, 1])  # [B, Hp, Wp, C]
        xf = e.op("Reshape", [xl, e.ints("xf", [0, hp * wp, c])])
        rows = []
        for dy in range(kh):  # rows dy .. dy+Ho of the features: one contiguous run of Ho*Wp positions
            r = e.op("Slice", [xf, e.ints(f"s{dy}", [dy * wp]), e.ints(f"e{dy}", [dy * wp + ho * wp]),
                               e.ints("axis1", [1]) if not rows else f"{e.prefix}/axis1"])
            rows.append(e.op("Unsqueeze", [r, e.ints("at1", [1]) if not rows else f"{e.prefix}/at1"]))
        xs = e.op("Concat", rows, axis=1)  # [B, kh, Ho*Wp, C]
        z = e.op("MatMul", [hs, xs])  # [B, kh, K*kw, C]
        z = e.op("Reshape", [z, e.ints("z", [0, kh, m.k, kw, c])])
        z = e.op("Transpose", [z], perm=[0, 2, 4, 1, 3])  # [B, K, C, kh, kw]
        return e.op("Reshape", [z, e.ints("last4", [0, m.k, c * kh * kw, 1])])

    def emit(self, g: Graph, m: _Match) -> tuple[Emitter, Applied]:
        e = Emitter(f"{m.conv.name}/{self.name}")
        o, c, kh, kw = m.weights.shape
        ho, wo = m.out_hw
        x = m.features
        if any(m.pads):
            top, left, bottom, right = m.pads
            x = e.op("Pad", [x, e.ints("pads", [0, 0, top, left, 0, 0, bottom, right])])
        heat = e.op("Reshape", [m.heat, e.ints("heat", [0, m.k, ho * wo])])  # [B, K, P]
        z = self._correlate(e, x, heat, m)
        w = m.weights.reshape(m.k, m.c_out, c * kh * kw).astype(np.float32)
        # [B, K, C', 1], as the MatMul gave it; the multiply-and-sum form without keepdims drops the 1
        squeeze = m.heat_layout == "row" and len(m.output_shape) == 3
        last = None if squeeze else m.output
        w = m.weights.reshape(m.k, m.c_out, c * kh * kw).astype(np.float32)
        j = e.op("MatMul", [e.const("weights", w), z], output=None if m.bias is not None else last)
        if m.bias is not None and _sums_to_one(g, m.heat, ho * wo):  # a softmax over the positions
            j = e.op("Add", [j, e.const("bias", m.bias.reshape(m.k, m.c_out, 1).astype(np.float32))], output=last)
        elif m.bias is not None:  # the bias, weighted by the heatmap's sum over positions
            total = e.op("ReduceSum", [heat, e.ints("positions", [2])], keepdims=1)  # [B, K, 1]
            total = e.op("Unsqueeze", [total, e.ints("last1", [-1])])  # [B, K, 1, 1]
            b = m.bias.reshape(m.k, m.c_out, 1).astype(np.float32)
            j = e.op("Add", [j, e.op("Mul", [total, e.const("bias", b)])], output=last)
        if squeeze:
            e.op("Squeeze", [j, e.ints("last2", [-1])], output=m.output)
        wp = wo + kw - 1
        before = o * c * kh * kw * ho * wo + o * ho * wo  # the convolution and the weighted sum
        after = kh * m.k * kw * ho * wp * c + m.k * m.c_out * c * kh * kw  # the correlation and the weights
        replaced = (m.conv.name, m.reshape.name, *(n.name for n in m.reduce))
        return e, Applied(self.name, m.conv.name, replaced, tuple(n.name for n in e.nodes), before, after)


class SeparableDepthwise:
    """A depthwise convolution whose every kernel is the outer product of a column and a row
    (a Gaussian blur, a box filter: the anti-aliased resize): the column, then the row.
    kh + kw mult-adds per output instead of kh * kw, and with a stride the first pass
    already skips the rows the second never reads."""

    name = "separable-depthwise"
    RANK_TOLERANCE = 1e-6  # the second singular value over the first, where float32 rounding ends

    def matches(self, g: Graph) -> list[onnx.NodeProto]:
        return [node for node in g.model.graph.node if self._separable(g, node) is not None]

    def _separable(self, g: Graph, conv: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in g.constants:
            return None
        a, w = attrs(conv), g.constants[conv.input[1]]
        if (w.ndim != 4 or w.dtype != np.float32 or w.shape[1] != 1 or a.get("group", 1) != w.shape[0]
                or min(w.shape[2:]) < 2 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                or any(d != 1 for d in a.get("dilations", [1, 1]))
                or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in g.constants)):
            return None
        u, sv, vt = np.linalg.svd(w[:, 0].astype(np.float64))
        if np.any(sv[:, 1] > self.RANK_TOLERANCE * sv[:, 0]):
            return None
        root = np.sqrt(sv[:, 0])
        return u[:, :, 0] * root[:, None], vt[:, 0, :] * root[:, None]  # [C, kh], [C, kw]

    def emit(self, g: Graph, conv: onnx.NodeProto) -> tuple[Emitter, Applied]:
        column, row = self._separable(g, conv)
        a = attrs(conv)
        c, _, kh, kw = g.constants[conv.input[1]].shape
        sh, sw = a.get("strides", [1, 1])
        top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
        e = Emitter(f"{conv.name}/{self.name}")
        down = e.op("Conv", [conv.input[0], e.const("column", column.reshape(c, 1, kh, 1).astype(np.float32))],
                    group=c, kernel_shape=[kh, 1], strides=[sh, 1], pads=[top, 0, bottom, 0])
        bias = [conv.input[2]] if len(conv.input) > 2 and conv.input[2] else []
        e.op("Conv", [down, e.const("row", row.reshape(c, 1, 1, kw).astype(np.float32)), *bias], conv.output[0],
             group=c, kernel_shape=[1, kw], strides=[1, sw], pads=[0, left, 0, right])
        out = g.static(conv.output[0])
        mid_w = g.static(conv.input[0])[3] + left + right if out is not None and g.static(conv.input[0]) else None
        ho, wo = (out[2], out[3]) if out is not None else (0, 0)
        before = c * kh * kw * ho * wo
        after = c * kh * ho * (mid_w or 0) + c * kw * ho * wo
        return e, Applied(self.name, conv.name, (conv.name,), tuple(n.name for n in e.nodes), before, after)


class UpsampleIntoConv:
    """Nearest x2, then a dense 3x3 convolution: one transposed 4x4 convolution at stride 2."""

    name = "upsample-into-conv"
    # Which 3x3 taps land on each of the transposed kernel's four, along one axis: an even output row
    # 2i reads the upsampled rows 2i-1, 2i, 2i+1, the input's i-1, i, i (taps 3 and 1 of a stride-2
    # kernel padded by 1); an odd one 2i+1 reads i, i, i+1 (taps 2 and 0).
    TAPS = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=np.float64)

    def matches(self, g: Graph) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
        pairs = [(g.producer.get(node.input[0]), node) for node in g.model.graph.node if node.op_type == "Conv"]
        return [(up, conv) for up, conv in pairs if up is not None and self._matches(g, up, conv)]

    def _matches(self, g: Graph, up: onnx.NodeProto, conv: onnx.NodeProto) -> bool:
        a = attrs(up)
        if up.op_type != "Resize" or g.only_use(up.output[0]) is not conv or len(up.input) < 3:
            return False
        scales = g.constants.get(up.input[2])
        if (scales is None or scales.tolist() != [1.0, 1.0, 2.0, 2.0] or a.get("mode") != b"nearest"
                or a.get("coordinate_transformation_mode") != b"asymmetric" or a.get("nearest_mode") != b"floor"):
            return False
        return _dense_3x3(g, conv)  # depthwise: both backends run it transposed 1.5-1.7x slower (dsc)

    def emit(self, g: Graph, pair: tuple[onnx.NodeProto, onnx.NodeProto]) -> tuple[Emitter, Applied]:
        up, conv = pair
        w = g.constants[conv.input[1]].astype(np.float64)  # [O, I, 3, 3]
        t = self.TAPS
        wt = np.einsum("ka,lb,oiab->iokl", t, t, w).astype(np.float32)  # [I, O, 4, 4], as ConvTranspose takes it
        e = Emitter(f"{conv.name}/{self.name}")
        bias = [conv.input[2]] if len(conv.input) > 2 and conv.input[2] else []
        e.op("ConvTranspose", [up.input[0], e.const("weights", wt), *bias], conv.output[0],
             kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1])
        x = g.static(up.input[0])
        per_pixel = w.shape[0] * w.shape[1]  # output channels times input channels
        pixels = x[2] * x[3] if x is not None else 0
        return e, Applied(self.name, conv.name, (up.name, conv.name), tuple(n.name for n in e.nodes),
                          per_pixel * 9 * 4 * pixels, per_pixel * 16 * pixels,
                          "" if pixels else "36 -> 16 mult-adds per input pixel and weight")


@dataclass(frozen=True)
class _Joined:
    conv: onnx.NodeProto  # the dense 3x3 convolution
    concat: onnx.NodeProto
    parts: tuple[tuple[str, int], ...]  # each joined tensor and its channels, in order
    folded: dict[int, onnx.NodeProto]  # by part: the 2x2 transposed convolution that made it


class TransposedIntoConv:
    """A 2x2 transposed convolution at stride 2 (a U-Net's up-sampling), joined to other tensors and
    read by a dense 3x3 convolution: the convolution split over the joined tensors and summed, its
    share of the up-sampled channels folded with the transposed convolution into one at 4x4."""

    name = "transposed-into-conv"
    # Which tap of the composite 4x4 kernel (stride 2, padded by 1) carries the 3x3 kernel's tap a
    # applied to the 2x2 kernel's tap r, along one axis: TAPS[k, a, r]. An even output row 2i reads
    # the up-sampled rows 2i-1, 2i, 2i+1, made by tap 1 from the input's row i-1 and taps 0 and 1 from
    # its row i; an odd one, 2i+1, the rows made by taps 0 and 1 from row i and tap 0 from row i+1.
    TAPS = np.zeros((4, 3, 2))
    for k, a, r in [(0, 2, 0), (1, 1, 0), (1, 2, 1), (2, 0, 0), (2, 1, 1), (3, 0, 1)]:
        TAPS[k, a, r] = 1.0

    def matches(self, g: Graph) -> list[_Joined]:
        return [m for m in (self._match(g, node) for node in g.model.graph.node) if m is not None]

    def _match(self, g: Graph, conv: onnx.NodeProto) -> _Joined | None:
        if conv.op_type != "Conv" or not _dense_3x3(g, conv):
            return None
        concat = g.producer.get(conv.input[0])
        if concat is None or concat.op_type != "Concat" or g.only_use(concat.output[0]) is not conv:
            return None
        if attrs(concat).get("axis") not in (1, -3) or len(g.shapes.get(conv.input[0], [])) != 4:
            return None
        parts = []
        for name in concat.input:
            shape = g.shapes.get(name)
            if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or shape[1] <= 0:
                return None
            parts.append((name, shape[1]))
        k = g.constants[conv.input[1]].shape[0]
        folded = {i: t for i, (name, _) in enumerate(parts)
                  if (t := g.producer.get(name)) is not None and self._foldable(g, t, concat, k)}
        return _Joined(conv, concat, tuple(parts), folded) if folded else None

    def _foldable(self, g: Graph, t: onnx.NodeProto, concat: onnx.NodeProto, k: int) -> bool:
        """A 2x2 transposed convolution at stride 2 only the join reads, whose folding is less work."""
        a = attrs(t)
        if (t.op_type != "ConvTranspose" or g.only_use(t.output[0]) is not concat or len(t.input) < 2
                or t.input[1] not in g.constants or (len(t.input) > 2 and t.input[2] and t.input[2] not in g.constants)
                or a.get("group", 1) != 1 or list(a.get("strides", [1, 1])) != [2, 2]
                or list(a.get("pads", [0, 0, 0, 0])) != [0, 0, 0, 0] or list(a.get("output_padding", [0, 0])) != [0, 0]
                or list(a.get("dilations", [1, 1])) != [1, 1] or "output_shape" in a
                or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            return False
        w = g.constants[t.input[1]]
        if w.ndim != 4 or w.shape[2:] != (2, 2) or w.dtype != np.float32:
            return False
        c_in, c_mid = w.shape[:2]
        return 16 * c_in * k < 4 * c_in * c_mid + 36 * c_mid * k  # per input pixel: folded, against both

    def emit(self, g: Graph, m: _Joined) -> tuple[Emitter, Applied]:
        conv = m.conv
        w = g.constants[conv.input[1]].astype(np.float64)  # [K, C, 3, 3]
        e = Emitter(f"{conv.name}/{self.name}")
        bias = [conv.input[2]] if len(conv.input) > 2 and conv.input[2] else []
        terms, carried, start = [], np.zeros((w.shape[0], 1, 3, 3)), 0
        per_pixel_before = per_pixel_after = 0  # mult-adds per output pixel
        for i, (name, channels) in enumerate(m.parts):
            share = w[:, start:start + channels]
            start += channels
            per_pixel_before += 9 * w.shape[0] * channels
            t = m.folded.get(i)
            if t is None:
                terms.append(e.op("Conv", [name, e.const(f"part{i}", share.astype(np.float32)), *bias],
                                  kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
                per_pixel_after += 9 * w.shape[0] * channels
            else:
                up = g.constants[t.input[1]].astype(np.float64)  # [C_in, C, 2, 2]
                through = np.tensordot(share, up, axes=([1], [1]))  # [K, 3, 3, C_in, 2, 2]: over the middle channels
                folded = np.einsum("har,wbs,kabcrs->ckhw", self.TAPS, self.TAPS, through, optimize=True)
                terms.append(e.op("ConvTranspose", [t.input[0], e.const(f"part{i}", folded.astype(np.float32)), *bias],
                                  kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]))
                if len(t.input) > 2 and t.input[2]:  # its bias reaches each output through the taps inside the picture
                    carried += np.einsum("kmab,m->kab", share, g.constants[t.input[2]].astype(np.float64))[:, None]
                per_pixel_before += up.shape[0] * channels
                per_pixel_after += 4 * up.shape[0] * w.shape[0]
            bias = []
        if np.any(carried):  # the 3x3 kernel's taps over a picture of ones: the borders read zeros
            shape = e.op("Shape", [terms[0]])  # [N, 1, H, W]: OpenVINO's CPU plugin fails on a batch broadcast here
            batch = e.op("Slice", [shape, e.ints("zero", [0]), e.ints("one", [1])])
            sides = e.op("Slice", [shape, e.ints("two", [2]), e.ints("four", [4])])
            ones = e.op("ConstantOfShape", [e.op("Concat", [batch, e.ints("one_channel", [1]), sides], axis=0)],
                        value=numpy_helper.from_array(np.ones(1, np.float32)))
            terms.append(e.op("Conv", [ones, e.const("carried", carried.astype(np.float32))],
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            per_pixel_after += 9 * w.shape[0]
        total = terms[0]
        for j, term in enumerate(terms[1:], 1):
            total = e.op("Add", [total, term], conv.output[0] if j == len(terms) - 1 else None)
        replaced = (m.concat.name, conv.name, *(t.name for t in m.folded.values()))
        out = g.static(conv.output[0])
        pixels = out[2] * out[3] if out is not None else 0
        return e, Applied(self.name, conv.name, replaced, tuple(n.name for n in e.nodes),
                          per_pixel_before * pixels, per_pixel_after * pixels,
                          "" if pixels else f"{per_pixel_before} -> {per_pixel_after} mult-adds per output pixel")


def _dense_3x3(g: Graph, conv: onnx.NodeProto) -> bool:
    """A convolution of constant 3x3 float weights over all its input channels, padded by 1, stride 1."""
    c = attrs(conv)
    w = g.constants.get(conv.input[1]) if len(conv.input) > 1 else None
    has_bias = len(conv.input) > 2 and conv.input[2]
    return (w is not None and w.ndim == 4 and w.shape[2:] == (3, 3) and w.dtype == np.float32
            and c.get("group", 1) == 1 and list(c.get("pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
            and list(c.get("strides", [1, 1])) == [1, 1] and list(c.get("dilations", [1, 1])) == [1, 1]
            and c.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
            and (not has_bias or conv.input[2] in g.constants))


@dataclass(frozen=True)
class _Unpool:
    scatter: onnx.NodeProto
    gone: tuple[str, ...]  # the scatter, the reshapes into and out of it
    pooled_input: str  # P [B, C, 2h, 2w], the max-pool's input
    maximum: str  # M [B, C, h, w], its first output
    values: str  # Y [B, C, h, w], what is unpooled
    output: str  # U [B, C, 2h, 2w]
    channels: int
    indices: str  # the flat positions the scatter writes at


class UnpoolAsMask:
    """A scatter into zeros at a 2x2 max-pool's chosen positions: a mask of the window's first maximum."""

    name = "unpool-as-mask"
    DEPTH = 16  # producers searched from the scatter's indices back to the pool
    SIDE = 64  # a spatial dimension the graph leaves open, when the check runs it

    def matches(self, g: Graph) -> list[_Unpool]:
        found = [m for m in (self._candidate(g, node) for node in g.model.graph.node) if m is not None]
        return self._checked(g, found) if found else []

    def _candidate(self, g: Graph, scatter: onnx.NodeProto) -> _Unpool | None:
        if scatter.op_type != "ScatterND" or attrs(scatter).get("reduction", b"none") not in (b"none", "none"):
            return None
        zeros, _, flat = (g.producer.get(i) for i in scatter.input)
        if zeros is not None and zeros.op_type == "Reshape":
            zeros = g.producer.get(zeros.input[0])
        if zeros is None or zeros.op_type != "ConstantOfShape" or _fill(zeros) != 0.0:
            return None
        out = g.only_use(scatter.output[0])
        if flat is None or flat.op_type != "Reshape" or out is None or out.op_type != "Reshape":
            return None
        y, u = g.shapes.get(flat.input[0], []), g.shapes.get(out.output[0], [])
        if len(y) != 4 or len(u) != 4 or not isinstance(y[1], int) or u[1] != y[1]:
            return None
        pool = self._pool(g, scatter.input[1], y[1])
        if pool is None or not all(_multiple(d, 2) for d in g.shapes.get(pool.input[0], [0, 0, 1, 1])[2:]):
            return None  # an odd side: the pool drops its last row, which the windows cannot
        gone = (scatter.name, out.name) + ((flat.name,) if g.only_use(flat.output[0]) is scatter else ())
        return _Unpool(scatter, gone, pool.input[0], pool.output[0], flat.input[0], out.output[0], y[1],
                       scatter.input[1])

    def _pool(self, g: Graph, indices: str, channels: int) -> onnx.NodeProto | None:
        """The one 2x2, stride-2 max-pool with indices over `channels` among the producers of `indices`."""
        found, seen, frontier = [], set(), [indices]
        for _ in range(self.DEPTH):
            nodes = [g.producer[t] for t in frontier if t in g.producer and g.producer[t].name not in seen]
            seen.update(n.name for n in nodes)
            found += [n for n in nodes if n.op_type == "MaxPool" and len(n.output) == 2 and n.output[1]]
            frontier = [i for n in nodes for i in n.input if i]
        pools = [n for n in found if _two_by_two(n) and g.shapes.get(n.input[0], [None, None])[1] == channels]
        return pools[0] if len(pools) == 1 else None

    def _checked(self, g: Graph, found: list[_Unpool]) -> list[_Unpool]:
        """Those whose scatter writes, as the graph computes it on random inputs (batch 1 and 2),
        at the flat positions of each window's first maximum (the pool's choice) of the pool's input,
        into a tensor of that input's shape."""
        rng = np.random.default_rng(0)
        names = list(dict.fromkeys(n for m in found for n in (m.pooled_input, m.indices, m.output)))
        runs = []
        for batch in (1, 2):
            feeds = {}
            for i in g.model.graph.input:
                dims = [batch if k == 0 else d if isinstance(d, int) and d > 0 else self.SIDE
                        for k, d in enumerate(g.shapes[i.name])]
                feeds[i.name] = rng.standard_normal(dims).astype(helper.tensor_dtype_to_np_dtype(
                    i.type.tensor_type.elem_type))
            try:
                runs.append(run_exposing(g.model, names, feeds))
            except Exception:  # noqa: BLE001 - a graph that cannot be run here keeps its scatter
                return []
        return [m for m in found if all(
            r[m.output].shape == r[m.pooled_input].shape
            and np.array_equal(r[m.indices].reshape(-1), _first_maxima(r[m.pooled_input]).reshape(-1)) for r in runs)]

    def emit(self, g: Graph, m: _Unpool) -> tuple[Emitter, Applied]:
        e = Emitter(f"{m.scatter.name}/{self.name}")
        c = m.channels
        windows = e.op("SpaceToDepth", [m.pooled_input], blocksize=2)  # [B, 4C, h, w]: window position k, then C
        axis1, zero = e.ints("axis1", [1]), e.const("zero", np.zeros((), np.float32))
        taken, placed = None, []
        for k in range(4):  # a position wins when it holds the maximum and no earlier one does
            at = e.op("Slice", [windows, e.ints(f"s{k}", [k * c]), e.ints(f"e{k}", [(k + 1) * c]), axis1])
            hit = e.op("Equal", [at, m.maximum])
            first = hit if taken is None else e.op("And", [hit, e.op("Not", [taken])])
            taken = hit if taken is None else e.op("Or", [taken, hit])
            placed.append(e.op("Where", [first, m.values, zero]))
        e.op("DepthToSpace", [e.op("Concat", placed, axis=1)], m.output, blocksize=2, mode="DCR")
        return e, Applied(self.name, m.scatter.name, m.gone, tuple(n.name for n in e.nodes), 0, 0,
                          "a scatter at the pool's indices -> a mask of each window's first maximum (no indices)")


def run_exposing(model: onnx.ModelProto, names: list[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`model` run once by ONNX Runtime on `feeds` with the tensors `names` made outputs too: every output by name."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    named = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names) if n not in named)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, dict(feeds))))


def _two_by_two(pool: onnx.NodeProto) -> bool:
    a = attrs(pool)
    return (list(a.get("kernel_shape", [])) == [2, 2] and list(a.get("strides", [1, 1])) == [2, 2]
            and not any(a.get("pads", [0, 0, 0, 0])) and list(a.get("dilations", [1, 1])) == [1, 1]
            and not a.get("ceil_mode", 0) and not a.get("storage_order", 0)
            and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def _multiple(dim: int | str, m: int) -> bool:
    """Whether a dimension is a multiple of `m` whatever its size: such a number, or a multiple of a
    symbol by such a factor (the exporter's `16*height_over_16` is one of 2, 4, 8 and 16)."""
    if isinstance(dim, int):
        return dim > 0 and dim % m == 0
    factor = re.match(r"^(\d+)\*", dim)
    return factor is not None and int(factor.group(1)) % m == 0


def _fill(node: onnx.NodeProto) -> float | None:
    """The value a ConstantOfShape fills with (0.0 when it names none)."""
    value = attrs(node).get("value")
    return 0.0 if value is None else float(numpy_helper.to_array(value).reshape(-1)[0])


def _first_maxima(x: np.ndarray) -> np.ndarray:
    """The flat index into `x` [B, C, 2h, 2w] of each 2x2 window's first maximum (row-major), [B, C, h, w]."""
    b, c, hh, ww = x.shape
    windows = x.reshape(b, c, hh // 2, 2, ww // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, hh // 2, ww // 2, 4)
    k = windows.argmax(-1)  # argmax returns the first of equal maxima
    rows = np.arange(hh // 2)[:, None] * 2 + k // 2
    cols = np.arange(ww // 2)[None, :] * 2 + k % 2
    planes = np.arange(b * c).reshape(b, c, 1, 1) * hh * ww
    return planes + rows * ww + cols


REWRITES = (ReduceBeforeConv(), SeparableDepthwise(), UpsampleIntoConv(), TransposedIntoConv(), UnpoolAsMask())


def _sums_to_one(g: Graph, tensor: str, positions: int) -> bool:
    """Whether `tensor` is, reshaped, a softmax over its last axis of `positions` values."""
    node = g.producer.get(tensor)
    while node is not None and node.op_type in ("Reshape", "Unsqueeze", "Squeeze", "Flatten"):
        node = g.producer.get(node.input[0])
    if node is None or node.op_type != "Softmax":
        return False
    shape = g.shapes.get(node.input[0]) or []
    axis = attrs(node).get("axis", -1)
    return bool(shape) and axis % len(shape) == len(shape) - 1 and shape[-1] == positions



def rewrite(src: Path, dst: Path, spec: ModelSpec, feeds: Mapping[str, np.ndarray], enabled: bool = True,
            random_inputs: Callable[[int], Mapping[str, np.ndarray]] | None = None,
            timed: Callable[[onnx.ModelProto], tuple[onnx.ModelProto, list[Applied], dict]] | None = None,
            ) -> tuple[dict, list[Applied]]:
    """Write `src`'s graph, rewritten, to `dst`, and check it against `src` on `feeds`
    and on `random_inputs(seed)` for RANDOM_CHECKS seeds; the stage's manifest record,
    and what was applied. With `enabled` False, `dst` is `src` unchanged. `timed`, where given,
    makes the rewrites kept only where they measure faster (`export.winograd.choose`): the rewritten
    graph in, the graph it keeps, what it applied and its record (the record's `winograd`) out."""
    model = onnx.load(str(src))
    rewritten, applied = apply_rewrites(model) if enabled else (model, [])
    record: dict[str, Any] = {"enabled": enabled}
    if enabled and timed is not None:
        rewritten, kept, record["winograd"] = timed(rewritten)
        applied += kept
    onnx.save(rewritten, str(dst))
    record.update(applied=[a.to_dict() for a in applied], check=None)
    if applied:
        sets = [feeds, *(random_inputs(seed) for seed in range(RANDOM_CHECKS))] if random_inputs else [feeds]
        outputs = [{"name": n} for n in spec.outputs]
        with (OnnxRuntimeRunner(src, spec.inputs, outputs, "fp32", threads=None) as before,
              OnnxRuntimeRunner(dst, spec.inputs, outputs, "fp32", threads=None) as after):
            expected = [before.infer(x) for x in sets]
            rng = np.random.default_rng(0)
            bounds = dict.fromkeys(spec.outputs, REWRITE_BOUND)
            for e, x in zip(expected, sets):
                for _ in range(NOISE_DRAWS):  # as many draws as the build's reference noise, on each set
                    for o in compare(e, before.infer({k: one_ulp(v, rng) for k, v in x.items()}), 0.0).outputs:
                        bounds[o.name] = max(bounds[o.name], 2 * o.max_rel)
            checks = [compare(e, after.infer(x), bounds) for e, x in zip(expected, sets)]
        worst = min(checks, key=lambda p: (p.passed, -max(o.max_rel for o in p.outputs)))  # a failure first
        record["check"] = {**worst.to_dict(), "inputs": len(sets)}
    return record, applied


def apply_rewrites(model: onnx.ModelProto, rewrites=REWRITES) -> tuple[onnx.ModelProto, list[Applied]]:
    """`model` with every match of every rewrite replaced (a copy), and what was applied."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    applied: list[Applied] = []
    for rewrite in rewrites:
        g = Graph.of(out)
        for m in rewrite.matches(g):
            e, done = rewrite.emit(g, m)
            gone = set(done.replaced)
            nodes = list(out.graph.node)
            # where the reduction was: every tensor the new nodes read is made before it
            at = max(i for i, n in enumerate(nodes) if n.name in gone)
            del out.graph.node[:]
            out.graph.node.extend([n for n in nodes[:at] if n.name not in gone] + e.nodes
                                  + [n for n in nodes[at + 1:] if n.name not in gone])
            out.graph.initializer.extend(e.initializers)
            applied.append(done)
        _drop_dead(out)
        _drop_unused(out)
    onnx.checker.check_model(out)
    return out, applied


def _drop_dead(model: onnx.ModelProto) -> None:
    """Nodes whose outputs nothing reads any more (what only a replaced node used), and a
    max-pool's index output nothing reads (an optional output: the pool without it is cheaper)."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        live = [n for n in model.graph.node if any(o in used for o in n.output if o)]
        if len(live) == len(model.graph.node):
            break
        del model.graph.node[:]
        model.graph.node.extend(live)
    for node in model.graph.node:
        if node.op_type == "MaxPool" and len(node.output) == 2 and node.output[1] not in used:
            del node.output[1]


def _drop_unused(model: onnx.ModelProto) -> None:
    """Constants nothing reads any more, and shapes of tensors nothing makes any more."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    made = {o for n in model.graph.node for o in n.output}
    initializers = [i for i in model.graph.initializer if i.name in used]
    shapes = [v for v in model.graph.value_info if v.name in made]
    del model.graph.initializer[:], model.graph.value_info[:]
    model.graph.initializer.extend(initializers)
    model.graph.value_info.extend(shapes)
