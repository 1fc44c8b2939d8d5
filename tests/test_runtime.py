"""The device runtime: no torch, honest comparisons, checked inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from runtime.bench import latency_stats
from runtime.compare import compare
from runtime.tasks import Keypoints


def test_runtime_does_not_import_torch():
    code = ("import runtime, runtime.cli, runtime.verify, runtime.runners, sys; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxsim', 'models', 'export')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compare_figures():
    ref = {"a": np.array([0.0, 1.0, 2.0, 4.0])}
    out = {"a": np.array([0.0, 1.0, 2.0, 4.004])}
    parity = compare(ref, out, bound=1e-3)
    (a,) = parity.outputs
    assert a.max_abs == pytest.approx(0.004)
    assert a.mean_abs == pytest.approx(0.001)
    assert a.max_rel == pytest.approx(0.001)  # over the reference's range of 4
    assert a.cosine == pytest.approx(1.0, abs=1e-6)
    assert parity.passed
    failing = compare(ref, out, bound=5e-4)
    assert not failing.passed
    assert failing.failures() == ["a: max relative error 1.00e-03 > bound 5.0e-04 (max abs 4.00e-03, cosine 1.000000)"]


def test_compare_fails_missing_or_misshapen_outputs():
    ref = {"a": np.zeros(3), "b": np.ones(2)}
    parity = compare(ref, {"a": np.zeros(4)}, bound=1.0)
    assert [o.passed for o in parity.outputs] == [False, False]


def test_keypoint_error_in_pixels():
    ref = np.zeros((1, 2, 2))
    out = np.array([[[3 / 128, 4 / 128], [0.0, 0.0]]])  # 5 px off in a 256 image, 0 px
    task = Keypoints({"image_size": 256}, ("value",))
    assert task.error_px(ref, out) == pytest.approx(2.5)


def test_latency_stats():
    stats = latency_stats([1.0] * 98 + [10.0, 20.0])
    assert stats["p50_ms"] == 1.0 and stats["min_ms"] == 1.0 and stats["p99_ms"] > 9.0


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_cache_is_written_once_and_gives_the_same_outputs(built, tmp_path, monkeypatch, backend):
    import runtime

    monkeypatch.setenv("EDGE_EXPORT_CACHE", str(tmp_path))
    bundle = runtime.Bundle.open(built("dsc").bundle)
    inputs, _ = bundle.golden()
    with runtime.load(bundle, backend, "fp32", threads=2, cache=False) as runner:
        plain = runner.infer(inputs)
    assert not any(tmp_path.iterdir())
    for _ in range(2):  # the first load writes the cache, the second reads it
        with runtime.load(bundle, backend, "fp32", threads=2) as runner:
            cached = runner.infer(inputs)
        written = sorted(p.name for p in (tmp_path / backend).iterdir())
        assert written and not any(name.endswith(".partial") for name in written)
        for name in plain:
            np.testing.assert_allclose(cached[name], plain[name], rtol=0, atol=1e-5)
    if backend == "onnxruntime":
        assert runner.settings["optimized_model_cache"] == str(tmp_path / backend / written[0])
