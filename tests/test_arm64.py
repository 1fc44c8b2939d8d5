"""Across architectures: a dsc bundle built here (x86-64) with every artifact this machine
ships (FP32, the FP16 IR where it passes here, INT8 where a plan passes), judged on labelled
pictures it carries, packed as a linux-aarch64 kit, installed without network in an emulated
ARM64 Debian 12 and verified there, parity and accuracy on the labels.

qemu-user runs the arm64 Python, numpy, ONNX Runtime and OpenVINO of the kit's
wheels instruction by instruction, so parity there is parity across
architectures; its times are an emulator's and say nothing about a board.

Each board is made in the background from the session's start (`tests/background.py`): its
build and kit in a fresh Python, then the emulator's work, while the other tests run; these
tests run last and take what the board said.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from export.pack import archive_member, pack
from export.pipeline import BuildSettings, build
from tests import background
from tests.devices import arm64_root, in_arm64, old_glibc_tools
from tests.test_cli import REPO


def signed_dsc_kit(work: str) -> None:
    """In a fresh Python (`_fresh_python`): the board's dsc bundle, built with random weights as a first
    build is (FP16 and INT8 ship where they are within the allowed PCK drop), signed, and its aarch64 kit."""
    from models.labelled import write_heldout

    from export.signing import keygen

    work = Path(work)
    figures = write_heldout("dsc", work / "figures" / "dsc", 4)
    public, _ = keygen(work / "release")
    made = build(BuildSettings(variant="dsc", out=work / "out", quantize="int8", int8_anyway=True, int8_budget=5,
                               calib_samples=4, warmup=1, runs=5, tune_budget=0, data=figures, eval_samples=4,
                               sign=work / "release"))
    if not made.passed:
        raise SystemExit(f"the board's build failed: {made.failures}")
    kit = pack(made.bundle, target="linux-aarch64", python="3.11")
    (work / "made.json").write_text(json.dumps({"bundle": str(made.bundle), "kit": str(kit), "public": str(public)}))


def litert_dsc_kit(work: str) -> None:
    """In a fresh Python: dsc for ONNX Runtime and LiteRT, and its aarch64 kit."""
    work = Path(work)
    made = build(BuildSettings(variant="dsc", out=work / "out", backends=("onnxruntime", "litert"),
                               warmup=1, runs=5, tune_budget=0, memory=False))
    if not made.passed:
        raise SystemExit(f"the LiteRT board's build failed: {made.failures}")
    kit = pack(made.bundle, target="linux-aarch64", python="3.11")
    (work / "made.json").write_text(json.dumps({"bundle": str(made.bundle), "kit": str(kit)}))


def _fresh_python(make: str) -> tuple[Path, dict]:
    """A work folder and what `make` (one of the functions above) wrote there, run in its own Python:
    the build's torch threads and Python work stay out of the test session, which goes on meanwhile."""
    work = Path(tempfile.mkdtemp(prefix="edge-export-arm64-"))
    done = subprocess.run([sys.executable, "-c", f"import sys; from tests.test_arm64 import {make}; {make}(sys.argv[1])",
                           str(work)], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        pytest.fail(f"{make}: {done.stdout[-2000:]}{done.stderr[-3000:]}")
    return work, json.loads((work / "made.json").read_text())


@dataclass
class Board:
    """A kit installed in the emulated root, and what its commands said there."""

    root: Path
    inside: str  # the kit's folder in the root
    work: Path  # where it was built
    made: dict
    said: dict[str, subprocess.CompletedProcess]

    def clean(self) -> None:
        shutil.rmtree(self.root / self.inside.lstrip("/"), ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)


def _install(make: str, run: Callable[[Path, str, dict], dict[str, subprocess.CompletedProcess]]) -> Board:
    """`make`'s kit unpacked in the emulated root, then `run(root, the kit's folder there, what make wrote)`."""
    root = arm64_root()
    work, made = _fresh_python(make)
    inside = f"/edge-export-test-{uuid.uuid4().hex[:8]}"
    board = Board(root, inside, work, made, {})
    try:
        with tarfile.open(made["kit"]) as tar:
            tar.extractall(root / inside.lstrip("/"), filter="data")
        board.said = run(root, inside, made)
    except BaseException:
        board.clean()
        raise
    return board


def prepare_board() -> Board:
    """The signed dsc kit installed offline in the emulated Debian and checked there (in the background)."""
    def run(root: Path, inside: str, made: dict) -> dict[str, subprocess.CompletedProcess]:
        folder = f"{inside}/dsc-linux-aarch64"
        shutil.copy(made["public"], root / inside.lstrip("/") / "trusted.pub")  # the key this board trusts
        said = {"installed": in_arm64(root, f"sh {folder}/install.sh"),
                "doctor": in_arm64(root, f"{folder}/edge-runtime doctor {folder}/dsc --json"),
                "verified": in_arm64(root, f"{folder}/edge-runtime verify {folder}/dsc --json --trust {inside}/trusted.pub"),
                "table": in_arm64(root, f"{folder}/edge-runtime verify {folder}/dsc"),
                "offline": in_arm64(root, "python3 -c \"import socket; socket.create_connection(('151.101.2.132', 80), 5)\"")}
        for tamper in ("unsigned", "forged", "edited"):  # copies of the installed bundle, each spoilt one way
            copy = root / inside.lstrip("/") / tamper / "dsc"
            shutil.copytree(root / folder.lstrip("/") / "dsc", copy)
            spoil(copy, tamper)
            said[tamper] = in_arm64(root, f"{folder}/edge-runtime verify {inside}/{tamper}/dsc --trust {inside}/trusted.pub")
        return said

    return _install("signed_dsc_kit", run)


@pytest.fixture(scope="module")
def arm64():
    board = background.result("arm64", prepare_board)  # started with the session: see conftest.py
    said = board.said
    try:
        yield (Path(board.made["bundle"]), said["installed"], said["doctor"], (said["verified"], said["table"]),
               said["offline"], (board.inside, {t: said[t] for t in ("unsigned", "forged", "edited")}))
    finally:
        board.clean()


def spoil(bundle, how: str) -> None:
    """Remove the signature, flip a bit of it, or loosen the bounds in the manifest after signing."""
    import base64

    if how == "unsigned":
        (bundle / "manifest.sig").unlink()
    elif how == "forged":
        found = json.loads((bundle / "manifest.sig").read_text())
        raw = bytearray(base64.b64decode(found["signature"]))
        raw[-1] ^= 1
        (bundle / "manifest.sig").write_text(json.dumps({**found, "signature": base64.b64encode(raw).decode()}))
    else:
        manifest = json.loads((bundle / "manifest.json").read_text())
        for a in manifest["artifacts"]:
            a["bound"] = 1.0
        (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_the_kit_installs_in_an_arm64_debian_with_no_network(arm64):
    _, installed, doctor, _, offline, _ = arm64
    assert offline.returncode != 0 and "Network is unreachable" in offline.stderr, offline.stderr
    assert installed.returncode == 0, installed.stderr
    # numpy, both backends, pillow and cryptography (the bundle is signed), then the signature checked there
    assert "installed 5 packages and the runtime" in installed.stdout and "; signed by SHA256:" in installed.stdout
    report = json.loads(doctor.stdout)
    assert report["machine"]["machine"] == "aarch64" and report["machine"]["glibc"] == "2.36"
    assert report["machine"]["python"].startswith("3.11.")
    assert report["versions"]["onnxruntime"] and report["versions"]["openvino"]


def test_every_artifact_the_build_ships_passes_on_arm64_or_fails_with_the_backends_reason(arm64):
    """Each artifact passes within the bound the build stored (not one loosened for the device),
    or is a FAIL row that says why its backend cannot run it there; the exit code is non-zero
    only for such a failure, and no traceback reaches the user either way."""
    bundle, _, _, (verified, table), _, _ = arm64
    assert "Traceback" not in verified.stderr + table.stderr, verified.stderr + table.stderr
    result = json.loads(verified.stdout)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert not result["file_problems"] and result["files"] == len(manifest["files"])
    shipped = {(a["backend"], a["precision"]): a for a in manifest["artifacts"]}
    checked = {(a["backend"], a["precision"]): a for a in result["artifacts"]}
    assert set(checked) == set(shipped)
    assert ("openvino", "fp16") in shipped or any(r["precision"] == "fp16" for r in manifest["rejected"])
    allowed = manifest["evaluation"]["max_drop"]
    assert manifest["evaluation"]["images"] == 4 and allowed == {"pck": 0.01}
    for key, there in checked.items():
        if there["status"] == "pass":
            assert 0 < there["max_rel"] <= there["bound"] == shipped[key]["bounds"][there["worst_output"]], there
            # the labels, judged there too: 40 keypoints, within the allowed drop from PyTorch's figures
            assert there["truth"]["images"] == 4 and there["max_drop"] == allowed
            assert there["truth"]["reference"] == manifest["evaluation"]["reference"]
            assert there["truth"]["drop"]["pck"] <= allowed["pck"], there
        else:
            assert there["status"] == "FAIL" and there["failures"], there
    failed = [c for c in checked.values() if c["status"] != "pass"]
    assert result["passed"] == (not failed) and (verified.returncode != 0) == bool(failed), verified.stdout
    assert table.returncode == verified.returncode
    line = next(x for x in table.stdout.splitlines() if x.startswith("ok    4 labelled images in the bundle"))
    assert "PyTorch FP32 on them: keypoint_error_px " in line
    assert f"pck {manifest['evaluation']['reference']['pck']:.4f}" in line
    assert "on the labels" in table.stdout
    assert table.stdout.rstrip().endswith("verify: " + ("FAILED" if failed else "passed")), table.stdout
    for c in failed:  # each failure in its own line, with the backend's or parity's reason
        assert any(line.startswith(f"FAIL  {c['file']} ({c['backend']} {c['precision']}): ")
                   for line in table.stdout.splitlines()), table.stdout
    # FP32 on both backends is what a board can always fall back on
    assert checked["onnxruntime", "fp32"]["status"] == checked["openvino", "fp32"]["status"] == "pass", checked


@pytest.mark.parametrize("tamper, message", [
    ("unsigned", "error: bundle dsc is not signed, and the key in {inside}/trusted.pub must have signed it"),
    ("forged", "error: bundle dsc's signature does not verify with the trusted key SHA256:"),
    ("edited", "error: bundle dsc's manifest.json changed after it was signed"),
])
def test_the_board_refuses_a_bundle_its_trusted_key_did_not_sign_as_it_is(arm64, tamper, message):
    bundle, _, _, (verified, _), _, (inside, refused) = arm64
    assert json.loads(verified.stdout)["signed_by"].startswith("SHA256:")  # the signed bundle itself passes
    done = refused[tamper]
    text = (done.stdout + done.stderr).strip()
    assert done.returncode == 2 and len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert text.startswith(message.format(inside=inside)), text


def prepare_litert_board() -> Board:
    """dsc for ONNX Runtime and LiteRT, its aarch64 kit installed offline in the emulated Debian as if its
    glibc were 2.27 (Ubuntu 18.04's, a Jetson Nano's): LiteRT's wheels need 2.27, ONNX Runtime's 2.28."""
    def run(root: Path, inside: str, made: dict) -> dict[str, subprocess.CompletedProcess]:
        folder = f"{inside}/dsc-linux-aarch64"
        old_glibc_tools(root / inside.lstrip("/") / "glibc-2.27", "2.27")
        return {"installed": in_arm64(root, f"env PATH={inside}/glibc-2.27:/usr/bin:/bin sh {folder}/install.sh"),
                "verified": in_arm64(root, f"{folder}/edge-runtime verify {folder}/dsc --json")}

    return _install("litert_dsc_kit", run)


@pytest.fixture(scope="module")
def litert_board():
    board = background.result("litert_board", prepare_litert_board)
    try:
        yield (Path(board.made["bundle"]), json.loads(archive_member(board.made["kit"], "dsc-linux-aarch64/kit.json")),
               board.said["installed"], board.said["verified"])
    finally:
        board.clean()


def test_a_board_with_glibc_2_27_installs_litert_alone_and_verifies_its_tflite_within_the_stored_bounds(litert_board):
    bundle, kit, installed, verified = litert_board
    assert kit["backends"]["litert"]["glibc"] == "2.27" and kit["backends"]["onnxruntime"]["glibc"] == "2.28"
    assert kit["glibc"] == "2.27"  # the oldest glibc on which the kit installs a backend
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.startswith("installed 3 packages and the runtime")  # numpy, ai-edge-litert, pillow
    assert "; left out onnxruntime: its wheels need glibc 2.28, this device has glibc 2.27" in installed.stdout
    result = json.loads(verified.stdout)
    assert verified.returncode == 0 and result["passed"], verified.stdout + verified.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    stored = {(a["backend"], a["precision"]): a for a in manifest["artifacts"]}
    there = {(a["backend"], a["precision"]): a for a in result["artifacts"]}
    assert there["onnxruntime", "fp32"]["status"] == "skipped" and "not installed" in there["onnxruntime", "fp32"]["why"]
    for precision in ("fp32", "fp16"):
        row = there["litert", precision]  # XNNPACK's arm64 kernels, emulated instruction by instruction
        assert row["status"] == "pass", row
        assert 0 < row["max_rel"] <= row["bound"] == stored["litert", precision]["bounds"][row["worst_output"]]
