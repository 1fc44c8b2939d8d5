"""INT8: calibration input checks, the plans, and the never-slower, never-worse rule."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image

import models
import runtime
from export import calibration, quantize
from export.pipeline import BuildSettings, build
from runtime.verify import verify
from tests.test_cli import run
from tests.test_failures import one_line_exit_2


@pytest.fixture
def calib_dirs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_text("not a png")
    (tmp_path / "good").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(tmp_path / "good" / f"{i}.jpg")
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["--quantize", "fp8"], "error: unknown --quantize precision 'fp8'; valid: int8"),
    (["--quantize", "int8", "--calib-method", "median"],
     "error: unknown --calib-method 'median'; valid: minmax, entropy, percentile, all"),
    (["--quantize", "int8", "--calib-samples", "0"], "error: --calib-samples 0 must be at least 1"),
    (["--quantize", "int8", "--calib-dir", "DIR/missing"], "error: --calib-dir 'DIR/missing' is not a folder"),
    (["--quantize", "int8", "--calib-dir", "DIR/empty"], "error: --calib-dir 'DIR/empty' holds no images"),
    (["--quantize", "int8", "--calib-dir", "DIR/broken"],
     "error: --calib-dir 'DIR/broken': none of its 1 image files is readable"),
    (["--calib-dir", "DIR/good"], "error: --calib-dir is only used with --quantize int8"),
])
def test_quantization_settings_are_checked_before_any_work(calib_dirs, args, message):
    args = [a.replace("DIR", str(calib_dirs)) for a in args]
    text = one_line_exit_2(run("export", "build", "--variant", "dsc", "--out", str(calib_dirs / "out"), *args))
    assert text.startswith(message.replace("DIR", str(calib_dirs))), text
    assert not (calib_dirs / "out" / "dsc").exists()


def test_calibration_from_a_folder_is_preprocessed_as_the_manifest_says(calib_dirs):
    spec = models.spec("dsc")
    feeds, info = calibration.calibration_set(spec, calib_dirs / "good", samples=2)
    data = feeds["image"]
    assert data.shape == (2, 3, 256, 256) and data.dtype == np.float32 and 0 <= data.min() and data.max() <= 1
    assert info["samples"] == 2 and info["source"].startswith("2 images from") and len(info["sha256"]) == 64
    again, _ = calibration.calibration_set(spec, None, samples=4)
    assert again["image"].shape == (4, 3, 256, 256)


def test_the_selective_plan_keeps_depthwise_convs_and_heads_in_fp32(built, tmp_path):
    bundle = built("dsc").bundle
    data, _ = calibration.calibration_set(models.spec("dsc"), None, samples=4)
    quantize.quantize_onnxruntime(bundle / "model.onnx", tmp_path / "full.onnx", data, "minmax", "full")
    info = quantize.quantize_onnxruntime(bundle / "model.onnx", tmp_path / "sel.onnx", data, "minmax", "selective")
    kept = info["kept_fp32"]["nodes"]
    source = onnx.load(str(bundle / "model.onnx"))
    depthwise = [n.name for n in source.graph.node if n.op_type == "Conv" and any(
        a.name == "group" and a.i > 1 for a in n.attribute)]
    # + the keypoint head; the Jacobian head is MatMuls once rewritten (reduce-before-conv), kept by op type
    assert set(depthwise) <= set(kept) and len(kept) == len(depthwise) + 1
    assert "MatMul" in info["kept_fp32"]["op_types"]
    selective = onnx.load(str(tmp_path / "sel.onnx"))
    produced_by = {o: n.op_type for n in selective.graph.node for o in n.output}
    for node in selective.graph.node:
        if node.name in kept:
            assert produced_by.get(node.input[1]) != "DequantizeLinear", node.name  # FP32 weights
    count = lambda m: sum(n.op_type == "QuantizeLinear" for n in m.graph.node)  # noqa: E731
    assert 0 < count(selective) < count(onnx.load(str(tmp_path / "full.onnx")))


def test_a_layernorm_over_channels_and_space_is_kept_in_fp32_by_name_and_its_neighbours_quantized(tmp_path):
    """quantize_static fails on a LayerNormalization whose bias spans (C, H, W) (the layernorm variant's
    norm): such a node stays FP32, named in the record, and the convolutions around it are still INT8."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.LayerNorm([8, 16, 16]),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1)).eval()
    with torch.no_grad():
        net[1].bias.normal_()  # a bias quantize_static must fit into int32
    torch.onnx.export(net, (torch.rand(1, 3, 16, 16),), str(tmp_path / "ln.onnx"), input_names=["image"],
                      dynamo=False)
    data = {"image": np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)}
    info = quantize.quantize_onnxruntime(tmp_path / "ln.onnx", tmp_path / "ln.int8.onnx", data, "minmax", "full")
    made = onnx.load(str(tmp_path / "ln.int8.onnx"))
    norms = [n.name for n in made.graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 1 and info["kept_fp32_by_tool"]["nodes"] == norms
    assert info["kept_fp32_by_tool"]["why"].startswith("a normalization whose scale and bias span more than")
    produced_by = {o: n.op_type for n in made.graph.node for o in n.output}
    assert all(produced_by.get(n.input[1]) == "DequantizeLinear" for n in made.graph.node if n.op_type == "Conv")
    assert produced_by.get(next(n for n in made.graph.node if n.op_type == "LayerNormalization").input[1]) is None


def test_int8_ships_the_fastest_plan_within_the_bounds_and_records_the_search(checkpoint_for, tmp_path):
    """The policy: the full plan; if it is accurate enough and faster, it ships; if it is slower,
    the selective plan; else per-layer sensitivity and the frontier (1, 2, 4, ... layers in FP32, then
    bisection), within the budget; with --qat, the same search on the fine-tuned model where the full
    plan did not ship. What ships is the attempt within the bounds with the largest speed-up over its
    FP32 twin, no slower than it."""
    budget = 15.0
    result = build(BuildSettings(variant="dsc", checkpoint=checkpoint_for("dsc"), out=tmp_path, quantize="int8",
                                 int8_anyway=True, int8_budget=budget, qat=5, calib_samples=8, warmup=3, runs=20))
    assert result.passed
    m = result.manifest
    assert m["quantization"]["calibration"]["samples"] == 8 and m["golden"]["sets"] == {"golden": 2, "task": 16}
    shipped = {a["backend"]: a for a in m["artifacts"] if a["precision"] == "int8"}
    rejected = {a["backend"]: a for a in m["rejected"] if a["precision"] == "int8"}
    assert set(shipped) | set(rejected) == {"onnxruntime", "openvino"} and not set(shipped) & set(rejected)
    for backend, found in m["quantization"]["search"].items():
        qat = [a for a in found["attempts"] if a["plan"].startswith("QAT ")]
        attempts = [a for a in found["attempts"] if a not in qat]
        full = attempts[0]
        if full["shipped"]:
            assert not qat
        else:  # QAT's own search, on the same record
            assert qat[0]["plan"] == "QAT full" and all(a["method"] == "minmax, QAT 5 steps" + (
                " QDQ" if backend == "openvino" else "") for a in qat)
        assert full["plan"] == "full" and full["kept_fp32"] == 0
        raced = found["full_vs_fp32"]  # where the full plan first measured slower, raced again
        assert (raced is not None) == (not full["passed"] and full["speedup"] <= 1)
        if full["passed"]:
            assert len(attempts) == 1
        elif raced and raced["real"] and raced["ratio_p50"] > 1:  # slower for sure: only the selective plan
            assert [a["plan"] for a in attempts] == ["full", "selective"]
            assert raced["interval"][0] > 1 and "95% interval" in found["stopped"]
        else:  # too inaccurate but faster (or not surely slower): the layers, ranked, then the frontier
            assert found["sensitivity"] or found["unmeasured"]
            for layer in found["sensitivity"]:
                assert layer["nodes"] and layer["damage"] >= 0 and layer["ms_saved"] >= 0
            counts = [int(a["plan"].split()[0]) for a in attempts if a["plan"].endswith("in FP32")]
            doubling = [c for c in counts if c & (c - 1) == 0]  # 1, 2, 4, ... until one passes
            assert counts[:len(doubling)] == [2 ** i for i in range(len(doubling))], counts
        assert found["spent_s"] <= found["budget_s"] + 30  # an attempt under way finishes past the budget
        passing = [a for a in found["attempts"] if a["passed"]]
        if backend in shipped:
            best = max(passing, key=lambda a: a["speedup"])
            assert best["shipped"] and best["p50_ms"] <= best["fp32_p50_ms"] and best["task"]["keypoint_error_px"] <= 0.5
            assert shipped[backend]["plan"] == best["plan"] and (tmp_path / "dsc" / shipped[backend]["file"]).is_file()
        else:
            assert not passing and not any(a["shipped"] for a in found["attempts"])
            assert rejected[backend]["reason"].startswith(f"{len(found['attempts'])} INT8 plan")
            assert not (tmp_path / "dsc" / rejected[backend]["file"]).exists()
    report = (tmp_path / "dsc" / "report.md").read_text()
    assert "Calibrated on 8 generated keypoints training images" in report and "INT8 on " in report
    searched = any(len(f["attempts"]) > 1 for f in m["quantization"]["search"].values())
    assert ("int8_frontier.png" in m["files"]) == searched == ("int8_frontier.png" in report)
    assert not any(name.startswith(".work") for name in m["files"])
    assert verify(tmp_path / "dsc").passed
    for backend in shipped:
        with runtime.load(tmp_path / "dsc", backend, "int8") as runner:
            assert runner.infer(runtime.Bundle.open(tmp_path / "dsc").golden("task")[0])["value"].shape == (16, 10, 2)
    json.dumps(m)  # the manifest stays plain JSON
    printed = run("export", "int8", str(tmp_path / "dsc"), "--json")
    on_disk = json.loads((tmp_path / "dsc" / "manifest.json").read_text())["quantization"]
    assert printed.returncode == 0 and json.dumps(json.loads(printed.stdout)) == json.dumps(on_disk)
    for found in m["quantization"]["search"].values():  # ranked: damage per ms saved, highest first
        assert [x["per_ms"] for x in found["sensitivity"]] == sorted((x["per_ms"] for x in found["sensitivity"]),
                                                                     reverse=True)


@pytest.mark.parametrize("flags, refused", [
    (["avx2", "fma"], True), (["avx2", "avx_vnni"], False), (["avx512f", "avx512_vnni"], False),
    (["amx_int8"], False), (["asimddp"], False), ([], True),
])
def test_int8_is_refused_up_front_on_a_cpu_where_it_cannot_pay(flags, refused):
    from export.settings import check_int8_pays
    from runtime.errors import UserError

    if refused:
        with pytest.raises(UserError, match="no INT8 dot-product instructions .* pass --int8-anyway"):
            check_int8_pays(flags)
    else:
        check_int8_pays(flags)


def test_each_calibration_method_gives_its_own_ranges(built, tmp_path):
    """quantize_static's own entropy calibrator has as many histogram bins as
    quantized bins, which makes it min-max; the build calibrates entropy with 2048 bins."""
    bundle = built("dsc").bundle
    data, _ = calibration.calibration_set(models.spec("dsc"), None, samples=4)
    scales = {}
    for method in quantize.CALIB_METHODS:
        dst = tmp_path / f"{method}.onnx"
        quantize.quantize_onnxruntime(bundle / "model.onnx", dst, data, method, "full")
        scales[method] = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(dst)).graph.initializer
                          if i.name.endswith("_scale")}
    for a, b in (("minmax", "entropy"), ("minmax", "percentile"), ("entropy", "percentile")):
        assert scales[a].keys() == scales[b].keys()
        differ = sum(not np.allclose(scales[a][k], scales[b][k]) for k in scales[a])
        assert differ >= len(scales[a]) // 4, (a, b, differ)


def test_quantization_aware_finetuning_lowers_the_simulated_int8_disagreement():
    """Distillation with INT8 rounding simulated: the loss (the rounded model against the FP32
    one, each output over its variance) falls; the result is a plain module again, the original untouched."""
    import torch

    from export.contract import Exportable, infer_spec
    from export.qat import finetune
    from tests.own_models.fusion import RGBDSegmenter

    torch.manual_seed(0)
    module = RGBDSegmenter()
    spec = infer_spec(module, (torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32)), "rgbd")
    model = Exportable(module, spec).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    feeds = {"rgb": rng.random((16, 3, 32, 32), np.float32), "depth": rng.random((16, 1, 32, 32), np.float32)}
    losses: list[float] = []
    tuned = finetune(model, feeds, steps=60, lr=3e-3, batch=4, losses=losses)
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(tuned.state_dict()) == set(before)  # no parametrization or observer left behind
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    x = (torch.from_numpy(feeds["rgb"][:1]), torch.from_numpy(feeds["depth"][:1]))
    assert [o.shape for o in tuned(*x)] == [o.shape for o in model(*x)]


def test_the_int8_record_of_a_bundle_without_int8_is_refused_in_one_line(built):
    bundle = built("dsc").bundle
    text = one_line_exit_2(run("export", "int8", str(bundle)))
    assert text == f"error: bundle {str(bundle)!r} was built without INT8; build it with --quantize int8", text


def test_an_int8_speed_up_measured_on_a_busy_machine_ships_nothing():
    """Within the bounds and 1.5x faster than FP32 by one p50, but timed while other processes held a core:
    its speed is undecided, so the plan is not shipped, and the record says why."""
    from runtime.bench import difference
    from runtime.compare import Parity

    rng = np.random.default_rng(0)
    fp32, int8 = rng.gamma(20, 0.5, 200), rng.gamma(20, 0.5 / 1.5, 200)
    within = Parity(outputs=[], task={"keypoint_error_px": 0.3}, task_bounds={"keypoint_error_px": ("max", 0.5)})

    def attempt(others: float) -> quantize.Attempt:
        return quantize.Attempt(quantize.full_plan(), "minmax", within, {"p50_ms": float(np.median(int8))},
                                float(np.median(fp32)), versus=difference(fp32, int8, others_cores=others))

    quiet, busy = attempt(0.02), attempt(1.0)
    assert quiet.passed and quiet.speedup > 1.4
    assert not busy.passed and busy.problems == [
        "its speed against FP32 is undecided: other processes held 1.00 cores on average while it was timed "
        "(build on a quiet machine to decide)"]
    search = quantize.Search("onnxruntime", "minmax", 10.0, [busy])
    search.ship_best()
    assert search.shipped is None and "undecided" in search.reason()


def test_an_int8_plan_a_hair_faster_than_fp32_is_not_shipped():
    """Within the bounds and a p50 0.5% below FP32's on a quiet machine: the interval of the ratio holds 1,
    so it is no speed-up, and it is not shipped."""
    from runtime.bench import difference
    from runtime.compare import Parity

    fp32 = np.random.default_rng(0).gamma(20, 0.5, 200)
    int8 = fp32 * 0.995
    within = Parity(outputs=[], task={"keypoint_error_px": 0.3}, task_bounds={"keypoint_error_px": ("max", 0.5)})
    versus = difference(fp32, int8, others_cores=0.0)
    hair = quantize.Attempt(quantize.full_plan(), "minmax", within, {"p50_ms": float(np.median(int8))},
                            float(np.median(fp32)), versus=versus)
    low, high = versus["interval"]
    assert hair.p50_ms < hair.fp32_p50_ms and low < 1 < high
    assert not hair.passed and hair.problems == [
        f"not surely faster than FP32 ({hair.p50_ms:.2f} vs {hair.fp32_p50_ms:.2f} ms p50; the 95% interval of "
        f"their ratio, {low:.2f} to {high:.2f}, holds 1)"]
