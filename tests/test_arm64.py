"""Across architectures: the dsc bundle built here (x86-64), packed as a linux-aarch64 kit,
installed without network in an emulated ARM64 Debian 12 and verified there.

qemu-user runs the arm64 Python, numpy, ONNX Runtime and OpenVINO of the kit's
wheels instruction by instruction, so parity there is parity across
architectures; its times are an emulator's and say nothing about a board.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import uuid

import pytest

from export.pack import pack
from tests.devices import arm64_root, in_arm64


@pytest.fixture(scope="module")
def arm64(built, tmp_path_factory):
    root = arm64_root()
    bundle = tmp_path_factory.mktemp("arm64") / "dsc"
    shutil.copytree(built("dsc").bundle, bundle)
    kit = pack(bundle, target="linux-aarch64", python="3.11")
    inside = f"/edge-export-test-{uuid.uuid4().hex[:8]}"
    with tarfile.open(kit) as tar:
        tar.extractall(root / inside.lstrip("/"), filter="data")
    folder = f"{inside}/dsc-linux-aarch64"
    try:
        installed = in_arm64(root, f"sh {folder}/install.sh")
        doctor = in_arm64(root, f"{folder}/edge-runtime doctor {folder}/dsc --json")
        verified = in_arm64(root, f"{folder}/edge-runtime verify {folder}/dsc --json")
        offline = in_arm64(root, "python3 -c \"import socket; socket.create_connection(('151.101.2.132', 80), 5)\"")
        yield bundle, installed, doctor, verified, offline
    finally:
        shutil.rmtree(root / inside.lstrip("/"), ignore_errors=True)


def test_the_kit_installs_in_an_arm64_debian_with_no_network(arm64):
    _, installed, doctor, _, offline = arm64
    assert offline.returncode != 0 and "Network is unreachable" in offline.stderr, offline.stderr
    assert installed.returncode == 0, installed.stderr
    assert "installed 4 packages and the runtime" in installed.stdout
    report = json.loads(doctor.stdout)
    assert report["machine"]["machine"] == "aarch64" and report["machine"]["glibc"] == "2.36"
    assert report["machine"]["python"].startswith("3.11.")
    assert report["versions"]["onnxruntime"] and report["versions"]["openvino"]


def test_the_x86_built_bundle_passes_verify_on_arm64_within_its_stored_bounds(arm64):
    bundle, _, _, verified, _ = arm64
    result = json.loads(verified.stdout)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert verified.returncode == 0 and result["passed"], verified.stdout + verified.stderr
    assert not result["file_problems"] and result["files"] == len(manifest["files"])
    checked = {(a["backend"], a["precision"]): a for a in result["artifacts"]}
    assert set(checked) == {(a["backend"], a["precision"]) for a in manifest["artifacts"]}
    for a in manifest["artifacts"]:
        there = checked[a["backend"], a["precision"]]
        # the bound the build stored for that output, not one loosened for the device
        assert there["status"] == "pass" and 0 < there["max_rel"] <= there["bound"] == a["bounds"][
            there["worst_output"]], there
