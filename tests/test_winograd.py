"""Winograd's F(2x2, 3x3) (and F(4x4, 3x3), which the benchmark compares) on wide 3x3 convolutions:
the same function to float rounding, matched on the computation (width, stride, padding, sides whole
blocks), weights left as 3x3 kernels in the ONNX file, and kept by a build only where its own timing
says so, a decision the record must explain either way."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export.backends import REGISTRY
from export.contract import infer_spec
from export.golden import golden_inputs
from export.lab.roofline import graph_work
from export.pipeline import _winograd_timing, build_model
from export.report import rewrite_lines, winograd_lines
from export.rewrite import apply_rewrites
from export.settings import BuildSettings
from export.winograd import MIN_CHANNELS, Timing, Winograd, choose
from runtime.backends import DEFAULT_BACKENDS
from runtime.compare import compare
from runtime.tune import MARGIN

from tests.test_rewrite import _exported, _outputs, _same_on_random_inputs


class Wide(nn.Module):
    """Two convolutions F(2x2, 3x3) applies to (256 channels in and out, at 20x24 and, with no bias,
    at 10x12) and three it leaves alone: three channels in, an odd side (5x6) and 128 channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 256, 3, padding=1)
        self.full = nn.Conv2d(256, 256, 3, padding=1)
        self.pooled = nn.Conv2d(256, 256, 3, padding=1, bias=False)
        self.odd = nn.Conv2d(256, 128, 3, padding=1)
        self.narrow = nn.Conv2d(128, 128, 3, padding=1)
        self.head = nn.Conv2d(128, 4, 1)

    def forward(self, x):
        x = torch.relu(self.full(torch.relu(self.stem(x))))
        x = torch.relu(self.pooled(nn.functional.max_pool2d(x, 2)))
        x = torch.relu(self.odd(nn.functional.max_pool2d(x, 2)))
        return self.head(nn.functional.interpolate(torch.relu(self.narrow(x)), scale_factor=4.0))


EXAMPLE = {"x": torch.rand(1, 3, 20, 24)}


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    module = Wide().eval()
    return module, _exported(module, EXAMPLE, tmp_path_factory.mktemp("wide"))


def _convs(model: onnx.ModelProto) -> dict[str, list[int]]:
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    return {n.name: weights[n.input[1]] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in weights}


def test_only_wide_convolutions_at_even_sides_are_rewritten_and_compute_the_same(wide):
    _, original = wide
    rewritten, applied = apply_rewrites(original, (Winograd(),))
    convs = _convs(original)
    assert [convs[a.where][:2] for a in applied] == [[256, 256], [256, 256]]  # not the stem, the odd side or 128
    assert all(a.change == "256->256 channels: 9 -> 4 mult-adds per output pixel and weight (F(2x2, 3x3))"
               for a in applied)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("DepthToSpace") == 2 and ops.count("Conv") == len(convs)  # each 3x3 now a grouped 4x4
    _same_on_random_inputs(original, rewritten, {"x": (3, 20, 24)})


def test_four_by_four_blocks_need_sides_that_are_multiples_of_four(wide):
    """F(4x4, 3x3), which `benchmarks/winograd.py` sets beside the build's F(2x2, 3x3): 2.25 mult-adds
    where F(2x2) does 4, from 6x6 tiles at stride 4, so only the 20x24 convolution is matched (10x12 is
    not whole 4x4 blocks); its larger transforms (up to 8 x 8) round more, still within the bound."""
    _, original = wide
    rewritten, applied = apply_rewrites(original, (Winograd(m=4),))
    assert [(_convs(original)[a.where][:2], a.change) for a in applied] == [
        ([256, 256], "256->256 channels: 9 -> 2.25 mult-adds per output pixel and weight (F(4x4, 3x3))")]
    tile = next(n for n in rewritten.graph.node if n.op_type == "Conv" and n.name.startswith(f"{applied[0].where}/"))
    assert {a.name: list(a.ints) for a in tile.attribute if a.ints} == {
        "kernel_shape": [6, 6], "strides": [4, 4], "pads": [1, 1, 1, 1]}
    _same_on_random_inputs(original, rewritten, {"x": (3, 20, 24)})


def test_every_backend_that_runs_the_onnx_graph_runs_it(wide, tmp_path):
    """ONNX Runtime and OpenVINO (read from the ONNX file, as the build times it), within float rounding."""
    module, original = wide
    spec = infer_spec(module, EXAMPLE, "Wide")
    rewritten, _ = apply_rewrites(original, (Winograd(),))
    onnx.save(rewritten, str(tmp_path / "winograd.onnx"))
    feeds = golden_inputs(spec, 2, 0)
    expected = dict(zip(spec.outputs, _outputs(original, feeds).values()))
    for backend in [b for b in DEFAULT_BACKENDS if REGISTRY[b].runs_onnx]:
        with REGISTRY[backend].runtime.runner(tmp_path / "winograd.onnx", spec.inputs, [{"name": n} for n in spec.outputs],
                                        "fp32", 2) as runner:
            parity = compare(expected, runner.infer(feeds), 1e-4)
        assert parity.passed, (backend, parity.to_dict())


def test_the_onnx_file_keeps_the_3x3_kernels(wide):
    """The transformed weights (16/9 of the kernels) are a constant expression the runtimes fold at
    load: the file gains only the transforms' small constants."""
    _, original = wide
    rewritten, applied = apply_rewrites(original, (Winograd(),))
    size = lambda m: sum(int(np.prod(i.dims)) for i in m.graph.initializer)  # noqa: E731
    assert 0 < size(rewritten) - size(original) < 1024 * len(applied)
    assert not [i for i in rewritten.graph.initializer if int(np.prod(i.dims)) == 16 * 256 * 256]


def test_the_roofline_counts_the_products_not_the_weight_transform(wide):
    """The weights' transform is folded at load: no work per inference; the batched product reads the
    transformed weights (16/9 of the kernels) and does 16 products per tile and pair of channels."""
    _, original = wide
    rewritten, _ = apply_rewrites(original, (Winograd(),))
    work = graph_work(rewritten, {"x": np.zeros((1, 3, 20, 24), np.float32)})
    by_op = lambda op: [work[n.name] for n in rewritten.graph.node if n.op_type == op]  # noqa: E731
    assert [w.flops for w in by_op("Tile")] == [0, 0]
    weight_transforms, products, output_transforms = by_op("MatMul")[0::3], by_op("MatMul")[1::3], by_op("MatMul")[2::3]
    assert [w.flops for w in weight_transforms] == [0, 0]
    tiles = [10 * 12, 5 * 6]  # 2x2 output blocks at 20x24 and at 10x12
    assert [w.flops for w in products] == [2 * 16 * 256 * 256 * t for t in tiles]
    assert all(w.bytes >= 16 * 256 * 256 * 4 for w in products)
    assert [w.flops for w in output_transforms] == [2 * 4 * 16 * 256 * t for t in tiles]


def test_a_build_that_may_not_time_it_leaves_the_graph_and_says_why(wide):
    module, original = wide
    spec = infer_spec(module, EXAMPLE, "Wide")
    one = golden_inputs(spec, 1, 0)
    graph, applied, record = choose(original, spec, one, Timing(refused="--tune-budget 0: the build times nothing"))
    assert graph is original and applied == []
    assert record == {"min_channels": MIN_CHANNELS, "convolutions": 2, "margin": MARGIN, "kept": False,
                      "not_timed": "--tune-budget 0: the build times nothing"}
    _, _, nowhere = choose(original, spec, one, Timing())  # no backend, no reason given: never kept untimed
    assert (nowhere["kept"], nowhere["not_timed"]) == (False, "no backend to time it on")
    assert winograd_lines({"winograd": record}) == [
        "- Winograd F(2x2, 3x3) on 2 convolutions of 256 channels or more: not timed "
        "(--tune-budget 0: the build times nothing), not applied"]


def test_the_report_gives_the_timing_when_nothing_was_kept():
    """A graph no other rewrite matched, and Winograd timed and not kept: both lines, the figures in the second."""
    timed = {"min_channels": 256, "convolutions": 2, "margin": 0.05, "kept": False,
             "backends": {"onnxruntime": {"speedup": 1.01, "faster": False}, "openvino": {"speedup": 1.22, "faster": True}}}
    assert rewrite_lines({"enabled": True, "applied": [], "check": None, "winograd": timed}) == [
        "- Graph rewrites: none applied",
        "- Winograd F(2x2, 3x3) on 2 convolutions of 256 channels or more: not kept (it must be 5% faster on each "
        "backend, confirmed); rewritten graph's speed-up at p50 on this machine: ONNX Runtime 1.01x (not faster), "
        "OpenVINO 1.22x (faster)"]


def test_a_build_keeps_it_only_where_it_timed_it_faster_on_every_backend(wide, tmp_path):
    """Timed on this machine, so either way can happen: the record must say which and why, and the
    bundle must hold what the record says, within parity."""
    module, _ = wide
    spec = infer_spec(module, EXAMPLE, "Wide")
    result = build_model(module, spec, BuildSettings(out=tmp_path, tune_budget=0.5, warmup=1, runs=5, memory=False))
    assert result.passed, result.failures
    w = result.manifest["rewrites"]["winograd"]
    assert list(w["backends"]) == [b for b in DEFAULT_BACKENDS if REGISTRY[b].runs_onnx] and w["convolutions"] == 2
    for m in w["backends"].values():
        built, rewritten = m["p50_ms"]["as built"], m["p50_ms"]["winograd"]
        assert m["runs"] >= 10 and m["speedup"] == pytest.approx(built / rewritten, rel=1e-6)
        assert m["faster"] == (m["versus"]["real"] and rewritten < (1 - MARGIN) * built)
    assert w["kept"] == all(m["faster"] for m in w["backends"].values())
    applied = [a for a in result.manifest["rewrites"]["applied"] if a["rewrite"] == "winograd"]
    assert [a["module"] for a in applied] == (["full", "pooled"] if w["kept"] else [])
    graph = onnx.load(str(result.bundle / "model.onnx"))
    assert [n.op_type for n in graph.graph.node].count("DepthToSpace") == (2 if w["kept"] else 0)
    report = (result.bundle / "report.md").read_text()
    assert winograd_lines(result.manifest["rewrites"])[0] in report


@pytest.mark.parametrize("settings, reason", [
    ({"quantize": "int8"}, "an INT8 build: its plans are made from this graph, and INT8's rounding in the "
                           "transformed domain is larger"),
    ({"tune_budget": 0}, "--tune-budget 0: the build times nothing"),
    ({"memory_budget": 300.0}, "a memory budget: the runtimes hold 16/9 of the kernels it replaces"),
    ({"backends": ("litert",)}, "no backend built runs the ONNX graph"),
])
def test_what_keeps_a_build_from_timing_it(settings, reason):
    assert _winograd_timing(BuildSettings(variant="segnet", **settings)) == Timing(refused=reason)


def test_a_build_times_it_on_each_backend_that_runs_onnx_for_its_tune_budget():
    timing = _winograd_timing(BuildSettings(variant="segnet", threads=1, tune_budget=0.7,
                                            backends=("onnxruntime", "openvino", "litert")))
    assert [b.name for b in timing.backends] == ["onnxruntime", "openvino"]
    assert (timing.threads, timing.budget, timing.refused) == (1, 0.7, "")
