"""The command lines as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from runtime.bundle import sha256
from runtime.machine import usable_cores

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, **(env or {})})


def test_build_writes_a_complete_bundle_that_verifies(tmp_path):
    result = run("export", "build", "--variant", "dsc", "--out", str(tmp_path), "--pack",
                 env={"FORCE_COLOR": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\x1b[" not in result.stdout + result.stderr  # a pipe gets no terminal styling
    assert "parity against PyTorch and latency" in result.stdout and "PyTorch eager" in result.stdout
    bundle = tmp_path / "dsc"
    names = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert names == ["golden.npz", "latency_memory.png", "manifest.json", "model.onnx", "openvino/model.bin",
                     "openvino/model.fp16.bin", "openvino/model.fp16.xml", "openvino/model.xml", "report.md"]
    # no temporary folder left behind; the archive to copy to a device beside the bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dsc", "dsc.tar.gz", "dsc.tar.gz.sha256"]
    assert f"Packed: {tmp_path / 'dsc.tar.gz'}" in result.stdout
    assert "pip wheel --no-deps -w dist ." in result.stdout and "pip install edge_export-" in result.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["files"] == {n: sha256(bundle / n) for n in names if n != "manifest.json"}
    assert [o["name"] for o in manifest["outputs"]] == ["value", "jacobian", "heatmap"]
    assert manifest["spec"]["inputs"] == [{"name": "image", "shape": ["batch", 3, 256, 256], "dtype": "float32",
                                           "range": [0.0, 1.0], "multiple": 1, "example": [1, 3, 256, 256]}]
    assert manifest["model"]["params"] == 1_702_758
    assert manifest["export"]["opset"] == 20 and manifest["versions"]["torch"].startswith("2.")
    assert {a["key"] for a in manifest["artifacts"]} == {"onnxruntime/fp32", "openvino/fp32", "openvino/fp16"}
    for key, lat in manifest["latency"].items():
        assert lat["p50_ms"] > 0 and lat["runs"] >= 10 and lat["settings"]["threads"] == usable_cores(), key  # the default
    assert len({lat["runs"] for lat in manifest["latency"].values()}) == 1  # every row timed as often
    ov = manifest["latency"]["openvino/fp32"]["settings"]
    assert ov["precision_hint_requested"] == "f32" and ov["precision_hint"] == "f32"
    assert "| model.onnx | onnxruntime fp32 | pass |" in (bundle / "report.md").read_text()
    assert manifest["spec"]["task"] == {"kind": "keypoints", "output": "value", "image_size": 256,
                                "names": ["head", "neck", "pelvis", "l_hand", "r_hand", "l_foot", "r_foot",
                                          "l_elbow", "r_elbow", "l_knee"]}
    report = (bundle / "report.md").read_text()
    assert "| size | peak MB | p50 ms | p90 ms | runs |" in report
    # each shipped artifact's peak memory, measured in a process of its own
    assert set(manifest["memory"]["artifacts"]) == {a["key"] for a in manifest["artifacts"]}
    assert all(m["peak_mb"] > 0 for m in manifest["memory"]["artifacts"].values()) and "## Memory" in report
    with Image.open(bundle / "latency_memory.png") as plot:  # latency distributions and memory by phase
        assert plot.size[0] > plot.size[1] > 300
    assert "![latency distribution per row and memory by phase per artifact](latency_memory.png)" in report

    verify = run("runtime", "verify", str(bundle))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.strip().endswith("verify: passed")

    bench = run("runtime", "bench", str(bundle), "--runs", "5", "--json")
    assert bench.returncode == 0 and json.loads(bench.stdout)["p50_ms"] > 0

    # random weights: the picture says so, and so does the command, with the way to a meaningful one
    Image.new("RGB", (320, 200), (90, 140, 60)).save(tmp_path / "photo.png")
    infer = run("runtime", "infer", str(bundle), str(tmp_path / "photo.png"), "--out", str(tmp_path / "pred"))
    assert infer.returncode == 0, infer.stderr
    assert "built with random weights" in infer.stdout and "python -m models train --variant dsc" in infer.stdout
    picture = Image.open(tmp_path / "pred" / "photo.png")
    assert picture.width == 320 and picture.height > 200  # the caption band below the image
    assert json.loads((tmp_path / "pred" / "photo.json").read_text())["weights"] == "random"


def test_verify_names_a_changed_file(built, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(built("dsc").bundle, bundle)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.onnx").write_bytes(data)
    result = run("runtime", "verify", str(bundle))
    assert result.returncode == 1
    assert "FAIL  model.onnx has changed" in result.stdout and "verify: FAILED" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--variant", "nope"], "error: unknown variant 'nope'; valid: baseline, dsc, asym,"),
    (["--variant", "dsc", "--backends", "tensorrt"], "error: unknown backend 'tensorrt'; valid: onnxruntime, openvino, litert"),
    (["--variant", "dsc", "--opset", "13"], "error: opset 13 is not supported; valid: 18..21"),
    (["--variant", "dsc", "--conv", "winograd"], "error: unknown conv kind 'winograd'; valid: standard, dsc, asym"),
    (["--variant", "dsc", "--checkpoint", "missing.pt"], "error: checkpoint 'missing.pt' does not exist"),
    (["--variant", "dsc", "--out", "pyproject.toml"], "error: --out 'pyproject.toml' is a file"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run("export", "build", *args)
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["verify", "no/such/bundle"], "error: bundle 'no/such/bundle' is not a folder"),
    (["bench", "."], "error: bundle '.' has no manifest.json"),
])
def test_runtime_bad_input_is_one_line_and_exit_2(args, message):
    result = run("runtime", *args)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_list_shows_every_variant_with_its_figures():
    import models

    result = run("export", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in models.list_variants():
        assert any(line.startswith(f"│ {name} ") for line in lines), name
    row = next(line for line in lines if line.startswith("│ baseline "))
    assert "detector" in row and "3x256x256" in row and "14,215,368" in row and "1,277.9 M" in row
    row = next(line for line in lines if line.startswith("│ segnet-dsc "))
    assert "segmenter" in row and "3x128x128" in row and "1,749,671" in row and "1.75 M" in row
