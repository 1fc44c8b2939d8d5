"""State dicts made with the published module definitions, saved as their training scripts
save them, load into the zoo, and each bundle's outputs match the *published* module's.

The published code is kept under tests/published/ with its licence headers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
import runtime
from export.pipeline import BuildSettings, build
from runtime.compare import output_parity
from tests.conftest import perturb_
from tests.test_cli import REPO, run
from tests.test_failures import one_line_exit_2

PUBLISHED = REPO / "tests" / "published"


def published(name: str):
    """A published module file, imported from tests/published/ (FOMM's from its own `modules` package)."""
    folder = PUBLISHED / "fomm" if name.startswith("modules.") else PUBLISHED
    sys.path.insert(0, str(folder))
    try:
        __import__(name)
        return sys.modules[name]
    finally:
        sys.path.remove(str(folder))


def saved_as_its_training_script_does(module: torch.nn.Module, path: Path, how: str) -> Path:
    """ERFNet's and LEDNet's main.py: {'epoch', 'arch', 'state_dict', 'best_acc', 'optimizer'} from a
    DataParallel model ('module.' before every name); ESNet: the best model's state_dict alone;
    Efficient-Segmentation-Networks' train.py: {'epoch', 'model'}, DataParallel too."""
    state = module.state_dict()
    parallel = {f"module.{k}": v for k, v in state.items()}
    optimiser = torch.optim.Adam(module.parameters(), 5e-4)
    saved = {"checkpoint": {"epoch": 150, "arch": str(module), "state_dict": parallel, "best_acc": 0.7,
                            "optimizer": optimiser.state_dict()},
             "best": state, "model": {"epoch": 150, "model": parallel}}[how]
    torch.save(saved, path)
    return path


# arch -> (make the published module, classes its training script uses, how it saves, the size to compare at:
# the published LEDNet decodes to a fixed 512x1024, which the bundle takes too, its sides being dynamic)
ENCODER_DECODERS = {
    "erfnet": (lambda: published("erfnet").Net(20), 20, "checkpoint", (96, 160)),
    "esnet": (lambda: published("esnet").ESNet(20), 20, "best", (96, 160)),
    "lednet": (lambda: published("lednet").Net(20), 20, "checkpoint", (512, 1024)),
    "edanet": (lambda: published("edanet").EDANet(19), 19, "model", (96, 160)),
}


@pytest.mark.parametrize("arch", ENCODER_DECODERS)
def test_a_published_encoder_decoder_checkpoint_builds_and_matches_the_published_module(arch, tmp_path):
    make, classes, how, (h, w) = ENCODER_DECODERS[arch]
    torch.manual_seed(0)
    theirs = perturb_(make()).eval()
    checkpoint = saved_as_its_training_script_does(theirs, tmp_path / f"{arch}.pth", how)
    result = build(BuildSettings(variant=arch, checkpoint=checkpoint, out=tmp_path / "out", warmup=1, runs=3,
                                 overrides={"num_classes": classes, "height": 64, "width": 128}))
    assert result.passed, result.failures
    read = result.manifest["checkpoint"]["read"]
    assert read["layout"].startswith({"erfnet": "ERFNet", "esnet": "ESNet", "lednet": "LEDNet",
                                      "edanet": "EDANet"}[arch])
    unused = {"erfnet": ["encoder.output_conv.weight", "encoder.output_conv.bias"],
              "esnet": ["encoder_output_conv.weight", "encoder_output_conv.bias"],
              "lednet": ["encoder.output_conv.weight", "encoder.output_conv.bias"], "edanet": []}[arch]
    assert read["unused"] == unused
    x = np.random.default_rng(0).random((1, 3, h, w), np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    bundle = runtime.Bundle.open(result.bundle)
    for a in bundle.artifacts:
        with runtime.load(bundle, a.backend, a.precision) as runner:
            figures = output_parity("logits", expected, runner.infer(x)["logits"], a.bounds["logits"])
        assert figures.passed, (a.key, figures)


def test_the_cli_reads_a_published_checkpoint_and_names_what_it_skipped(tmp_path):
    torch.manual_seed(0)
    theirs = perturb_(published("erfnet").Net(20)).eval()
    checkpoint = saved_as_its_training_script_does(theirs, tmp_path / "erfnet.pth.tar", "checkpoint")
    refused = one_line_exit_2(run("export", "build", "--variant", "erfnet", "--checkpoint", str(checkpoint),
                                  "--out", str(tmp_path / "out")))
    assert refused == (f"error: checkpoint {str(checkpoint)!r} does not fit this variant: it was saved by the "
                       "published ERFNet (Eromera/erfnet_pytorch train/erfnet.py) code with 20 classes, the variant "
                       "has 19: build with --classes 20")
    result = run("export", "build", "--variant", "erfnet", "--classes", "20", "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "out"), "--backends", "onnxruntime")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("checkpoint: read as published ERFNet (Eromera/erfnet_pytorch train/erfnet.py), renamed to the zoo's "
            "names; skipped 2 tensors its forward never uses: encoder.output_conv.weight, encoder.output_conv.bias"
            ) in result.stdout


def test_a_first_order_model_kp_detector_checkpoint_matches_the_published_detector(tmp_path):
    """FOMM's KPDetector with vox-256's settings, saved as its Logger saves a checkpoint
    (every model's state_dict by name), read into `baseline`."""
    detector = published("modules.keypoint_detector")
    torch.manual_seed(0)
    theirs = perturb_(detector.KPDetector(block_expansion=32, num_kp=10, num_channels=3, max_features=1024,
                                          num_blocks=5, temperature=0.1, estimate_jacobian=True,
                                          scale_factor=0.25)).eval()
    generator = torch.nn.Conv2d(3, 3, 3)
    torch.save({"kp_detector": theirs.state_dict(), "generator": generator.state_dict(), "epoch": 99},
               tmp_path / "vox-cpk.pth.tar")
    result = build(BuildSettings(variant="baseline", checkpoint=tmp_path / "vox-cpk.pth.tar", out=tmp_path / "out",
                                 warmup=1, runs=3))
    assert result.passed, result.failures
    assert result.manifest["checkpoint"]["read"] is None  # the zoo's names are FOMM's
    bundle = runtime.Bundle.open(result.bundle)
    x = bundle.golden()[0]["image"]
    with torch.no_grad():
        expected = {k: v.numpy() for k, v in theirs(torch.from_numpy(x)).items()}
    for a in bundle.artifacts:
        with runtime.load(bundle, a.backend, a.precision) as runner:
            got = runner.infer(x)
        for name in ("value", "jacobian"):
            figures = output_parity(name, expected[name], got[name], a.bounds[name])
            assert figures.passed, (a.key, figures)


def test_the_zoo_computes_exactly_what_the_published_modules_compute(tmp_path):
    """Before any export: the same weights give the same outputs in PyTorch (float32 rounding aside)."""
    for arch, (make, classes, how, size) in ENCODER_DECODERS.items():
        torch.manual_seed(1)
        theirs = perturb_(make()).eval()
        path = saved_as_its_training_script_does(theirs, tmp_path / f"{arch}.pt", how)
        ours = models.create(arch, checkpoint=path, num_classes=classes)
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(ours(x)["logits"], theirs(x), rtol=1e-5, atol=1e-5)


def test_the_edanet_its_authors_point_to_loads_by_its_own_names(tmp_path):
    """wpf535236337/pytorch_EDANet keeps its blocks in one flat list (`layers.N...`); its 348 tensors have
    the shapes and order of Efficient-Segmentation-Networks' EDANet. Its names and shapes (a JSON list, its
    code having no licence to copy) with that module's weights, saved as a bare state_dict, build the same
    outputs, and the build says whose layout it read."""
    import json

    theirs = json.loads((PUBLISHED / "wpf_edanet_state_dict.json").read_text())["tensors"]
    torch.manual_seed(2)
    reference = perturb_(published("edanet").EDANet(20)).eval()
    weights = list(reference.state_dict().values())
    assert [list(w.shape) for w in weights] == [shape for _, shape in theirs]
    torch.save({name: w for (name, _), w in zip(theirs, weights)}, tmp_path / "EDANet.pth")
    ours, read = models.load("edanet", tmp_path / "EDANet.pth", num_classes=20)
    assert read["layout"] == "EDANet (wpf535236337/pytorch_EDANet EDANet.py)" and read["unused"] == []
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["logits"], reference(x), rtol=1e-5, atol=1e-5)
