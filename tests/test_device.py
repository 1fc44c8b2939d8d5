"""The device side on real bundles: concurrency, throughput, profiling, pictures, packing."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

import runtime
from export.pack import pack
from runtime.bundle import sha256
from runtime.images import keypoints_px, preprocess, upsampled_mask
from runtime.spec import ModelSpec, Preprocess, TensorSpec
from tests.test_cli import run


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_eight_threads_share_one_runner_and_get_the_serial_outputs(built, backend):
    rng = np.random.default_rng(0)
    images = [rng.random((1, 3, 256, 256), dtype=np.float32) for _ in range(8)]
    with runtime.load(built("dsc").bundle, backend, "fp32", threads=1) as runner:
        serial = [runner.infer(x) for x in images]
        errors, mismatches = [], []

        def caller(i: int) -> None:
            try:
                for _ in range(100):
                    out = runner.infer(images[i])
                    if any(not np.array_equal(out[k], serial[i][k]) for k in out):
                        mismatches.append(i)
            except Exception as err:  # noqa: BLE001 - collected and reported below
                errors.append(repr(err))

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and mismatches == []


@pytest.mark.parametrize("backend, how, op", [("onnxruntime", "parallel callers", "Conv"),
                                              ("openvino", "async requests", "Convolution")])
def test_bench_reports_latency_throughput_and_profile_apart(built, backend, how, op):
    result = run("runtime", "bench", str(built("dsc").bundle), "--backend", backend, "--runs", "5",
                 "--warmup", "2", "--throughput", "1", "--profile", "3", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["p50_ms"] > 0 and stats["runs"] == 5 and stats["first_ms"] > 0
    t = stats["throughput"]
    assert t["mode"] == "throughput" and t["inferences"] > 0 and t["images_per_s"] > 0 and t["parallel"] >= 1
    assert "p50_ms" not in t  # overlapping calls have no latency
    profile = stats["profile"]
    # which op type leads is a timing (on dsc, OpenVINO's Jacobian MatMul and its convolutions are close):
    # the profile names the convolutions, per op type, largest share first, and the shares add up
    assert op in [r["op_type"] for r in profile] and len({r["op_type"] for r in profile}) == len(profile)
    assert [r["share"] for r in profile] == sorted((r["share"] for r in profile), reverse=True)
    assert sum(r["share"] for r in profile) == pytest.approx(1.0)
    text = run("runtime", "bench", str(built("dsc").bundle), "--backend", backend, "--runs", "5",
               "--throughput", "1", "--profile", "2")
    assert "throughput (not latency: calls overlap)" in text.stdout and how in text.stdout
    assert "where the time goes, per op type" in text.stdout


def test_profile_needs_a_profiling_runner(built):
    x, _ = runtime.Bundle.open(built("dsc").bundle).golden()
    for backend in ("onnxruntime", "openvino"):
        with runtime.load(built("dsc").bundle, backend) as runner, pytest.raises(ValueError, match="profile=True"):
            runner.profile(x, 1)


def test_preprocess_follows_the_spec():
    image = Image.fromarray(np.full((10, 20, 3), (255, 0, 51), np.uint8))
    fixed = ModelSpec("m", (TensorSpec("x", ("batch", 3, 4, 6)),), ("y",), "tensor",
                      preprocess=Preprocess((4, 6), mean=(0.5, 0, 0), std=(0.5, 1, 1)))
    x = preprocess(image, fixed)
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)
    bgr = dataclasses.replace(fixed, preprocess=Preprocess((4, 6), channels="BGR"))
    np.testing.assert_allclose(preprocess(image, bgr)[0, :, 0, 0], [0.2, 0.0, 1.0], atol=1e-6)
    # dynamic sides: the image's own size, rounded to the nearest multiple
    dynamic = ModelSpec("m", (TensorSpec("x", ("batch", 3, "height", "width"), multiple=8),), ("y",), "tensor",
                        preprocess=Preprocess(None))
    assert preprocess(image, dynamic).shape == (1, 3, 8, 16)


def test_keypoint_coordinates_map_to_the_edge_pixels():
    np.testing.assert_allclose(keypoints_px(np.array([[-1, -1], [1, 1], [0, 0]]), 400, 300),
                               [[0, 0], [399, 299], [199.5, 149.5]])


def infer_cat(built, variant: str, tmp_path) -> tuple[dict, dict]:
    """`runtime infer` on a 120x90 photo: (what it wrote in the .json, the outputs the bundle gives
    for the photo preprocessed as its spec says), after checking the picture and the .npz."""
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8)).save(tmp_path / "cat.jpg")
    bundle = runtime.Bundle.open(built(variant).bundle)
    result = run("runtime", "infer", str(bundle.path), str(tmp_path / "cat.jpg"), "--out", str(tmp_path / "pred"))
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "pred" / "cat.png") as picture:
        assert picture.size == (120, 90)  # drawn on the original image
    found = json.loads((tmp_path / "pred" / "cat.json").read_text())
    raw = np.load(tmp_path / "pred" / "cat.npz")
    with runtime.load(bundle) as runner:
        with Image.open(tmp_path / "cat.jpg") as image:
            expected = runner.infer(preprocess(image.convert("RGB"), bundle.spec))
    for name, value in expected.items():
        np.testing.assert_array_equal(raw[name], value)
    return found, expected


def test_infer_finds_named_keypoints(built, tmp_path):
    found, _ = infer_cat(built, "dsc", tmp_path)
    assert np.asarray(found["keypoints_px"]).shape == (10, 2) and found["keypoint_names"][0] == "head"
    assert np.asarray(found["outputs"]["value"]["data"]).shape == (1, 10, 2)


def test_infer_segments_a_photo_at_its_own_size(built, tmp_path):
    found, expected = infer_cat(built, "segnet-dsc", tmp_path)
    assert expected["logits"].shape == (1, 3, 96, 128)  # run at the photo's size, rounded to multiples of 16
    assert np.asarray(found["mask"]).shape == (90, 120)  # the mask at the photo's own size
    assert sum(found["class_fractions"]) == pytest.approx(1.0)
    np.testing.assert_array_equal(found["mask"], upsampled_mask(expected["logits"][0], (120, 90)))


@pytest.mark.parametrize("args, message", [
    (["infer", "BUNDLE", "no-such.png"], "error: image 'no-such.png' does not exist"),
    (["infer", "BUNDLE", "pyproject.toml"], "error: image 'pyproject.toml' is not a readable image"),
    (["bench", "BUNDLE", "--backend", "onnxruntime", "--precision", "int8"], "error: bundle 'BUNDLE' has no 'int8' artifact for onnxruntime; it has: fp32"),
    (["bench", "BUNDLE", "--precision", "fp64"], "error: unknown precision 'fp64'; did you mean 'fp16'? valid: fp32, fp16, int8"),
    (["bench", "BUNDLE", "--backend", "tflite"], "error: unknown backend 'tflite'; did you mean 'litert'? valid: onnxruntime, openvino, litert"),
    (["bench", "BUNDLE", "--runs", "0"], "error: argument --runs: '0' is not a positive whole number"),
    (["verify", "BUNDLE/manifest.json"], "error: bundle 'BUNDLE/manifest.json' is not a folder"),
])
def test_runtime_cli_errors_are_one_line(built, args, message):
    bundle = str(built("dsc").bundle)
    result = run("runtime", *[a.replace("BUNDLE", bundle) for a in args])
    assert result.returncode == 2
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]
    assert result.stderr.startswith(message.replace("BUNDLE", bundle)), result.stderr
    assert "Traceback" not in result.stderr


def test_a_precision_the_build_did_not_ship_is_refused_with_the_builds_reason(built):
    """Asking for an artifact the build made and rejected (here OpenVINO FP16, moved to `rejected`
    as the build records it) names why it was not shipped; one never made says only what there is."""
    from runtime.errors import UserError

    opened = runtime.Bundle.open(built("dsc").bundle)
    manifest = json.loads(json.dumps(opened.manifest))
    entry = next(a for a in manifest["artifacts"] + manifest["rejected"]
                 if (a["backend"], a["precision"]) == ("openvino", "fp16"))
    reason = "max relative error 3.1e-02 > bound 1.0e-02 (value)"
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a is not entry]
    manifest["rejected"] = [r for r in manifest["rejected"] if r is not entry] + [{**entry, "reason": reason}]
    bundle = dataclasses.replace(opened, manifest=manifest)
    with pytest.raises(UserError) as refused:
        bundle.artifact("openvino", "fp16")
    assert str(refused.value) == (f"bundle {str(bundle.path)!r} has no 'fp16' artifact for openvino: the build made "
                                  f"one and did not ship it ({reason}); it has: fp32")
    with pytest.raises(UserError, match=r"has no 'int8' artifact for openvino; it has: fp32$"):
        bundle.artifact("openvino", "int8")


def test_truncated_manifest_is_named(built, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(built("dsc").bundle, bundle)
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text[: len(text) // 2])
    result = run("runtime", "verify", str(bundle))
    assert result.returncode == 2 and "manifest.json is unreadable or truncated" in result.stderr


def test_pack_unpacks_to_a_bundle_that_verifies(built, tmp_path):
    archive = pack(built("dsc").bundle, tmp_path / "ship")
    assert archive.name == "dsc.tar.gz"
    checksum = archive.with_name("dsc.tar.gz.sha256").read_text()
    assert checksum == f"{sha256(archive)}  dsc.tar.gz\n"
    assert subprocess.run(["sha256sum", "-c", "dsc.tar.gz.sha256"], cwd=archive.parent).returncode == 0
    with tarfile.open(archive) as tar:
        assert all(n == "dsc" or n.startswith("dsc/") for n in tar.getnames())
        tar.extractall(tmp_path / "device", filter="data")
    result = run("runtime", "verify", str(tmp_path / "device" / "dsc"))
    assert result.returncode == 0 and result.stdout.strip().endswith("verify: passed"), result.stdout


def test_pack_refuses_a_bundle_that_does_not_match_its_manifest(built, tmp_path):
    bundle = tmp_path / "dsc"
    shutil.copytree(built("dsc").bundle, bundle)
    (bundle / "golden.npz").unlink()
    result = run("export", "pack", str(bundle))
    assert result.returncode == 2 and "golden.npz is missing" in result.stderr and "rebuild it" in result.stderr
    assert not list(tmp_path.glob("*.tar.gz*"))
