"""Generated tasks, a short training run and the task metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import models
from models.tasks import keypoint_sample, pet_sample, task_for
from models.train import evaluate, train
from runtime.tasks import task_of
from runtime.errors import UserError
from tests.test_cli import run


def test_keypoint_samples_are_seeded_images_with_keypoints_inside():
    x, kp = keypoint_sample(3)
    assert x.shape == (3, 256, 256) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert kp.shape == (10, 2) and np.abs(kp).max() < 0.95  # inside the frame, with a margin
    again, kp_again = keypoint_sample(3)
    np.testing.assert_array_equal(x, again)
    np.testing.assert_array_equal(kp, kp_again)
    other, kp_other = keypoint_sample(3, "heldout")
    assert not np.array_equal(kp, kp_other) and not np.array_equal(x, other)


def test_keypoints_sit_on_the_figure():
    """Each keypoint's pixel is painted, unlike most of the background: the keypoint is visible."""
    x, kp = keypoint_sample(5)
    px = np.round((kp + 1) / 2 * 255).astype(int)
    background = np.median(x.reshape(3, -1), axis=1)
    painted = [np.abs(x[:, y, x_] - background).max() > 0.1 for x_, y in px]
    assert sum(painted) >= 8


def test_pet_trimaps_have_pet_background_and_a_thin_border():
    for i in range(4):
        x, trimap = pet_sample(i)
        assert x.shape == (3, 128, 128) and trimap.shape == (128, 128) and trimap.dtype == np.int64
        fractions = np.bincount(trimap.ravel(), minlength=3) / trimap.size
        assert 0.05 < fractions[0] < 0.6 and fractions[1] > 0.3 and 0.01 < fractions[2] < 0.2, fractions


def test_only_variants_with_a_generated_task_train():
    assert task_for(models.spec("kp-lednet")).kind == "keypoints"
    assert task_for(models.spec("unet-dsc")).kind == "segmentation"
    with pytest.raises(UserError, match="no generated task for a 19-class segmenter"):
        task_for(models.spec("erfnet"))


def test_task_metrics():
    targets = np.zeros((1, 10, 2), np.float32)
    keypoints = task_of(models.spec("dsc"))
    assert keypoints.metrics(targets, {"value": targets + [0.03, 0.04]})["keypoint_error_px"] == \
        pytest.approx(6.4)  # 0.05 of the half-width 128
    trimap = np.array([[[0, 0, 1, 2]]])
    logits = np.eye(3)[[[[0, 1, 1, 2]]]].transpose(0, 3, 1, 2)
    m = task_of(models.spec("unet-dsc")).metrics(trimap, {"logits": logits})
    assert m["pixel_accuracy"] == 0.75 and m["miou"] == pytest.approx((0.5 + 0.5 + 1) / 3)


def test_training_is_deterministic_for_a_seed(tmp_path):
    first = train("dsc-lite", steps=2, batch=2, seed=5, out=tmp_path / "a.pt")
    second = train("dsc-lite", steps=2, batch=2, seed=5, out=tmp_path / "b.pt")
    other = train("dsc-lite", steps=2, batch=2, seed=6)
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first["last_loss"] == second["last_loss"] != other["last_loss"]


def test_training_halves_the_heldout_keypoint_error(tmp_path):
    """A short run (80 steps of 8, about a minute here) on dsc; docs/results/training.md gives the 200-step figures."""
    untrained = evaluate("dsc", samples=32)["keypoint_error_px"]
    result = run("models", "train", "--variant", "dsc", "--steps", "80", "--out", str(tmp_path / "dsc.pt"))
    assert result.returncode == 0, result.stderr
    # into a pipe: a plain line at each tenth of the run, not one line at the end
    progress = [line for line in result.stdout.splitlines() if line.startswith("training dsc: step ")]
    assert [line.split()[3].rstrip(",") for line in progress] == [f"{8 * k}/80" for k in range(1, 11)], result.stdout
    assert "\x1b[" not in result.stdout and " s left" in progress[0]
    trained = json.loads(run("models", "evaluate", "--variant", "dsc", "--checkpoint", str(tmp_path / "dsc.pt"),
                             "--samples", "32", "--json").stdout)["keypoint_error_px"]
    assert trained <= untrained / 2, (untrained, trained)
    # the checkpoint goes through the build, and the bundle scores the same through the device runtime
    bundle = run("export", "build", "--variant", "dsc", "--checkpoint", str(tmp_path / "dsc.pt"),
                 "--out", str(tmp_path / "artifacts"), "--backends", "onnxruntime")
    assert bundle.returncode == 0, bundle.stdout
    on_device = json.loads(run("export", "evaluate", str(tmp_path / "artifacts" / "dsc"), "--samples", "32",
                               "--json").stdout)["keypoint_error_px"]
    assert on_device == pytest.approx(trained, abs=0.01)


@pytest.mark.parametrize("args, message", [
    (["train", "--variant", "erfnet", "--out", "x.pt"], "error: no generated task for a 19-class segmenter"),
    (["train", "--variant", "dsc", "--steps", "0", "--out", "x.pt"], "error: --steps 0 must be positive"),
    (["train", "--variant", "dsc", "--out", "tests"], "error: --out 'tests' is a folder"),
    (["evaluate"], "error: the following arguments are required: --variant"),
    (["evaluate", "--variant", "nope"], "error: unknown variant 'nope'"),
])
def test_models_cli_errors_are_one_line(args, message):
    result = run("models", *args)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
