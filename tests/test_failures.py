"""Bad input, killed builds, planted mismatches and fuzzed inputs: clear errors, never a broken bundle."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import models
import runtime
from export import artifacts
from export.pipeline import BuildSettings, build
from runtime.tasks import task_of
from runtime.verify import verify
from tests.test_cli import REPO, run


class RunsCode:
    """A pickle that would create a file when loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def one_line_exit_2(result: subprocess.CompletedProcess) -> str:
    text = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    return text


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"kp.weight": RunsCode(str(marker))}, tmp_path / "evil.pt")
    text = one_line_exit_2(run("export", "build", "--variant", "dsc", "--checkpoint", str(tmp_path / "evil.pt"),
                               "--out", str(tmp_path / "out")))
    assert text.startswith(f"error: checkpoint '{tmp_path / 'evil.pt'}' refused: it holds pickled objects")
    assert "save model.state_dict() instead" in text
    assert not marker.exists()
    assert not (tmp_path / "out" / "dsc").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: torch.save([1, 2, 3], p), "is not a state dict (a mapping of names to tensors"),
    (lambda p: p.write_bytes(b"PK\x03\x04 truncated"), "is a damaged torch.save file (RuntimeError: "),
    (lambda p: p.write_bytes(b"\x80\x02" + bytes(range(200))), "is a damaged torch.save file (Unsupported operand 0)"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
     "is neither a torch.save file (a zip, or the legacy pickle) nor safetensors (it starts with b'_\\x82\\xc2\\xd9')"),
    (lambda p: p.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{not json"), "is not a readable safetensors file"),
    (lambda p: save_file(models.create("baseline").state_dict(), p),  # safetensors is read: its names are named
     "does not fit this variant: missing keys: predictor.encoder.down_blocks.0.conv.depthwise.weight"),
    (lambda p: torch.save(models.create("baseline").state_dict(), p),
     "does not fit this variant: missing keys: predictor.encoder.down_blocks.0.conv.depthwise.weight"),
    (lambda p: torch.save({**models.create("dsc").state_dict(), "kp.weight": torch.zeros(10, 3, 7, 7)}, p),
     "does not fit this variant: kp.weight has shape (10, 3, 7, 7), the variant expects (10, 35, 7, 7)"),
])
def test_checkpoint_problems_are_named(tmp_path, make, message):
    make(tmp_path / "ckpt.pt")
    text = one_line_exit_2(run("export", "build", "--variant", "dsc", "--checkpoint", str(tmp_path / "ckpt.pt"),
                               "--out", str(tmp_path / "out")))
    assert text.startswith(f"error: checkpoint '{tmp_path / 'ckpt.pt'}' ") and message in text, text


@pytest.mark.parametrize("args, message", [
    (["--out", "/dev/null/bundles"], "error: --out '/dev/null/bundles' is not writable"),
    (["--opset", "22"], "error: opset 22 is not supported; valid: 18..21"),
    (["--threads", "0"], "error: --threads 0 is not a positive number of threads"),
    (["--norm", "weight"], "error: unknown norm kind 'weight'; valid: batch, layer, instance, group"),
])
def test_settings_are_checked_before_any_work(args, message):
    assert one_line_exit_2(run("export", "build", "--variant", "dsc", *args)).startswith(message)


def test_diagnose_checks_its_input(tmp_path):
    assert one_line_exit_2(run("export", "diagnose", "--variant", "nope")).startswith("error: unknown variant 'nope'")
    text = one_line_exit_2(run("export", "diagnose", "--variant", "dsc", "--bundle", str(tmp_path)))
    assert text.startswith(f"error: bundle '{tmp_path}' has no manifest.json")


def test_killed_builds_leave_the_previous_bundle_or_none(built, tmp_path):
    """kill -9 before the bundle's folder exists, in the middle of the work, and late (after the latency stage)."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(built("dsc").bundle, out / "dsc")
    command = [sys.executable, "-m", "export", "build", "--variant", "dsc", "--out", str(out),
               "--backends", "onnxruntime"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for after in ("model", "ONNX export", "latency"):
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=env)
        for line in proc.stdout:
            if after in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, f"the build ended before it could be killed after {after!r}"
        bundle = out / "dsc"
        assert not bundle.exists() or verify(bundle).passed, after
        assert all(p.name == "dsc" or p.name.startswith(".dsc.") for p in out.iterdir())
    finished = run("export", "build", "--variant", "dsc", "--out", str(out),
                   "--backends", "onnxruntime")
    assert finished.returncode == 0, finished.stdout
    assert [p.name for p in out.iterdir()] == ["dsc"]  # the killed builds' leftovers are gone
    assert verify(out / "dsc").passed


def test_diagnose_names_the_layer_changed_after_export(built, tmp_path):
    bundle = built("dsc")
    model = models.create("dsc", checkpoint=bundle.manifest["checkpoint"]["path"])
    with torch.no_grad():
        model.predictor.encoder.down_blocks[2].conv.depthwise.weight.mul_(1.05)
    torch.save(model.state_dict(), tmp_path / "changed.pt")
    result = run("export", "diagnose", "--variant", "dsc", "--checkpoint", str(tmp_path / "changed.pt"),
                 "--bundle", str(bundle.bundle))
    assert result.returncode == 1, result.stdout + result.stderr
    for backend in ("onnxruntime", "openvino"):
        assert (f"{backend}: first divergence at module 'predictor.encoder.down_blocks.2.conv.depthwise' "
                "(Conv -> ") in result.stdout
    same = run("export", "diagnose", "--variant", "dsc", "--checkpoint", bundle.manifest["checkpoint"]["path"],
               "--bundle", str(bundle.bundle))
    assert same.returncode == 0 and "onnxruntime: no divergence: all" in same.stdout, same.stdout


def test_a_build_whose_parity_fails_says_where(checkpoint_for, tmp_path, monkeypatch):
    """The exported graph gets a keypoint head that PyTorch does not have."""
    real_export = artifacts.export_onnx

    def export_a_changed_model(model, *args, **kwargs):
        with torch.no_grad():
            model.module.kp.weight.mul_(1.1)
            info = real_export(model, *args, **kwargs)
            model.module.kp.weight.div_(1.1)
        return info

    monkeypatch.setattr(artifacts, "export_onnx", export_a_changed_model)
    result = build(BuildSettings(variant="dsc", checkpoint=checkpoint_for("dsc"), out=tmp_path, warmup=1, runs=3,
                                 backends=("onnxruntime",)))
    assert not result.passed and result.bundle == tmp_path / "dsc.failed" and not (tmp_path / "dsc").exists()
    assert any(f.startswith("model.onnx on onnxruntime (fp32): heatmap: max relative error") for f in result.failures)
    (where,) = result.manifest["diagnosis"]
    assert where.startswith("onnxruntime: first divergence at module 'kp' (Conv -> ")
    assert "first module output past the bound" in (result.bundle / "report.md").read_text()


@pytest.fixture(scope="module")
def runners(built):
    bundle = built("dsc").bundle
    with runtime.load(bundle, "onnxruntime", "fp32", threads=1) as ort, \
            runtime.load(bundle, "openvino", "fp32", threads=1) as ov:
        yield ort, ov


@pytest.fixture(scope="module")
def between_backends(built):
    """Each FP32 artifact is within its recorded bound of PyTorch, so the two are within the sum of each other."""
    bundle = runtime.Bundle.open(built("dsc").bundle)
    ort, ov = (bundle.artifact(backend, "fp32").bounds for backend in ("onnxruntime", "openvino"))
    return {name: ort[name] + ov[name] for name in ort}, task_of(bundle.spec)


DTYPES = [np.float32, np.float64, np.float16, np.int32, np.uint8, np.bool_, np.complex64]
# each mixed with the valid choice, so that about one example in five is a valid input
shapes = st.lists(st.integers(0, 8), min_size=0, max_size=5).map(tuple) | st.sampled_from(
    [(1, 3, 256, 256), (2, 3, 256, 256), (1, 3, 256, 255), (1, 4, 256, 256), (3, 256, 256), (0, 3, 256, 256)]
) | st.just((1, 3, 256, 256))
dtypes = st.sampled_from(DTYPES) | st.just(np.float32)
values = st.sampled_from(["unit", "nan", "inf", "-inf", "huge", "negative", "0..255"]) | st.just("unit")


def fuzz_array(shape, dtype, kind, seed):
    rng = np.random.default_rng(seed)
    x = rng.random(shape).astype(dtype) if np.dtype(dtype).kind != "b" else rng.random(shape) > 0.5
    if x.size and kind != "unit" and np.dtype(dtype).kind in "fc":
        flat = x.reshape(-1)
        special = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 3e38, "negative": -0.5, "0..255": 255.0}
        flat[rng.integers(0, flat.size)] = special[kind] if dtype != np.float16 or kind != "huge" else 6e4
    return x


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, dtype=dtypes, kind=values, seed=st.integers(0, 2**16))
def test_fuzzed_inputs_give_a_clear_value_error_or_the_right_result(runners, between_backends, shape, dtype, kind,
                                                                   seed):
    ort, ov = runners
    x = fuzz_array(shape, dtype, kind, seed)
    outcomes = []
    for runner in (ort, ov):
        try:
            outcomes.append(runner.infer(x))
        except ValueError as err:
            assert str(err).startswith("input 'image': expected") or "NaN or infinite" in str(err) \
                or "values span" in str(err), err
            outcomes.append(err)
    assert type(outcomes[0]) is type(outcomes[1])  # both backends judge an input alike
    if isinstance(outcomes[0], dict):
        batch = shape[0]
        assert outcomes[0]["value"].shape == (batch, 10, 2) and outcomes[0]["heatmap"].shape == (batch, 10, 58, 58)
        bounds, task = between_backends  # judged as parity judges them: keypoints on the image's extent
        parity = runtime.compare(outcomes[0], outcomes[1], bound=bounds, task=task)
        assert parity.passed, parity.failures()
    else:
        assert str(outcomes[0]) == str(outcomes[1])


def test_an_image_in_0_255_is_refused_with_the_expected_range(runners):
    ort, _ = runners
    with pytest.raises(ValueError, match=r"values span \[0, 255\]; expected \[0, 1\]"):
        ort.infer(np.linspace(0, 255, 3 * 256 * 256, dtype=np.float32).reshape(1, 3, 256, 256))
