"""Graph rewrites: each computes the original graph's function (checked on random
inputs, at several batch sizes), is matched by the shape of the computation and
not by names, and is recorded in the manifest."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import models
from export.artifacts import make_fp32_artifacts
from export.contract import Exportable, infer_spec
from export.golden import golden_inputs
from export.rewrite import REWRITE_BOUND, apply_rewrites
from runtime.compare import compare


def _outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _exported(module: nn.Module, example: dict[str, torch.Tensor], folder, rewrites=False, dynamic=None) -> onnx.ModelProto:
    spec = infer_spec(module, example, type(module).__name__, dynamic=dynamic)
    feeds = golden_inputs(spec, 2, 0)
    made = make_fp32_artifacts(Exportable(module, spec).eval(), feeds, folder, 20, (), rewrites=rewrites)
    return onnx.load(str(made.onnx))


def _same_on_random_inputs(original: onnx.ModelProto, rewritten: onnx.ModelProto, *shapes: dict[str, tuple]):
    """At batches 1 and 3, and at each of `shapes` (several where the graph has more dynamic axes)."""
    rng = np.random.default_rng(7)
    for batch in (1, 3):
        for shape in shapes:
            feeds = {k: rng.standard_normal((batch, *s)).astype(np.float32) for k, s in shape.items()}
            parity = compare(_outputs(original, feeds), _outputs(rewritten, feeds), REWRITE_BOUND)
            assert parity.passed, parity.to_dict()


def test_the_jacobian_head_is_reduced_before_its_convolution(tmp_path):
    """dsc's 35 -> 40 channel 7x7 Jacobian head over 58x58, used only through the heatmap-weighted sum."""
    original = _exported(models.create("dsc").eval(), {"image": torch.rand(1, 3, 256, 256)}, tmp_path)
    rewritten, applied = apply_rewrites(original)
    assert [a.rewrite for a in applied] == ["reduce-before-conv", "separable-depthwise"]
    a = applied[0]
    assert a.mult_adds_before == 40 * 35 * 49 * 58 * 58 + 40 * 58 * 58  # 230.9 M: the conv and the weighted sum
    assert a.mult_adds_after == 7 * 35 * 58 * 64 * 10 * 7 + 10 * 4 * 35 * 49  # 63.7 M: the correlation, the weights
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("Conv") == [n.op_type for n in original.graph.node].count("Conv")  # one gone, one split
    assert not any(init.name.endswith("jacobian.weight") for init in rewritten.graph.initializer)
    _same_on_random_inputs(original, rewritten, {"image": (3, 256, 256)})


class MultiplyAndSum(nn.Module):
    """The published FOMM code's form, in a user's model: a padded conv with a bias, the
    map broadcast-multiplied by heatmaps (softmaxed: they sum to one; or not) and summed over positions."""

    def __init__(self, keepdim: bool, softmax: bool):
        super().__init__()
        self.keepdim, self.softmax = keepdim, softmax
        self.features = nn.Conv2d(3, 8, 3, padding=1)
        self.heat = nn.Conv2d(8, 5, 3, padding=1)
        self.linear = nn.Conv2d(8, 5 * 6, 5, padding=2)

    def forward(self, x):
        f = torch.relu(self.features(x))
        b, _, h, w = f.shape
        logits = self.heat(f).reshape(b, 5, 1, h * w)
        heat = torch.softmax(logits, dim=-1) if self.softmax else torch.sigmoid(logits)
        maps = self.linear(f).reshape(b, 5, 6, h * w)
        return (maps * heat).sum(dim=-1, keepdim=self.keepdim), heat


@pytest.mark.parametrize("keepdim, softmax", [(False, True), (True, False)])
def test_a_users_multiply_and_sum_gets_the_rewrite_too(keepdim, softmax, tmp_path):
    original = _exported(MultiplyAndSum(keepdim, softmax).eval(), {"x": torch.rand(1, 3, 20, 24)}, tmp_path)
    rewritten, applied = apply_rewrites(original)
    assert len(applied) == 1 and applied[0].mult_adds_before == 30 * 8 * 25 * 20 * 24 + 30 * 20 * 24
    # the bias is weighted by the heatmaps' sums, which a softmax makes one
    assert ("ReduceSum" in {n.op_type for n in rewritten.graph.node if "reduce-before-conv" in n.name}) != softmax
    _same_on_random_inputs(original, rewritten, {"x": (3, 20, 24)})


class MapAlsoReturned(nn.Module):
    """The convolution's output is also an output: reordering would lose it, so nothing is rewritten."""

    def __init__(self):
        super().__init__()
        self.heat = nn.Conv2d(3, 2, 3, padding=1)
        self.linear = nn.Conv2d(3, 2 * 4, 3, padding=1)

    def forward(self, x):
        b, _, h, w = x.shape
        heat = torch.softmax(self.heat(x).reshape(b, 2, h * w), dim=-1).unsqueeze(-1)
        maps = self.linear(x)
        return maps.reshape(b, 2, 4, h * w) @ heat, maps


def test_a_map_used_elsewhere_is_left_alone(tmp_path):
    original = _exported(MapAlsoReturned().eval(), {"x": torch.rand(1, 3, 16, 16)}, tmp_path)
    rewritten, applied = apply_rewrites(original)
    assert applied == []
    assert [n.op_type for n in rewritten.graph.node] == [n.op_type for n in original.graph.node]


def test_the_build_records_the_rewrite_and_runs_it_on_both_backends(built):
    result = built("dsc")
    record = result.manifest["rewrites"]
    assert record["enabled"] and record["check"]["passed"] and record["check"]["inputs"] == 4
    reduce, separable = record["applied"]
    assert (reduce["rewrite"], reduce["module"]) == ("reduce-before-conv", "jacobian")
    assert (reduce["mult_adds_before"], reduce["mult_adds_after"]) == (230_904_960, 63_729_400)
    # the anti-aliased resize: a 13x13 Gaussian at stride 4 over 3 channels, as a 13x1 then a 1x13
    assert (separable["rewrite"], separable["module"]) == ("separable-depthwise", "down")
    assert (separable["mult_adds_before"], separable["mult_adds_after"]) == (
        3 * 13 * 13 * 64 * 64, 3 * 13 * 64 * (256 + 12) + 3 * 13 * 64 * 64)
    for o in record["check"]["outputs"].values():  # within the bound, raised where the graph amplifies rounding
        assert o["max_rel"] <= o["bound"] and o["bound"] >= REWRITE_BOUND
    fp32 = [a for a in result.manifest["artifacts"] if a["precision"] == "fp32"]
    assert {a["backend"] for a in fp32} == {"onnxruntime", "openvino"}
    assert all(a["parity"]["passed"] for a in fp32)
    report = (result.bundle / "report.md").read_text()
    assert "- Graph rewrite reduce-before-conv at jacobian: 230.9 M -> 63.7 M mult-adds" in report


def test_diagnose_names_the_module_a_rewrite_computes(built, tmp_path):
    """The Jacobian head's own output is gone from the rewritten graph: a changed head
    is found at the model output it feeds, and named as the module the rewrite computes."""
    from tests.test_cli import run

    bundle = built("dsc")
    model = models.create("dsc", checkpoint=bundle.manifest["checkpoint"]["path"])
    with torch.no_grad():
        model.jacobian.weight.add_(0.01 * torch.randn_like(model.jacobian.weight))
    torch.save(model.state_dict(), tmp_path / "changed.pt")
    result = run("export", "diagnose", "--variant", "dsc", "--checkpoint", str(tmp_path / "changed.pt"),
                 "--bundle", str(bundle.bundle))
    assert result.returncode == 1, result.stdout + result.stderr
    for backend in ("onnxruntime", "openvino"):
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"{backend}: "))
        assert line.startswith(f"{backend}: first divergence at the model's 'jacobian' output: max relative error ")
        assert line.endswith("before it, 'jacobian' (computed by the graph rewrite reduce-before-conv)")
    assert "'predictor" not in result.stdout.split("first divergence")[1]  # every module before it agreed


class Blurs(nn.Module):
    """A separable depthwise blur with a stride and a bias, beside a depthwise conv that is not separable."""

    def __init__(self):
        super().__init__()
        g = torch.exp(-torch.linspace(-2, 2, 5) ** 2)
        self.blur = nn.Conv2d(4, 4, 5, stride=2, padding=2, groups=4)
        self.other = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        with torch.no_grad():
            self.blur.weight.copy_(torch.outer(g, g * 0.5).expand(4, 1, 5, 5) * torch.arange(1.0, 5.0)[:, None, None, None])

    def forward(self, x):
        return self.other(torch.relu(self.blur(x)))


def test_a_separable_depthwise_conv_becomes_a_column_then_a_row(tmp_path):
    original = _exported(Blurs().eval(), {"x": torch.rand(1, 4, 30, 34)}, tmp_path)
    rewritten, applied = apply_rewrites(original)
    assert [a.rewrite for a in applied] == ["separable-depthwise"]  # the random 3x3 is left alone
    kernels = sorted(tuple(a.ints) for n in rewritten.graph.node for a in n.attribute if a.name == "kernel_shape")
    assert kernels == [(1, 5), (3, 3), (5, 1)]
    assert applied[0].mult_adds_before == 4 * 25 * 15 * 17
    _same_on_random_inputs(original, rewritten, {"x": (4, 30, 34)})


class UpBlocks(nn.Module):
    """Hourglass up-blocks in a user's model: nearest x2 then a dense 3x3 with a bias, twice; nearest x2
    then a depthwise 3x3 and a pointwise 1x1, and nearest x2 then a strided 3x3 (both left alone)."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Conv2d(4, 6, 3, padding=1)
        self.dense2 = nn.Conv2d(6, 3, 3, padding=1, bias=False)
        self.depthwise = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.pointwise = nn.Conv2d(3, 5, 1)
        self.strided = nn.Conv2d(5, 5, 3, stride=2, padding=1)

    def forward(self, x):
        def up(t):
            return nn.functional.interpolate(t, scale_factor=2.0, mode="nearest")

        y = self.dense2(up(torch.relu(self.dense(up(x)))))
        return self.strided(up(self.pointwise(self.depthwise(up(y)))))


def test_an_upsampling_and_its_dense_3x3_conv_become_one_transposed_conv(tmp_path):
    original = _exported(UpBlocks().eval(), {"x": torch.rand(1, 4, 6, 7)}, tmp_path)
    rewritten, applied = apply_rewrites(original)
    assert [a.rewrite for a in applied] == ["upsample-into-conv"] * 2
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("Resize") == 2 and ops.count("ConvTranspose") == 2  # the depthwise and strided convs keep theirs
    transposed = [{a.name: tuple(a.ints) for a in n.attribute} for n in rewritten.graph.node if n.op_type == "ConvTranspose"]
    assert all(t["kernel_shape"] == (4, 4) and t["strides"] == (2, 2) and t["pads"] == (1, 1, 1, 1) for t in transposed)
    # 36 mult-adds per input pixel and weight become 16: the first at 6x7, the second at 12x14
    assert [(a.mult_adds_before, a.mult_adds_after) for a in applied] == [
        (6 * 4 * 9 * 12 * 14, 6 * 4 * 16 * 6 * 7), (3 * 6 * 9 * 24 * 28, 3 * 6 * 16 * 12 * 14)]
    _same_on_random_inputs(original, rewritten, {"x": (4, 6, 7)})


class UNetUps(nn.Module):
    """A user's U-Net decoder: 2x2 transposed convs at stride 2, each joined to a skip and read by a
    dense 3x3 conv (the first with both biases; the second joined the other way round, without
    biases), and one that narrows 16 channels to 1 for a 3x3 of 16 (folded, it would be more work)."""

    def __init__(self):
        super().__init__()
        self.up1, self.merge1 = nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Conv2d(8, 4, 3, padding=1)
        self.up2 = nn.ConvTranspose2d(4, 2, 2, stride=2, bias=False)
        self.merge2 = nn.Conv2d(5, 16, 3, padding=1, bias=False)
        self.up3, self.merge3 = nn.ConvTranspose2d(16, 1, 2, stride=2), nn.Conv2d(2, 16, 3, padding=1)

    def forward(self, x, skip1, skip2, skip3):
        y = torch.relu(self.merge1(torch.cat([skip1, self.up1(x)], 1)))
        y = torch.relu(self.merge2(torch.cat([self.up2(y), skip2], 1)))
        return self.merge3(torch.cat([skip3, self.up3(y)], 1))


def test_a_transposed_conv_joined_to_a_skip_folds_into_the_next_3x3_conv(tmp_path):
    """The join is gone where the fold is less work: the 3x3 conv runs on the skip, a transposed 4x4 at
    stride 2 on the tensor the 2x2 read, and their sum is the output; the 2x2's bias reaches it through
    the 3x3's taps that fall inside the picture, at any size (the sides are dynamic)."""
    sides = {"x": [2, 3], "skip1": [2, 3], "skip2": [2, 3], "skip3": [2, 3]}
    example = {"x": torch.rand(1, 8, 3, 4), "skip1": torch.rand(1, 4, 6, 8), "skip2": torch.rand(1, 3, 12, 16),
               "skip3": torch.rand(1, 1, 24, 32)}
    original = _exported(UNetUps().eval(), example, tmp_path, dynamic=sides)
    rewritten, applied = apply_rewrites(original)
    assert [a.rewrite for a in applied] == ["transposed-into-conv"] * 2
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("Concat") == 1 + 1 and ops.count("ConstantOfShape") == 1  # the third join; the bias's ones
    kernels = sorted(tuple(a.ints) for n in rewritten.graph.node if n.op_type == "ConvTranspose"
                     for a in n.attribute if a.name == "kernel_shape")
    assert kernels == [(2, 2), (4, 4), (4, 4)]
    # per output pixel: the 2x2's C_in * C_mid, and 9 per weight of the 3x3; folded, 4 per weight of the 4x4
    assert [a.change for a in applied] == [f"{8 * 4 + 9 * 8 * 4} -> {9 * 4 * 4 + 4 * 8 * 4 + 9 * 4} mult-adds per output pixel",
                                           f"{4 * 2 + 9 * 5 * 16} -> {9 * 3 * 16 + 4 * 4 * 16} mult-adds per output pixel"]
    _same_on_random_inputs(original, rewritten, *({"x": (8, h, w), "skip1": (4, 2 * h, 2 * w), "skip2": (3, 4 * h, 4 * w),
                                                    "skip3": (1, 8 * h, 8 * w)} for h, w in ((3, 4), (5, 2))))


class Unpooling(nn.Module):
    """SegNet's pattern in a user's model: a ReLU (ties at zero in many windows), a 2x2 max-pool that
    keeps its indices, and the max-unpooling of a decoder's values at them."""

    def __init__(self):
        super().__init__()
        self.encode, self.decode, self.out = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        f = torch.relu(self.encode(x))
        pooled, indices = nn.functional.max_pool2d(f, 2, 2, return_indices=True)
        return self.out(nn.functional.max_unpool2d(self.decode(pooled), indices, 2, 2, output_size=f.shape[-2:]))


def test_unpooling_becomes_a_mask_of_each_windows_first_maximum(tmp_path):
    """The scatter, its index arithmetic and the pool's index output are gone; the outputs are the
    same to the bit, ReLU's ties at zero included (the first position of a window takes the value)."""
    original = _exported(Unpooling().eval(), {"x": torch.rand(1, 3, 20, 24)}, tmp_path)
    assert "ScatterND" in [n.op_type for n in original.graph.node]
    rewritten, applied = apply_rewrites(original)
    assert [a.rewrite for a in applied] == ["unpool-as-mask"]
    ops = [n.op_type for n in rewritten.graph.node]
    assert "ScatterND" not in ops and {"SpaceToDepth", "DepthToSpace"} <= set(ops)
    assert [len(n.output) for n in rewritten.graph.node if n.op_type == "MaxPool"] == [1]  # no indices computed
    rng = np.random.default_rng(3)
    for batch in (1, 3):
        feeds = {"x": rng.standard_normal((batch, 3, 20, 24)).astype(np.float32)}
        before, after = _outputs(original, feeds), _outputs(rewritten, feeds)
        assert all(np.array_equal(before[k], after[k]) for k in before)


def test_unpooling_of_an_odd_side_keeps_its_scatter(tmp_path):
    """A 2x2 pool of 21 rows drops the last one, which a window's mask cannot say: left as it is."""
    original = _exported(Unpooling().eval(), {"x": torch.rand(1, 3, 21, 24)}, tmp_path)
    _, applied = apply_rewrites(original)
    assert applied == []


def test_segnet_dsc_is_built_without_a_scatter(built):
    """Each of the four unpoolings rewritten, named after its module and checked exact; OpenVINO's
    IR has no scatter, and only the four pools (the 1x1 pools that offset the indices are gone)."""
    record = built("segnet-dsc").manifest["rewrites"]
    assert [(a["rewrite"], a["module"]) for a in record["applied"]] == [
        ("unpool-as-mask", f"net.up.{i}.unpool") for i in range(4)]
    assert record["check"]["passed"] and max(o["max_rel"] for o in record["check"]["outputs"].values()) == 0.0
    ir = (built("segnet-dsc").bundle / "openvino" / "model.xml").read_text()
    assert 'type="ScatterNDUpdate"' not in ir and ir.count('type="MaxPool"') == 4
