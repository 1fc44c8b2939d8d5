"""LiteRT, the third backend: `.tflite` models converted from PyTorch by litert-torch, FP16 weights and
static INT8 by AI Edge Quantizer, run by the LiteRT interpreter with XNNPACK, judged by the same parity
rules and INT8 policy as the other two, and chosen among three by the device."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from torch import nn

import runtime
from export.backends import REGISTRY as EXPORT
from export.contract import Exportable, infer_spec
from export.golden import golden_inputs
from export.pipeline import BuildSettings, build, build_model
from export.settings import check_options
from runtime.bundle import Artifact, Bundle
from runtime.compare import check_artifact, compare
from runtime.errors import UserError
from tests.test_own_model import run_without_torch

THREE = ("onnxruntime", "openvino", "litert")


@pytest.fixture(scope="module")
def three(tmp_path_factory, checkpoint_for):
    """dsc built for the three backends, INT8 included (a short search on the other two)."""
    return build(BuildSettings(variant="dsc", checkpoint=checkpoint_for("dsc"), backends=THREE,
                               out=tmp_path_factory.mktemp("three"), warmup=1, runs=5, tune_budget=0, memory=False,
                               quantize="int8", int8_budget=5))


def test_litert_fp32_and_fp16_are_converted_from_pytorch_and_held_to_their_bounds(three):
    m = three.manifest
    assert three.passed, three.failures
    shipped = {a["key"]: a for a in m["artifacts"]}
    fp32, fp16 = shipped["litert/fp32"], shipped["litert/fp16"]
    assert (fp32["file"], fp32["bound"]) == ("litert/model.tflite", 1e-3)
    assert fp32["parity"]["passed"] and max(o["max_rel"] for o in fp32["parity"]["outputs"].values()) <= 1e-3
    assert (fp16["file"], fp16["bound"]) == ("litert/model.fp16.tflite", 1e-2) and fp16["parity"]["passed"]
    assert fp16["bytes"] < 0.6 * fp32["bytes"]  # its weights are stored in FP16
    # dsc's heatmap reshape cannot stay dynamic in the converter: the model takes the example's shape
    record = m["export"]["backends"]["litert"]
    assert record["shape"] == {"image": [1, 3, 256, 256]}
    assert record["why_fixed"].startswith("the converter could not keep the dynamic axes: ")
    assert m["versions"]["ai-edge-litert"] == "2.3.0" and "litert/fp32" in m["latency"]


def test_litert_int8_is_its_own_quantizer_calibrated_on_the_builds_images_and_judged_by_the_policy(three):
    m = three.manifest
    found = m["quantization"]["search"]["litert"]
    made = m["quantization"]["plans"]["litert"]
    assert made["tool"].startswith("ai-edge-quantizer 0.10.0 static_wi8_ai8") and made["method"] == "minmax"
    assert made["kept_fp32"] == {"modules": [], "op_types": []}  # the full plan
    tried = {a["plan"]: a for a in found["attempts"]}
    # dsc's heatmap is a softmax over 58x58 pixels: LiteRT's INT8 softmax has a fixed output step of 1/256, so
    # every pixel rounds to zero and the keypoints to the centre; the selective plan keeps the softmax in float
    full, selective = tried["full"], tried["selective"]
    assert not full["passed"] and "heatmap: max relative error" in full["problems"][0]
    assert selective["parity"]["outputs"]["heatmap"]["cosine"] > 0.99 > full["parity"]["outputs"]["heatmap"]["cosine"]
    assert found["stopped"].startswith("the selective plan and the plans the other backends shipped were tried")
    shipped = [a for a in found["attempts"] if a["shipped"]]
    if shipped:  # within the bounds and faster than FP32, measured here
        assert shipped[0]["passed"] and {a["key"] for a in m["artifacts"]} >= {"litert/int8"}
        assert (three.bundle / "litert" / "model.int8.tflite").is_file()
    else:
        assert "litert/int8" in {f"{r['backend']}/{r['precision']}" for r in m["rejected"]}


def test_a_tflite_fixed_at_batch_1_runs_a_batch_one_image_at_a_time(three):
    bundle = Bundle.open(three.bundle)
    inputs, reference = bundle.golden()
    assert len(inputs["image"]) == 2
    with runtime.load(bundle, "litert", "fp32") as runner:
        out = runner.infer(inputs)
        assert runner.settings["delegate"] == "XNNPACK" and runner.settings["batch_fixed_at_1"]
        assert runner.fixed_shape is None  # dsc's sides are fixed by its spec: only the batch is the model's
    parity = compare(reference, out, bundle.artifact("litert", "fp32").bounds)
    assert parity.passed and {o.name for o in parity.outputs} == set(reference)


def test_verify_doctor_and_bench_choose_take_the_three_backends_without_torch(three, tmp_path):
    checked = run_without_torch("verify", str(three.bundle), "--json")
    assert checked.returncode == 0, checked.stderr
    rows = {f"{a['backend']} {a['precision']}": a for a in json.loads(checked.stdout)["artifacts"]}
    assert rows["litert fp32"]["status"] == rows["litert fp16"]["status"] == "pass"
    report = json.loads(run_without_torch("doctor", str(three.bundle), "--json").stdout)
    status = {f"{a['backend']} {a['precision']}": a for a in report["artifacts"]}
    assert status["litert fp32"]["status"] == "runs" and report["versions"]["ai-edge-litert"] == "2.3.0"
    assert status["litert fp16"]["status"] == "runs, no speed-up" and "weights stored in FP16" in status["litert fp16"]["why"]
    chosen = run_without_torch("bench", str(three.bundle), "--choose", "--runs", "5", "--warmup", "1", "--json")
    assert chosen.returncode == 0, chosen.stderr
    timed = json.loads(chosen.stdout)["artifacts"]
    assert {k.split()[0] for k in timed} == set(THREE) and all(t["p50_ms"] > 0 for t in timed.values())
    choice = json.loads(chosen.stdout)["choice"]
    assert f"{choice['backend']} {choice['precision']}" in timed


class FullyConv(nn.Module):
    """Convolutions alone: the converter keeps the dynamic sides."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, image):
        return self.body(image)


class SpatialSoftmax(nn.Module):
    """A softmax over each channel's pixels, as dsc's keypoint head has: the reshape's sizes must be known
    to the converter, which then fixes the input's shape."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

    def forward(self, image):
        y = self.conv(image)
        b, c, h, w = y.shape
        return self.head(torch.softmax(y.reshape(b, c, h * w), -1).reshape(b, c, h, w))


def litert_fp32(module: nn.Module, folder):
    """The module's FP32 .tflite as a build converts it (dynamic batch and sides, example 32x48), its
    conversion record, its runner, and the module with its contract."""
    spec = infer_spec(module.eval(), {"image": torch.rand(2, 3, 32, 48)}, type(module).__name__.lower(),
                      dynamic={"image": [0, 2, 3]})
    model = Exportable(module, spec).eval()
    files, record = EXPORT["litert"].convert(model, golden_inputs(spec, 2, 0), None, folder, ("fp32",))
    runner = runtime.backends.REGISTRY["litert"].runner(files["fp32"], spec.inputs,
                                                         [{"name": n} for n in spec.outputs], "fp32", 2)
    return record, runner, model


def reference(model, size):
    x = golden_inputs(model.spec, 1, 2, size=size)
    with torch.no_grad():
        return x, {n: v.numpy() for n, v in zip(model.spec.outputs, model(*(torch.from_numpy(x[i]) for i in x)))}


def test_diagnose_names_the_changed_module_in_the_tflite_too(three, tmp_path):
    """The interpreter keeps every tensor; the converter names each after its module (a ModuleList's
    element by its index), so the first divergence is named on LiteRT as on the other two."""
    import models
    from export.diagnose import diagnose

    model = models.create("dsc", checkpoint=three.manifest["checkpoint"]["path"])
    with torch.no_grad():
        model.predictor.encoder.down_blocks[2].conv.depthwise.weight.mul_(1.05)
    found = {d.backend: d for d in diagnose(model, models.spec("dsc"), three.bundle)}
    assert set(found) == set(THREE)
    for d in found.values():
        assert d.first_divergence.module == "predictor.encoder.down_blocks.2.conv.depthwise", d.summary()
    litert = found["litert"]
    agreeing = [p.module for p in litert.points[:litert.points.index(litert.first_divergence)]]
    assert "predictor.encoder.down_blocks.1" in agreeing and len(litert.points) >= 30  # matched through the graph


def test_a_model_the_converter_keeps_dynamic_runs_at_every_size(tmp_path):
    record, runner, model = litert_fp32(FullyConv(), tmp_path)
    assert record == {"converter": "litert_torch.convert", "shape": "dynamic"}
    with runner:
        assert runner.fixed_shape is None and "batch_fixed_at_1" not in runner.settings
        for size in ((32, 48), (16, 64)):
            x, ref = reference(model, size)
            got = runner.infer(x)
            assert next(iter(got.values())).shape[2:] == size and compare(ref, got, {n: 1e-3 for n in ref}).passed


def test_a_model_the_converter_fixes_is_judged_at_its_size_and_refuses_another_in_one_line(tmp_path):
    """The .tflite takes the example's size: parity skips the other stored sizes and says why, and
    another size is one clear error."""
    record, runner, model = litert_fp32(SpatialSoftmax(), tmp_path)
    assert record["shape"] == {"image": [1, 3, 32, 48]}
    assert record["why_fixed"].startswith("the converter could not keep the dynamic axes: TypeError: ")
    sets = {"golden": reference(model, None), "size.16x32": reference(model, (16, 32))}
    outputs = list(model.spec.outputs)
    with runner:
        with pytest.raises(ValueError, match=r"^input 'image': this \.tflite takes 3x32x48 only \(its converter "
                                             r"fixed the shape\), not 3x16x32$"):
            runner.infer(sets["size.16x32"][0])
        artifact = Artifact("litert/model.tflite", "litert", "fp32", 1e-3, bounds=dict.fromkeys(outputs, 1e-3))
        parity = check_artifact(runner, artifact, sets, None)
    assert parity.passed and [o.name for o in parity.outputs] == outputs
    assert parity.not_judged == {"size.16x32": "its converter fixed the input shape (image 3x32x48)"}


def test_a_backend_asked_for_without_its_converter_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(EXPORT["litert"], "needs", ("litert_torch_is_not_here",))
    with pytest.raises(UserError, match=r"^--backends litert needs litert_torch_is_not_here, not installed here: "
                                        r"pip install 'edge-export\[litert\]', or leave litert out of --backends$"):
        check_options(dataclasses.replace(BuildSettings(variant="dsc"), backends=THREE))
    check_options(BuildSettings(variant="dsc"))  # the default build does not ask for it


def test_deploy_bench_on_a_device_over_ssh_times_and_chooses_among_the_three(three, tmp_path):
    """A real OpenSSH server on 127.0.0.1: the kit carries the three backends' wheels, the device
    installs them offline, verifies every artifact and times them all, and the table shows the three."""
    import shutil

    from tests.devices import SshServers
    from tests.test_deploy import deploy

    bundle = tmp_path / "dsc"
    shutil.copytree(three.bundle, bundle)
    servers = SshServers()
    try:
        port = servers.start()
        servers.trust(port)
        done = deploy(bundle, servers, f"edge-device@127.0.0.1:{port}{servers.device_folder()}", extra=("--bench",))
    finally:
        servers.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(next((bundle / "devices").glob("*.json")).read_text())
    assert record["ok"] and {v for v in record["doctor"]["versions"] if record["doctor"]["versions"][v]} >= {
        "onnxruntime", "openvino", "ai-edge-litert"}
    timed = record["bench"]["artifacts"]
    assert {k.split()[0] for k in timed} == set(THREE)
    assert {f"{a['backend']} {a['precision']}" for a in record["verify"]["artifacts"] if a["status"] == "pass"} == set(
        timed)
    rows = [line for line in done.stdout.splitlines() if "127.0.0.1" in line and " fp" in line]
    assert {b for b in THREE if any(f" {b} fp32 " in line for line in rows)} == set(THREE), done.stdout
    choice = record["bench"]["choice"]
    assert f"{choice['backend']} {choice['precision']}" in timed


def test_a_users_own_model_builds_for_litert_from_the_command_line(tmp_path):
    """`--model` takes the same road: the user's module, converted by litert-torch, held to LiteRT's bounds."""
    from tests.test_cli import run

    (tmp_path / "net.py").write_text("from torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n"
                                     "        super().__init__()\n        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, "
                                     "padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))\n\n    def forward(self, image):\n"
                                     "        return self.body(image)\n")
    done = run("export", "build", "--model", f"{tmp_path / 'net.py'}:Net", "--input", "image:1x3x32x48", "--dynamic",
               "image:0,2,3", "--backends", "onnxruntime,litert", "--out", str(tmp_path / "out"),
               "--no-memory", "--tune-budget", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((tmp_path / "out" / "Net" / "manifest.json").read_text())
    shipped = {a["key"]: a for a in manifest["artifacts"]}
    assert {"onnxruntime/fp32", "litert/fp32", "litert/fp16"} <= set(shipped)
    assert shipped["litert/fp32"]["parity"]["passed"] and manifest["export"]["backends"]["litert"]["shape"] == "dynamic"
    # judged at the second size too, as the other backends are
    assert any("@" in name for name in shipped["litert/fp32"]["parity"]["outputs"])
    assert "LiteRT (fp32, fp16), converted from PyTorch" in done.stdout


def test_an_artifact_its_runtime_cannot_run_is_not_shipped_and_the_build_goes_on(tmp_path):
    """LiteRT's interpreter refuses segnet-dsc's converted graph (a BROADCAST_TO it cannot prepare):
    its FP32 and FP16 are rejected with the runtime's words, and ONNX Runtime's FP32 ships."""
    made = build(BuildSettings(variant="segnet-dsc", out=tmp_path, backends=("onnxruntime", "litert"),
                               warmup=1, runs=5, tune_budget=0, memory=False))
    assert made.passed, made.failures
    assert [(a["backend"], a["precision"]) for a in made.manifest["artifacts"]] == [("onnxruntime", "fp32")]
    rejected = {(r["backend"], r["precision"]): r["reason"] for r in made.manifest["rejected"]}
    assert rejected["litert", "fp32"].startswith("litert/model.tflite on litert (fp32): its runtime cannot run it "
                                                 "here: RuntimeError: ")
    assert "BROADCAST_TO" in rejected["litert", "fp32"]
    assert rejected["litert", "fp16"] == ("litert/model.fp16.tflite (fp16): not without its backend's FP32, "
                                          "which its runtime cannot run here")
    assert not (made.bundle / "litert").exists() or not any((made.bundle / "litert").iterdir())


class Rows(nn.Module):
    """A convolution, then each row of its map sorted (`sort`) or ranked (`argsort`). ONNX exports both (TopK)
    and ONNX Runtime runs them; litert-torch converts the sort to a STABLEHLO_SORT that LiteRT's interpreter
    has no kernel for, and cannot lower the rank's comparator at all."""

    def __init__(self, how: str):
        super().__init__()
        self.conv, self.how = nn.Conv2d(3, 4, 3, padding=1), how

    def forward(self, image):
        y = self.conv(image)
        return torch.sort(y, dim=3).values if self.how == "sort" else torch.argsort(y, dim=3).float()


def rows_build(how: str, out, backends):
    spec = infer_spec(Rows(how), torch.rand(1, 3, 16, 16), how)
    return build_model(Rows(how).eval(), spec, BuildSettings(out=out, backends=backends, warmup=1, runs=5,
                                                             tune_budget=0, memory=False))


def rejections(made) -> dict[tuple[str, str], str]:
    assert made.passed, made.failures
    assert [(a["backend"], a["precision"]) for a in made.manifest["artifacts"]] == [("onnxruntime", "fp32")]
    rejected = {(r["backend"], r["precision"]): r["reason"] for r in made.manifest["rejected"]}
    assert set(rejected) == {("litert", "fp32"), ("litert", "fp16")}
    assert not any("\n" in why for why in rejected.values())
    return rejected


def test_a_model_its_converter_cannot_convert_leaves_that_backend_out_with_the_converters_words(tmp_path):
    """Every precision of the backend is rejected with the converter's complaint in one line, nothing it wrote
    stays, and the others ship. With no other backend the build is refused in one line and leaves no folder."""
    made = rows_build("argsort", tmp_path / "two", ("onnxruntime", "litert"))
    rejected = rejections(made)
    assert rejected["litert", "fp32"].startswith("litert/model.tflite on litert (fp32): its converter could not "
                                                 "convert the model: ConversionError: ValueError: ")
    assert "comparator block argument" in rejected["litert", "fp32"]
    assert "site-packages" not in rejected["litert", "fp32"]
    assert not (made.bundle / "litert").exists()
    assert "litert" not in made.manifest["export"].get("backends", {})

    with pytest.raises(UserError, match=r"^no backend's converter could convert the model: litert: "
                                        r"ConversionError: ValueError: .*comparator block argument"):
        rows_build("argsort", tmp_path / "alone", ("litert",))
    assert not (tmp_path / "alone").exists()


def test_a_model_its_runtime_cannot_load_is_not_shipped_and_the_build_goes_on(tmp_path):
    made = rows_build("sort", tmp_path / "two", ("onnxruntime", "litert"))
    rejected = rejections(made)
    assert rejected["litert", "fp32"].startswith("litert/model.tflite on litert (fp32): its runtime cannot load it "
                                                 "here: ValueError: Didn't find op for builtin opcode 'STABLEHLO_SORT'")
    assert rejected["litert", "fp16"] == ("litert/model.fp16.tflite (fp16): not without its backend's FP32, "
                                          "which its runtime cannot load here")
    assert not (made.bundle / "litert").exists() or not any((made.bundle / "litert").iterdir())

    with pytest.raises(UserError, match=r"^no backend's runtime could load the FP32 model here: ValueError: "
                                        r"Didn't find op for builtin opcode 'STABLEHLO_SORT'"):
        rows_build("sort", tmp_path / "alone", ("litert",))
    assert not (tmp_path / "alone").exists()


class Upsampler(nn.Module):
    """ERFNet's and ESNet's upsampling: a 3x3 transposed convolution of stride 2, padding 1 and output padding 1,
    which litert-torch cannot lower as it is ("failed to legalize operation 'mhlo.convolution'")."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)

    def forward(self, image):
        return self.up(torch.relu(self.conv(image)))


def test_a_transposed_convolution_with_output_padding_converts_as_an_unpadded_one_cropped(tmp_path):
    spec = infer_spec(Upsampler(), torch.rand(1, 3, 16, 16), "upsampler")
    made = build_model(Upsampler().eval(), spec, BuildSettings(out=tmp_path, backends=("litert",), warmup=1, runs=5,
                                                                tune_budget=0, memory=False))
    assert made.passed, made.failures
    assert made.manifest["export"]["backends"]["litert"]["rewritten"] == [
        "up: ConvTranspose2d with output_padding, as one without padding, cropped"]
    shipped = {a["key"]: a for a in made.manifest["artifacts"]}
    assert shipped["litert/fp32"]["parity"]["outputs"]["output"]["max_rel"] < 1e-5
    assert made.manifest["outputs"] == [{"name": "output", "shape": ["batch", 4, 32, 32], "dtype": "float32"}]
