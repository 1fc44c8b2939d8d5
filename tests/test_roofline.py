"""The roofline: work and bytes counted on the graph that runs, node by node, and a part's
bound from the two roofs. The roofs themselves are measured (`compete`, `study`); here they
are given, so every figure below is exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.lab import roofline
from export.lab.roofline import NodeWork, Roofs

MIB = 2**20


def separable_graph(side: int | str = 16) -> onnx.ModelProto:
    """A 3x3 conv (4 -> 8 channels, 16x16, bias) + ReLU, then a 3x3 depthwise conv, then a reshape."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.random(shape, dtype=np.float32), name) for name, shape in
               (("w", (8, 4, 3, 3)), ("b", (8,)), ("dw", (8, 1, 3, 3)))]
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "flat")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "dw"], ["d"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["d", "flat"], ["out"], name="flatten")]
    graph = helper.make_graph(nodes, "separable", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 ["batch", 4, side, side])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [*weights, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("side", [16, "side"])
def test_work_and_bytes_are_counted_node_by_node_on_the_graph(side):
    """At the shapes of one inference on the inputs given: the same whether the graph fixes its sizes or not."""
    work = roofline.graph_work(separable_graph(side), {"x": np.zeros((1, 4, 16, 16), np.float32)})
    if side == 16:  # static sizes: ONNX's shape inference alone says the same
        assert roofline.graph_work(separable_graph(side)) == work
    pixels = 16 * 16
    assert work["conv"] == NodeWork("conv", "Conv", 2 * 8 * pixels * 4 * 9,
                                    4 * (4 * pixels + 8 * 4 * 9 + 8 + 8 * pixels))  # input, weights, bias, output
    # the ReLU reads only the conv's output, which nothing else reads: an epilogue fused into it
    assert work["relu"] == NodeWork("relu", "Relu", 8 * pixels, 0)
    assert work["depthwise"] == NodeWork("depthwise", "Conv", 2 * 8 * pixels * 9, 4 * (8 * pixels + 8 * 9 + 8 * pixels))
    assert work["flatten"] == NodeWork("flatten", "Reshape", 0, 0)


def test_a_node_is_held_to_the_bandwidth_of_the_copy_its_bytes_fit_in():
    roofs = Roofs(100.0, {2 * MIB: 50.0, 16 * MIB: 20.0, 512 * MIB: 10.0}, 2, {})
    assert roofs.gbytes_s(1000) == 50.0 and roofs.gbytes_s(2 * MIB) == 50.0
    assert roofs.gbytes_s(2 * MIB + 1) == 20.0 and roofs.gbytes_s(2**40) == 10.0
    assert roofs.ridge == 10.0  # flop per byte where main memory's roof meets the peak
    assert Roofs.from_dict(roofs.to_dict()) == roofs


def test_a_part_is_bound_by_the_longer_roof_of_each_of_its_nodes():
    roofs = Roofs(100.0, {2 * MIB: 50.0, 512 * MIB: 10.0}, 2, {})
    dense = NodeWork("dense", "Conv", 2_000_000_000, 1_000_000)  # 20 ms of work, 0.02 ms of bytes
    depthwise = NodeWork("depthwise", "Conv", 1_000_000, 10_000_000)  # 0.01 ms of work, 1 ms of bytes at 10 GB/s
    p = roofline.place([dense, depthwise], roofs)
    assert p.compute_ms == pytest.approx(20.0) and p.memory_ms == pytest.approx(1.0)
    assert p.bound == "compute" and p.bound_ms == pytest.approx(21.0)
    assert p.share(42.0) == pytest.approx(0.5) and p.gap_ms(42.0) == pytest.approx(21.0)
    assert p.intensity == pytest.approx(2_001_000_000 / 11_000_000)
    assert roofline.place([depthwise], roofs).bound == "memory"


def test_parts_are_the_modules_where_the_model_splits():
    detector = {"a": "down.conv", "b": "predictor.encoder.down_blocks.0.conv", "c": "kp"}
    assert roofline.parts(detector) == {"a": "down", "b": "predictor", "c": "kp"}
    wrapped = {"a": "net.encoder.layers.0.conv", "b": "net.decoder.1", "c": "net.encoder.initial"}
    assert roofline.parts(wrapped) == {"a": "net.encoder", "b": "net.decoder", "c": "net.encoder"}
    grouped = roofline.places(roofline.graph_work(separable_graph()), {"conv": "first", "relu": "first"},
                              Roofs(100.0, {512 * MIB: 10.0}, 2, {}))
    assert set(grouped) == {"first", None}  # the nodes no module made stay a part of their own
    assert grouped["first"].flops == 2 * 8 * 256 * 4 * 9 + 8 * 256


def test_the_roofline_plot_is_written(tmp_path):
    roofs = Roofs(100.0, {2 * MIB: 50.0, 512 * MIB: 10.0}, 2, {})
    roofline.plot({"dense": (181.9, 80.0), "depthwise": (0.1, 0.5), "reshape": (float("inf"), 0.0)},
                  roofs, tmp_path / "roofline.png", "two parts")
    assert (tmp_path / "roofline.png").stat().st_size > 10_000
