"""The device runtime: no torch, honest comparisons, checked inputs."""

from __future__ import annotations

import os
import shutil
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
        entry = tmp_path / backend / written[0]
        assert runner.settings["optimized_model_cache"] == str(entry)
        size = entry.stat().st_size
        entry.write_bytes(entry.read_bytes()[:size // 2])  # damaged (a copy cut short): made anew from the model
        with runtime.load(bundle, backend, "fp32", threads=2) as runner:
            cached = runner.infer(inputs)
        assert entry.stat().st_size == size
        for name in plain:
            np.testing.assert_allclose(cached[name], plain[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_cache_keeps_to_its_limit_and_drops_what_was_used_longest_ago(built, tmp_path, monkeypatch, backend):
    """Each rebuilt bundle brings new entries to the cache, and without a limit it only grows. Two loads
    that make entries of their own (ONNX Runtime keys its entry by the file: two copies of one bundle, as
    two builds of the same model leave; OpenVINO by the model and its precision: FP32 and FP16), in a
    cache that holds either load's entries but not both: each load keeps its own entries and drops the
    other's, oldest first, until the cache is within its limit; the outputs are those of the first time."""
    import runtime

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGE_EXPORT_CACHE", str(cache))
    copies = [shutil.copytree(built("dsc").bundle, tmp_path / name) for name in ("first", "second")]
    bundle = runtime.Bundle.open(copies[0])
    if backend == "onnxruntime":
        loads = [(copies[0], "fp32"), (copies[1], "fp32")]
    else:  # its second precision as this CPU's build shipped it (FP16, unless its bound refused it here)
        other = [a.precision for a in bundle.artifacts if a.backend == backend and a.precision != "fp32"]
        if not other:
            pytest.skip(f"the dsc build shipped no second precision on {backend} on this CPU")
        loads = [(copies[0], "fp32"), (copies[0], other[0])]
    inputs, _ = bundle.golden()

    def load(which: int):
        bundle, precision = loads[which]
        with runtime.load(bundle, backend, precision, threads=2) as runner:
            outputs = runner.infer(inputs)
        return outputs, {p.name: p.stat().st_size for p in (cache / backend).iterdir()}

    reference, first = load(0)  # OpenVINO's entries: plans at the example shape and at the inputs'
    _, both = load(1)
    second = {name: size for name, size in both.items() if name not in first}
    assert second and max(sum(first.values()), sum(second.values())) < sum(both.values())
    limit = -(-max(sum(first.values()), sum(second.values())) // (1 << 20))  # MB: either load's, not both
    monkeypatch.setenv("EDGE_EXPORT_CACHE_MB", str(limit))
    shutil.rmtree(cache)
    for which in (0, 1, 0):
        outputs, entries = load(which)
        mine, other = (first, second)[which], (second, first)[which]
        assert set(mine) <= set(entries) <= set(mine) | set(other)
        assert sum(entries.values()) <= limit << 20
        if which == 1:
            assert set(first) - set(entries), "nothing of the first load's was dropped"
        else:
            for name in reference:
                np.testing.assert_allclose(outputs[name], reference[name], rtol=0, atol=1e-5)

    monkeypatch.setenv("EDGE_EXPORT_CACHE_MB", "2GB")
    with pytest.raises(runtime.UserError, match=r"^EDGE_EXPORT_CACHE_MB='2GB' is not a whole number of megabytes"):
        runtime.load(copies[0], backend, "fp32")


HELD_TO_ONE_CPU = """
import os, sys
import numpy as np
import runtime
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
before = len(os.listdir("/proc/self/task"))
threads = None if sys.argv[2] == "default" else int(sys.argv[2])
with runtime.load(sys.argv[1], "onnxruntime", "fp32", threads=threads, cache=False) as runner:
    runner.infer(np.zeros((1, 3, 256, 256), np.float32))
    print(runner.settings["threads"], len(os.listdir("/proc/self/task")) - before)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="on a machine of one CPU, its default is that CPU")
def test_a_process_held_to_one_cpu_runs_onnx_runtime_on_one_thread(built):
    """ONNX Runtime sizes its pool by the machine's cores: held to one CPU (taskset, a cpuset), a runner left
    to its default would put a second thread on that CPU; the runtime asks for one, and starts the threads that
    asking for one starts, where two threads start one more."""
    def held(threads: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", HELD_TO_ONE_CPU, str(built("dsc").bundle), threads],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    (default, started), (_, one), (_, two) = held("default"), held("1"), held("2")
    assert default == "1" and started == one and int(two) == int(one) + 1


def test_openvino_compiles_a_plan_per_input_shape_and_then_shares_one_with_the_dynamic_axes(built, monkeypatch):
    """The dsc IR keeps a dynamic batch. The runner compiles it at the spec's example shape when it
    loads and at each new batch size it is called with, up to STATIC_PLANS (two here); later sizes
    share one plan compiled with the dynamic batch. Every plan gives the golden outputs."""
    import runtime
    from runtime.backends import openvino as plugin

    monkeypatch.setattr(plugin, "STATIC_PLANS", 2)
    bundle = runtime.Bundle.open(built("dsc").bundle)
    inputs, expected = bundle.golden()  # two images
    (name,) = inputs
    with runtime.load(bundle, "openvino", "fp32", threads=2, cache=False) as runner:
        assert runner.plans == {"1x3x256x256": "static"}
        assert runner.settings["plans"] == "static at the first 2 input shape(s) called; then one with the dynamic axes"
        images = inputs[name]
        for batch in (np.concatenate([images, images]), images, images[:1], np.concatenate([images, images[:1]])):
            got = runner.infer({name: np.ascontiguousarray(batch)})
            for out, ref in expected.items():
                rows = np.concatenate([ref, ref])[:len(batch)]
                np.testing.assert_allclose(got[out], rows, rtol=0, atol=1e-4 * float(np.abs(ref).max()), err_msg=out)
        assert runner.plans == {"1x3x256x256": "static", "4x3x256x256": "static", "2x3x256x256": "dynamic",
                                "3x3x256x256": "dynamic"}


def test_a_near_constant_score_is_judged_on_its_magnitude_not_its_spread():
    """A pooled confidence score of about 0.5 that barely moves between inputs: FP16's
    absolute error of 2e-4 is rounding of the value, and must pass FP16's bound; over the
    spread alone (0.002) it would read 1e-1 and be refused."""
    score = np.float32([[0.5004], [0.4986], [0.5006]])
    parity = compare({"score": score}, {"score": score + np.float32(2e-4)}, bound=1e-2)
    (o,) = parity.outputs
    assert parity.passed and o.max_abs == pytest.approx(2e-4, rel=1e-3)
    assert o.max_rel == pytest.approx(2e-4 / np.sqrt(np.mean(score.astype(np.float64) ** 2)), rel=1e-4)
    # an output that spans its own magnitude is still measured on its range
    heatmap = np.zeros((1, 4, 8, 8), np.float32)
    heatmap[0, :, 3, 3] = 0.01
    (h,) = compare({"h": heatmap}, {"h": heatmap + np.float32(2e-4)}, bound=1e-2).outputs
    assert h.max_rel == pytest.approx(2e-4 / 0.01, rel=1e-4) and not h.passed


def test_keypoints_are_measured_on_the_image_extent():
    """Keypoints in [-1, 1] that an untrained detector puts within 0.01 of the centre:
    3e-5 off is 0.004 px of a 256-pixel image, 1.5e-5 of the extent 2, not 3e-3 of their spread."""
    task = Keypoints({"kind": "keypoints", "image_size": 256}, ("value", "heatmap"))
    value = np.linspace(-0.005, 0.005, 20, dtype=np.float32).reshape(1, 10, 2)
    parity = compare({"value": value}, {"value": value + np.float32(3e-5)}, bound=1e-4, task=task)
    assert parity.outputs[0].max_rel == pytest.approx(3e-5 / 2, rel=1e-3) and parity.passed
    assert parity.task["keypoint_error_px"] == pytest.approx(np.hypot(3e-5, 3e-5) * 128, rel=1e-3)
    without = compare({"value": value}, {"value": value + np.float32(3e-5)}, bound=1e-4)
    assert not without.passed  # the same figures with no task behind them: over the spread, 3e-3


def test_a_long_stage_into_a_log_prints_a_plain_line_now_and_then_and_stops_with_it():
    """What `export build` prints per stage into a file or a pipe (every 30 s there; here every 10 ms)."""
    import io
    import threading

    from runtime.progress import heartbeat

    two = threading.Event()

    class Log(io.StringIO):
        def write(self, text):
            n = super().write(text)
            if self.getvalue().count("\n") >= 2:
                two.set()
            return n

    log = Log()
    with heartbeat(lambda s: f"  INT8 search: {s:.2f} s so far", every=0.01, stream=log):
        assert two.wait(60)
    lines = log.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("  INT8 search: ") and line.endswith(" s so far") for line in lines)
    assert "\x1b" not in log.getvalue()
    threading.Event().wait(0.05)
    assert log.getvalue().splitlines() == lines  # the thread ended with the block
