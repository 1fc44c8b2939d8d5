"""`python -m export compete`: the bundle's artifacts against the PyTorch peers,
in one run, with GFLOP/s against the measured peak. Speed itself is shown by
the command's own figures (docs/results/compete.md), not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import runtime
from runtime.runners import choose


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def figures(built, tmp_path_factory):
    """One run over the built dsc bundle and a baseline bundle whose manifest is broken."""
    root = tmp_path_factory.mktemp("compete")
    (root / "dsc").symlink_to(built("dsc").bundle)
    (root / "baseline").mkdir()
    (root / "baseline" / "manifest.json").write_text('{"format": 2, "name": "baseline"}')
    result = run_cli("compete", "--variants", "dsc,baseline", "--artifacts", str(root), "--runs", "10",
                     "--json")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "dsc: setting up the peers and timing" in result.stderr  # the progress, apart from the figures
    return json.loads(result.stdout)


def test_a_variant_that_cannot_be_loaded_is_reported_and_the_rest_still_run(figures):
    dsc, baseline = figures["variants"]
    assert dsc["variant"] == "dsc" and "error" not in dsc
    assert baseline["variant"] == "baseline"
    assert "manifest.json lacks the 'spec' entry" in baseline["error"]


def test_every_contender_in_one_run(figures, built):
    dsc = figures["variants"][0]
    artifacts = {f"{a['backend']} {a['precision']}" for a in built("dsc").manifest["artifacts"]}
    assert set(dsc["contenders"]) >= {"pytorch eager", "torch.compile", *artifacts}
    assert dsc["peers"]["pytorch eager"]["status"] == "ok"
    assert dsc["peers"]["torch.compile"]["status"] == "ok"
    assert dsc["peers"]["torch.compile"]["max_abs_vs_eager"] <= 1e-3  # the same model, not a broken fast one
    executorch = dsc["peers"]["executorch xnnpack"]["status"]
    assert executorch == "ok" or executorch.startswith("not installed")
    for name, row in dsc["contenders"].items():
        assert row["runs"] >= 5 and 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"], name
        # GFLOP/s is the model's work over the median, against the peak measured in the same run
        assert row["gflops"] == pytest.approx(dsc["gflop"] * 1e3 / row["p50_ms"])
        assert row["of_peak"] == pytest.approx(row["gflops"] / figures["peak"]["gflops"])
    assert dsc["best_artifact"] in artifacts
    assert dsc["speedup"]["torch.compile"] == pytest.approx(
        dsc["contenders"]["torch.compile"]["p50_ms"] / dsc["contenders"][dsc["best_artifact"]]["p50_ms"])
    fp32 = {a for a in artifacts if a.endswith(" fp32")}
    assert dsc["best_fp32"] == min(fp32, key=lambda a: dsc["contenders"][a]["p50_ms"])
    assert dsc["fp32_speedup"]["torch.compile"] == pytest.approx(
        dsc["contenders"]["torch.compile"]["p50_ms"] / dsc["contenders"][dsc["best_fp32"]]["p50_ms"])
    assert 0.8 < dsc["gflop"] < 0.85  # 410.6 M mult-adds of convs plus the heads' contractions, x2


def test_cold_start_with_and_without_the_compiled_model_cache(figures):
    dsc = figures["variants"][0]
    cold = dsc["cold_start"]
    for artifact in ("openvino fp32", "onnxruntime fp32"):
        assert cold[artifact]["no_cache_ms"] > 0 and cold[artifact]["warm_cache_ms"] > 0


def test_the_standard_hourglass_is_held_against_the_peak(figures):
    h = figures["hourglass"]
    assert h["input"] == [3, 64, 64]
    # the reference's 989,312,832 mult-adds less the 767,808 that torchinfo counts for the BatchNorms, x2
    assert h["gflop"] * 1e9 == pytest.approx(2 * (989_312_832 - 767_808))
    assert set(h["backends"]) == {"pytorch", "onnxruntime", "openvino"} and h["best"] in h["backends"]


def test_load_runs_the_recommended_artifact_by_default(built):
    bundle = runtime.Bundle.open(built("dsc").bundle)
    recommended = bundle.manifest["recommended"]
    latency = bundle.manifest["latency"]
    shipped = {a.key for a in bundle.artifacts}
    assert latency[f"{recommended['backend']}/{recommended['precision']}"]["p50_ms"] == min(
        v["p50_ms"] for k, v in latency.items() if k in shipped)
    with runtime.load(bundle) as runner:
        assert (runner.backend, runner.precision) == (recommended["backend"], recommended["precision"])
    # a named backend without a precision: the recommended precision on it, else FP32
    other = "onnxruntime" if recommended["backend"] == "openvino" else "openvino"
    assert choose(bundle, other, None) == (other, "fp32")


def test_unknown_variant_is_one_line():
    result = run_cli("compete", "--variants", "dsc,nope")
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown variant 'nope'; valid: baseline, dsc,") and not result.stdout


def test_the_best_fp32_artifact_under_the_roofline_whole_and_part_by_part(figures):
    """Both roofs measured in the run; work counted on the graph as it runs, so the rewritten dsc graph
    does less than PyTorch's count of the module (the Jacobian head's contraction comes first)."""
    roofs, peak = figures["roofs"], figures["peak"]
    assert roofs["gflops"] == peak["gflops"] > 0
    # the peak is the fastest product of the libraries timed, whichever it was on this CPU
    assert set(peak["per_library"]) == {"torch.mm", "ONNX Runtime"}
    assert all(set(rates) == {"512", "1024", "2048"} for rates in peak["per_library"].values())
    assert peak["gflops"] == max(rate for rates in peak["per_library"].values() for rate in rates.values())
    assert peak["per_library"][peak["library"]][str(peak["size"])] == peak["gflops"]
    assert len(roofs["bandwidth_gb_s"]) == 3 and all(rate > 0 for rate in roofs["bandwidth_gb_s"].values())
    dsc = figures["variants"][0]
    roof = dsc["roofline"]
    assert roof["contender"] == dsc["best_fp32"]
    whole = roof["whole"]
    assert whole["measured_ms"] == dsc["contenders"][dsc["best_fp32"]]["p50_ms"]
    assert whole["share"] == pytest.approx(whole["bound_ms"] / whole["measured_ms"])
    assert whole["gap_ms"] == pytest.approx(whole["measured_ms"] - whole["bound_ms"])
    # 410.6 M mult-adds less the 167.2 M the rewrite saves, x2, plus the element-wise work
    assert 0.48 < whole["gflop"] < 0.52 < dsc["gflop"]
    parts = roof["parts"]
    assert set(parts) == {"down", "predictor", "kp", "jacobian", "outside any module"}
    assert sum(p["gflop"] for p in parts.values()) == pytest.approx(whole["gflop"])
    assert sum(p["bound_ms"] for p in parts.values()) == pytest.approx(whole["bound_ms"])
    # compute- or memory-bound depends on the roofs this machine measured, so only what holds on any CPU:
    # a part's bound is at least its work at the peak, and the profiler timed the hourglass
    assert all(p["bound_ms"] >= p["gflop"] / roofs["gflops"] * 1e3 * (1 - 1e-9) for p in parts.values())
    assert parts["predictor"]["bound"] in ("compute", "memory") and parts["predictor"]["measured_ms"] > 0
