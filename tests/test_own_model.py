"""Your own model through the whole pipeline: `--model FILE.py:NAME` or `package.module:NAME`,
`export.build(module, example_inputs)`, and every failure a user's model brings in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import runtime
from tests.test_cli import REPO, run
from tests.test_failures import one_line_exit_2

OWN = REPO / "tests" / "own_models"
NO_TORCH = ("torch", "models", "export", "onnx", "onnxsim", "monai", "efficientnet_pytorch")


def run_without_torch(*args: str) -> subprocess.CompletedProcess:
    """`python -m runtime ARGS` in a process where torch, the build side and the model packages
    cannot be imported: what a device with only the runtime install has."""
    code = (f"import sys\nfor name in {NO_TORCH!r}:\n    sys.modules[name] = None\n"
            f"from runtime.cli import main\nsys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)


def photo(path: Path, width: int = 150, height: int = 100) -> Path:
    rng = np.random.default_rng(7)
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path)
    return path


# name -> (--model, its flags, the size a 150x100 photo runs at, whether infer draws a picture)
THIRD_PARTY = {
    # MONAI's residual U-Net from a factory in a file, at any size that is a multiple of 8, judged on labelled
    # masks (PETS: the pet task's held-out pictures, written as images/ and masks/)
    "UNet": (f"{OWN}/third_party.py:monai_unet", "--input", "image:1x3x64x96", "--dynamic", "image:0,2,3",
             "--multiple", "8", "--task", "segmentation", "--data", "PETS", "--eval-samples", "4", [152, 96], True),
    # MONAI's UNet++ straight from the installed package: four deep-supervision outputs in a list
    "unetpp": ("monai.networks.nets:BasicUNetPlusPlus", "--model-arg", "spatial_dims=2", "--model-arg",
               "in_channels=3", "--model-arg", "out_channels=2", "--model-arg", "features=(8, 8, 16, 32, 64, 8)",
               "--model-arg", "deep_supervision=True", "--input", "image:1x3x64x64", "--dynamic", "image:0,2,3",
               "--multiple", "16", "--task", "segmentation", "--task-output", "output3", "--name", "unetpp",
               [144, 96], True),
    # EfficientNet-B0 (efficientnet-pytorch), a classifier: task none, ImageNet normalisation
    "EfficientNet": (f"{OWN}/third_party.py:efficientnet_b0", "--input", "image:1x3x96x96",
                     "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", [96, 96], False),
}


@pytest.mark.parametrize("name", THIRD_PARTY)
def test_a_model_written_by_others_builds_verifies_without_torch_and_infers(name, tmp_path):
    from models.labelled import write_heldout

    ref, *flags, input_size, picture = THIRD_PARTY[name]
    if "PETS" in flags:
        flags[flags.index("PETS")] = str(write_heldout("unet-dsc", tmp_path / "pets", 6, 96))
    result = run("export", "build", "--model", ref, *flags, "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model contract: inputs image" in result.stdout
    bundle = runtime.Bundle.open(tmp_path / name)
    spec = bundle.spec
    assert spec.source["model"] == ref
    assert {a.key for a in bundle.artifacts} >= {"onnxruntime/fp32", "openvino/fp32"}
    assert all(a.parity["passed"] for a in bundle.artifacts)

    verify = run_without_torch("verify", str(bundle.path))
    assert verify.returncode == 0 and verify.stdout.strip().endswith("verify: passed"), verify.stdout + verify.stderr
    if "--data" in flags:  # its figures on the labels: at the build, on the device, and on the whole folder
        e = bundle.manifest["evaluation"]
        assert e["images"] == 4 and e["available"] == 6 and e["max_drop"] == {"miou": 0.01}
        assert f"ok    4 labelled images in the bundle; PyTorch FP32 on them: miou {e['reference']['miou']:.4f}" \
            in verify.stdout and "on the labels" in verify.stdout
        scored = json.loads(run("export", "evaluate", str(bundle.path), "--data", flags[flags.index("--data") + 1],
                                "--json").stdout)
        assert scored["images"] == 6 and scored["skipped"] == [] and len(scored["artifacts"]) == len(bundle.artifacts)
        assert all(0 <= f["miou"] <= 1 and len(f["iou"]) == 3 for f in scored["artifacts"].values())

    if name == "EfficientNet":  # a classifier (task none): scored on inputs with the outputs expected of them
        expected_outputs_are_scored_by_the_parity_metric(bundle, tmp_path / "pairs")

    infer = run_without_torch("infer", str(bundle.path), str(photo(tmp_path / "photo.jpg")), "--out",
                              str(tmp_path / "pred"))
    assert infer.returncode == 0, infer.stderr
    found = json.loads((tmp_path / "pred" / "photo.json").read_text())
    outputs = np.load(tmp_path / "pred" / "photo.npz")
    assert sorted(outputs.files) == sorted(spec.outputs)
    assert found["input_size"] == input_size  # a dynamic model runs at the photo's size, rounded to its multiple
    assert (tmp_path / "pred" / "photo.png").is_file() == picture
    assert ("infer draws no picture" in infer.stdout) != picture
    assert np.asarray(found.get("mask", np.zeros((100, 150)))).shape == (100, 150)  # a mask: the photo's size


def expected_outputs_are_scored_by_the_parity_metric(bundle: runtime.Bundle, folder: Path) -> None:
    """Three .npz files of inputs and ONNX Runtime FP32's own outputs (the model has random weights, which
    its manifest cannot remake, so PyTorch says why it has no row), a file without the output and a
    truncated one: each artifact's max relative error against them, within its parity bound."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    with runtime.load(bundle, "onnxruntime", "fp32") as runner:
        for i in range(3):
            x = rng.random((1, 3, 96, 96), np.float32)
            np.savez(folder / f"pair{i}.npz", image=x, **runner.infer(x))
    np.savez(folder / "no-output.npz", image=x)
    data = (folder / "pair0.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(data[: len(data) // 2])
    found = json.loads(run("export", "evaluate", str(bundle.path), "--data", str(folder), "--json").stdout)
    assert found["images"] == 3 and found["reference"] == "onnxruntime fp32"
    assert found["not_run"]["pytorch fp32"] == ("the model remade from its manifest does not give the build's "
                                                "golden outputs (random weights?)")
    skipped = {s["file"]: s["why"] for s in found["skipped"]}
    assert skipped["no-output.npz"] == "lacks output; each file holds the inputs image and the expected outputs " \
                                       "output, by those names"
    assert skipped["truncated.npz"].startswith("is not a readable .npz file (")
    assert found["artifacts"]["onnxruntime fp32"]["max_rel"] == 0.0
    for key, f in found["artifacts"].items():
        if key != "onnxruntime fp32":
            assert 0 <= f["max_rel"] <= f["allowed_drop"] == bundle.artifact(*key.split()).bound and f["passed"]
    text = run("export", "evaluate", str(bundle.path), "--data", str(folder)).stdout
    assert "on 3 input files of" in text and "openvino fp32" in text and " pass" in text


def test_two_named_inputs_and_a_tuple_output_through_the_python_api(tmp_path, capsys):
    import export
    from tests.own_models.fusion import RGBDSegmenter

    torch.manual_seed(0)
    module = RGBDSegmenter()
    result = export.build(module, (torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32)), out=tmp_path,
                          name="rgbd", outputs=("logits", "embedding"), threads=1, warmup=1, runs=5)
    assert result.passed and result.bundle == tmp_path / "rgbd"
    printed = capsys.readouterr().out
    assert "inferred the model contract: inputs rgb (batch, 3, 32, 32) float32, depth (batch, 1, 32, 32)" in printed
    # and the results, as the command line shows them: the table with every artifact, the threads, the choice
    assert "rgbd: parity against PyTorch and latency (batch 1, every row on 1 thread, PyTorch eager too)" in printed
    for artifact in result.manifest["artifacts"]:
        assert f"{artifact['file']}  " in printed
    assert "Recommended: " in printed
    bundle = runtime.Bundle.open(result.bundle)
    assert bundle.spec.input_names == ["rgb", "depth"] and bundle.spec.outputs == ("logits", "embedding")
    assert bundle.spec.returns == "tuple"
    feeds = {"rgb": np.random.default_rng(1).random((1, 3, 32, 32), np.float32),
             "depth": np.random.default_rng(2).random((1, 1, 32, 32), np.float32)}
    with torch.no_grad():
        expected = module(torch.from_numpy(feeds["rgb"]), torch.from_numpy(feeds["depth"]))
    for backend in ("onnxruntime", "openvino"):
        with runtime.load(bundle, backend, "fp32") as runner:  # FP32: FP16 may run in bf16 (AMX)
            got = runner.infer(feeds)
        np.testing.assert_allclose(got["logits"], expected[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(got["embedding"], expected[1].numpy(), atol=1e-4)
    assert runtime.verify(bundle).passed
    refused = one_line_exit_2(run("runtime", "infer", str(bundle.path), str(photo(tmp_path / "p.jpg"))))
    assert refused == ("error: model 'rgbd' takes 2 inputs (rgb, depth); infer feeds one image: run it from "
                       "Python with runtime.load(bundle).infer({name: array})")


def test_int8_leaves_the_modules_the_contract_names_in_float(tmp_path):
    import export
    from export import calibration, quantize
    from tests.own_models.fusion import RGBDSegmenter

    torch.manual_seed(0)
    result = export.build(RGBDSegmenter(), (torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32)), out=tmp_path,
                          name="rgbd", backends=("onnxruntime",), quantize="int8", int8_anyway=True, calib_samples=4,
                          keep_fp32=("head",), threads=2, warmup=1, runs=5, verbose=False)
    q = result.manifest["quantization"]
    assert result.manifest["spec"]["keep_fp32"] == ["head"]
    assert q["keep_fp32"] == {"modules": ["head"], "nodes": ["node_conv2d_3"]}  # the head's one Conv
    assert all("node_conv2d_3" in plan["kept_fp32"]["nodes"] for plan in q["plans"].values())
    data, _ = calibration.calibration_set(runtime.Bundle.open(result.bundle).spec, None, 4)
    quantize.quantize_onnxruntime(result.bundle / "model.onnx", tmp_path / "q.onnx", data, "minmax", "full",
                                  q["keep_fp32"]["nodes"])
    import onnx

    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    convs = {n.name: produced_by.get(n.input[1]) for n in graph.node if n.op_type == "Conv"}
    assert convs.pop("node_conv2d_3") != "DequantizeLinear"  # FP32 weights
    assert set(convs.values()) == {"DequantizeLinear"}  # every other conv INT8


def test_an_export_the_dynamo_exporter_cannot_do_falls_back_and_says_so(tmp_path):
    result = run("export", "build", "--model", f"{OWN}/fusion.py:Branchy", "--input", "x:1x3x16x16",
                 "--out", str(tmp_path), "--backends", "onnxruntime")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the dynamo exporter could not export Branchy (GuardOnDataDependentSymNode" in result.stdout
    export_info = runtime.Bundle.open(tmp_path / "Branchy").manifest["export"]
    assert export_info["exporter"].startswith("torch.onnx.export(dynamo=False)")
    assert export_info["dynamo_failure"].startswith("GuardOnDataDependentSymNode: Could not guard")
    assert "Torch IR graph" not in result.stdout + result.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "nope.py:make", "--input", "x:1x3x8x8"],
     "error: --model file 'nope.py' does not exist; expected a Python file (FILE.py:NAME) or an importable module"),
    (["--model", f"{OWN}/fusion.py:Missing", "--input", "x:1x3x8x8"],
     f"error: '{OWN}/fusion.py' defines no 'Missing'; it defines: classes RGBDSegmenter, Branchy, Spectral; "
     "functions make_segmenter, broken, not_a_module"),
    (["--model", "no_such_package.nets:UNet", "--input", "x:1x3x8x8"],
     "error: --model module 'no_such_package.nets' cannot be imported (ModuleNotFoundError: No module named "
     "'no_such_package'); install its package, or name a file: --model path/to/file.py:NAME"),
    (["--model", f"{OWN}/fusion.py:broken", "--model-arg", "width=3", "--input", "x:1x3x8x8"],
     f"error: {OWN}/fusion.py:broken(width=3) raised RuntimeError: no weights for width 3 (line 57)"),
    (["--model", f"{OWN}/fusion.py:broken", "--model-arg", "depth=3", "--input", "x:1x3x8x8"],
     f"error: {OWN}/fusion.py:broken(depth=3) does not fit its signature (width: int = 8): "
     "got an unexpected keyword argument 'depth'"),
    (["--model", f"{OWN}/fusion.py:not_a_module", "--input", "x:1x3x8x8"],
     f"error: {OWN}/fusion.py:not_a_module() returned a dict; expected a torch.nn.Module"),
    (["--model", f"{OWN}/fusion.py:RGBDSegmenter", "--input", "rgb:1x3x16x16"],
     "error: RGBDSegmenter.forward(rgb, depth) takes 2 inputs; 1 given (rgb); pass one --input per parameter, "
     "in order: --input rgb:1x3x16x16 --input depth:SHAPE (SHAPE: that input's own channels and size)"),
    (["--model", f"{OWN}/fusion.py:Branchy", "--input", "x:1x3x16x16", "--input", "y:1x3x16x16"],
     "error: Branchy.forward(x) takes 1 inputs; 2 given (x, y); pass one --input per parameter, in order: "
     "--input x:1x3x16x16"),
    (["--model", f"{OWN}/fusion.py:Branchy", "--input", "x:1x3x130x16", "--dynamic", "x:0,2,3", "--multiple", "4"],
     "error: --input x:1x3x130x16: 130 is not a multiple of --multiple 4; use 128 or 132"),
    (["--model", f"{OWN}/fusion.py:RGBDSegmenter", "--input", "rgb:1x3x16x16", "--input", "depth:1x3x16x16"],
     "error: RGBDSegmenter.forward on rgb (1, 3, 16, 16), depth (1, 3, 16, 16) raised RuntimeError: Given groups=1, "
     "weight of size [8, 1, 3, 3], expected input[1, 3, 16, 16] to have 1 channels, but got 3 channels instead"),
    (["--model", f"{OWN}/fusion.py:Spectral", "--input", "x:1x3x8x8"],
     "error: 'Spectral' cannot be exported to ONNX: the dynamo exporter stopped at DispatchError: No ONNX function "
     "found for <OpOverload(op='aten._linalg_svd', overload='default')>."),
    (["--model", f"{OWN}/fusion.py:RGBDSegmenter"],
     "error: --model needs its inputs: one --input NAME:SHAPE per forward parameter, e.g. --input image:1x3x256x256"),
    (["--model", f"{OWN}/fusion.py:RGBDSegmenter", "--input", "rgb=1x3x8x8"],
     "error: --input 'rgb=1x3x8x8' is not NAME:SHAPE; expected e.g. --input image:1x3x256x256"),
    (["--model", f"{OWN}/fusion.py:Branchy", "--input", "x:1x3x8x8", "--dynamic", "y:0,2"],
     "error: --dynamic names input 'y'; the inputs are x"),
    (["--model", f"{OWN}/fusion.py:Branchy", "--input", "x:1x3x8x8", "--task", "segmentaton"],
     "error: unknown --task 'segmentaton'; did you mean 'segmentation'? valid: none, keypoints, segmentation"),
    # the task plugins check the output they read before anything is exported
    (["--model", f"{OWN}/fusion.py:Branchy", "--input", "x:1x3x8x8", "--task", "keypoints"],
     "error: the keypoints task reads output 'output' as (batch, keypoints, 2) x, y in [-1, 1]; it has shape "
     "(1, 4, 8, 8); a per-pixel output is --task segmentation or --task none"),
    (["--model", f"{OWN}/fusion.py:Spectral", "--input", "x:1x3x8x8", "--task", "segmentation"],
     "error: the segmentation task reads output 'output' as class logits (batch, classes, height, width); it has "
     "shape (1, 4); use --task none"),
    (["--model", f"{OWN}/fusion.py:make_segmenter", "--model-arg", "classes=1", "--input", "rgb:1x3x8x8",
      "--input", "depth:1x1x8x8", "--task", "segmentation"],
     "error: the segmentation task reads output 'output0' as class logits, one channel per class, at least 2; it "
     "has shape (1, 1, 8, 8) (a one-channel mask logit: export it with two channels"),
    (["--model", f"{OWN}/fusion.py:make_segmenter", "--input", "rgb:1x3x8x8", "--input", "depth:1x1x8x8",
      "--task", "segmentation", "--task-output", "out"],
     "error: task 'segmentation' reads output 'out', which the model does not have; its outputs: output0, output1 "
     "(name one with --task-output)"),
    (["--variant", "dsc", "--input", "x:1x3x8x8"],
     "error: --input is for --model; a zoo variant's inputs, outputs and task are its own"),
    (["--variant", "dsc", "--model", f"{OWN}/fusion.py:Branchy"], "error: give --variant or --model, not both"),
    (["--model", f"{OWN}/fusion.py:Branchy", "--input", "x:1x3x8x8", "--quantize", "int8", "--int8-anyway",
      "--keep-fp32", "conw"],
     "error: unknown module of Branchy in --keep-fp32: 'conw'; did you mean 'conv'? valid: conv"),
    (["--model", f"{OWN}/fusion.py:Branchy", "--input", "x:1x3x8x8", "--keep-fp32", "conv"],
     "error: --keep-fp32 is only used with --quantize int8"),
])
def test_what_a_users_model_brings_is_refused_in_one_line(args, message, tmp_path, capsys):
    """In this process (torch is loaded already): the same `main` the command line runs.
    One line on stderr (stdout shows the stages that passed before, if any), exit 2, no folder."""
    from export.cli import main

    code = main(["build", *args, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    text = captured.err.strip()
    assert code == 2 and len(text.splitlines()) == 1 and "Traceback" not in captured.out + text, text
    assert text.startswith(message), text
    assert not (tmp_path / "out").exists()


RESEARCH_REPO = {
    "models/__init__.py": "from .tiny import TinyNet\n",
    "models/tiny.py": ("import torch\nfrom torch import nn\n\n\nclass TinyNet(nn.Module):\n"
                       "    def __init__(self, width=4):\n        super().__init__()\n"
                       "        self.conv = nn.Conv2d(3, width, 3, padding=1)\n\n"
                       "    def forward(self, image):\n        return {'features': torch.relu(self.conv(image))}\n"),
    "make.py": "from models import TinyNet\n\n\ndef make(width=4):\n    return TinyNet(width)\n",
}


def test_a_research_repo_with_its_own_models_package_still_builds(tmp_path):
    """`python -m export` run from the root of a repository whose own top-level package
    is `models`: its code sees its own `models`, edge-export keeps its own."""
    repo = tmp_path / "research"
    for name, text in RESEARCH_REPO.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    result = run("export", "build", "--model", "make.py:make", "--model-arg", "width=6", "--input",
                 "image:1x3x16x16", "--out", "artifacts", "--backends", "onnxruntime", cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    bundle = runtime.Bundle.open(repo / "artifacts" / "TinyNet")
    assert bundle.spec.outputs == ("features",) and bundle.spec.returns == "dict"
    assert bundle.manifest["model"]["params"] == 6 * 3 * 9 + 6
    listed = run("export", "list", cwd=repo)  # edge-export's own zoo, not the repo's models
    assert listed.returncode == 0 and "dsc" in listed.stdout


def test_a_zoo_segmenter_is_proven_at_two_sizes_and_runs_at_any_multiple(built):
    bundle = runtime.Bundle.open(built("erfnet").bundle)
    assert bundle.golden_sets() == ["golden", "size.192x640"]
    for a in bundle.artifacts:
        assert set(a.parity["outputs"]) == {"logits", "logits@192x640"} and a.parity["passed"]
    with runtime.load(bundle, "onnxruntime") as runner:
        assert runner.infer(np.full((1, 3, 72, 136), 0.5, np.float32))["logits"].shape == (1, 19, 72, 136)
        with pytest.raises(ValueError, match=r"input 'image': expected shape \(batch, 3, height, width\) with "
                                             r"height and width multiples of 8, got \(1, 3, 70, 136\)"):
            runner.infer(np.full((1, 3, 70, 136), 0.5, np.float32))


def test_nothing_outside_the_task_plugins_switches_on_a_task_or_a_variant_name():
    """The zoo goes through the same contract as a user's model: no code path in export/,
    runtime/ or the tests branches on a task kind or a variant's name (runtime/tasks.py and
    models/tasks.py are the task plugins)."""
    import models

    names = "|".join(map(re.escape, models.list_variants()))
    switch = re.compile(rf"""\b(if|elif|while)\b.*(==|!=|\bin\b)\s*[(\[]?\s*["']({names}|keypoints|segmentation)["']"""
                        rf"""|\b(if|elif)\b.*(\bvariant\b|\btask\.kind\b|\[["']kind["']\])\s*(==|!=)""")
    hits = [f"{path.relative_to(REPO)}:{i}: {line.strip()}"
            for folder in ("export", "runtime", "tests") for path in sorted((REPO / folder).rglob("*.py"))
            if path != REPO / "runtime" / "tasks.py" and "published" not in path.parts
            for i, line in enumerate(path.read_text().splitlines(), 1) if switch.search(line)]
    assert hits == []


def test_diagnose_takes_a_users_model(tmp_path):
    result = run("export", "diagnose", "--model", f"{OWN}/fusion.py:RGBDSegmenter", "--input", "rgb:1x3x32x32",
                 "--input", "depth:1x1x32x32")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RGBDSegmenter: max relative error of every module's output against PyTorch" in result.stdout
    for backend in ("onnxruntime", "openvino"):
        assert f"{backend}: no divergence: all 10 module outputs and 2 model outputs within bound" in result.stdout


def test_a_one_channel_image_is_said_to_be_grey_in_the_contract():
    """infer converts a photo to grey for a one-channel input; the printed contract says so, not RGB."""
    from export.contract import infer_spec
    from export.report import spec_line
    from runtime.spec import Preprocess

    module = torch.nn.Conv2d(1, 4, 3, padding=1).eval()
    grey = infer_spec(module, torch.rand(1, 1, 32, 32), "grey", preprocess=Preprocess(None, mean=(0.0,), std=(1.0,)))
    assert ", grey, x0.00392157, mean [0.0]" in spec_line(grey.to_dict())
    colour = infer_spec(torch.nn.Conv2d(3, 4, 3, padding=1).eval(), torch.rand(1, 3, 32, 32), "colour",
                        preprocess=Preprocess(None))
    assert ", RGB, x0.00392157" in spec_line(colour.to_dict())


def test_an_input_named_otherwise_than_forwards_parameter_is_said_so_in_the_contract():
    """`--input image:...` for `forward(self, x)`: the bundle calls the input image (what a device feeds),
    and the contract shows which parameter it is; inputs named as forward names them show nothing more."""
    from export.contract import infer_spec
    from export.report import spec_line

    module = torch.nn.Conv2d(3, 4, 3, padding=1).eval()  # forward(self, input)
    renamed = infer_spec(module, {"image": torch.rand(1, 3, 16, 16)}, "renamed")
    assert list(renamed.input_names) == ["image"]
    assert spec_line(renamed.to_dict()).startswith("inputs image [forward's input] (batch, 3, 16, 16) float32;")
    same = infer_spec(module, {"input": torch.rand(1, 3, 16, 16)}, "same")
    assert spec_line(same.to_dict()).startswith("inputs input (batch, 3, 16, 16) float32;")


def test_a_transformers_model_safetensors_loads_through_the_librarys_own_key_mapping(tmp_path):
    """transformers 5 names SegFormer's modules `segformer.stages...` and saves them under the older
    `segformer.encoder.block...` names; `--checkpoint model.safetensors` is read through the library's
    own mapping, and the bundle computes what `from_pretrained` on the same folder computes."""
    from safetensors.torch import load_file
    from transformers import SegformerForSemanticSegmentation

    sys.path.insert(0, str(OWN))
    try:
        from third_party import segformer
    finally:
        sys.path.remove(str(OWN))
    torch.manual_seed(3)
    segformer().save_pretrained(tmp_path / "saved")
    weights = tmp_path / "saved" / "model.safetensors"
    on_disk, own = set(load_file(weights)), set(segformer().state_dict())
    assert on_disk != own and len(on_disk) == len(own)  # the file's names are not the module's
    result = run("export", "build", "--model", f"{OWN}/third_party.py:segformer", "--input", "pixel_values:1x3x64x64",
                 "--task", "segmentation", "--checkpoint", str(weights), "--out", str(tmp_path / "out"),
                 "--backends", "onnxruntime")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("checkpoint: read as transformers' SegformerForSemanticSegmentation (the library's own key mapping), "
            "renamed to the module's names") in result.stdout
    bundle = runtime.Bundle.open(tmp_path / "out" / "SegformerForSemanticSegmentation")
    assert bundle.manifest["checkpoint"]["read"]["renamed"] == len(own)
    reference = SegformerForSemanticSegmentation.from_pretrained(tmp_path / "saved").eval()
    x = np.random.default_rng(0).random((1, 3, 64, 64), np.float32)
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(x)).logits.numpy()
    with runtime.load(bundle) as runner:
        np.testing.assert_allclose(runner.infer(x)["logits"], expected, rtol=1e-4, atol=1e-4)
