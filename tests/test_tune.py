"""Backend settings chosen by measurement at build time, recorded per artifact and
used by `runtime.load`."""

from __future__ import annotations

import json
import os

import pytest

import runtime
from export.pipeline import BuildSettings, build
from runtime.machine import usable_cores
from runtime.tune import MARGIN, candidates
from runtime.backends.onnxruntime import DEFAULTS as ORT_DEFAULTS


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_candidates_are_the_defaults_then_one_change_each(backend):
    tried = candidates(backend)
    default = tried[0]
    for c in tried[1:]:
        changed = {k for k in c if c.get(k) != default.get(k)}
        assert len(changed) == 1, c
    # the thread count is the machine's and its load's, never the model's: not tuned, not shipped
    assert not any("threads" in c for c in tried)
    if backend == "onnxruntime":
        assert default == ORT_DEFAULTS
        assert tried[1] == {**default, "spinning": False}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned")
    return build(BuildSettings(variant="dsc", out=out, threads=2, warmup=2, runs=20, tune_budget=0.5))


def test_the_build_records_each_artifacts_measured_choice(tuned):
    m = tuned.manifest
    assert tuned.passed
    records = m["tuning"]["artifacts"]
    shipped = {a["key"]: a for a in m["artifacts"]}
    assert set(records) == {k for k in shipped if not k.endswith("/int8")}
    for key, record in records.items():
        p50 = {json.dumps(c["settings"], sort_keys=True): c["p50_ms"] for c in record["candidates"]}
        backend = key.split("/")[0]
        assert [c["settings"] for c in record["candidates"]] == candidates(backend)
        assert len({c["runs"] for c in record["candidates"]}) == 1  # every candidate timed as often
        chosen, default = (p50[json.dumps(record[k], sort_keys=True)] for k in ("chosen", "defaults"))
        assert record["chosen"] == record["defaults"] or chosen < (1 - MARGIN) * default
        if record["chosen"] != record["defaults"]:  # a change is made only on a difference the interval confirms
            assert record["best_vs_defaults"]["real"] and not record["undecided"]
        assert record["speedup"] == pytest.approx(default / chosen)
        assert shipped[key]["settings"] == record["chosen"]
        # the latency table measured the artifact with the settings it ships with
        ran = m["latency"][key]["settings"]
        assert all(ran[k] == v for k, v in record["chosen"].items() if k in ran), (ran, record["chosen"])
    assert "Backend settings, chosen by timing each backend's candidates interleaved" in (
        tuned.bundle / "report.md").read_text()


def test_runtime_load_uses_the_recorded_settings(tuned, tmp_path):
    manifest_path = tuned.bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for a in manifest["artifacts"]:
        if a["key"] == "onnxruntime/fp32":
            a["settings"] = {**ORT_DEFAULTS, "spinning": False, "graph_optimization": "basic", "threads": 97}
        if a["key"] == "openvino/fp32":
            a["settings"] = {"streams": 1, "pinning": False, "threads": 97}
    manifest_path.write_text(json.dumps(manifest))  # the manifest is not among the hashed files
    with runtime.load(tuned.bundle, "onnxruntime", "fp32", cache=False) as r:
        # a thread count in a bundle (one built before threads stopped being tuned) is not applied: ONNX Runtime's
        # own default, or in a process held to fewer CPUs than the machine has, those CPUs
        held = usable_cores() if usable_cores() < os.cpu_count() else "default"
        assert (r.settings["spinning"], r.settings["graph_optimization"], r.settings["threads"]) == (
            False, "basic", held)
        assert r.settings["tuned_on"] == "build"  # this machine built it
    with runtime.load(tuned.bundle, "onnxruntime", "fp32", threads=2, cache=False) as r:
        assert r.settings["threads"] == 2  # a caller's thread count comes first
    with runtime.load(tuned.bundle, "openvino", "fp32", cache=False) as r:
        assert (r.settings["pinning"], r.settings["threads"]) == (False, "default")
    with runtime.load(tuned.bundle, "openvino", "fp32", mode="throughput", cache=False) as r:
        assert r.settings["threads"] == "default"  # latency settings do not apply to throughput
    assert runtime.verify(tuned.bundle).passed


def test_settings_measured_on_another_cpu_do_not_travel(tuned, tmp_path):
    """The same bundle on a CPU of another signature (the build machine's record changed to a 4-core Arm
    board's): the build's settings are not applied, the backends' defaults are."""
    import shutil

    bundle = tmp_path / "dsc"
    shutil.copytree(tuned.bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["key"] == "onnxruntime/fp32":
            a["settings"] = {**ORT_DEFAULTS, "spinning": False, "execution_mode": "parallel"}
    manifest["machine"] = {**manifest["machine"], "machine": "aarch64", "cpu": "Arm CPU part 0xd0b",
                           "logical_cores": 4, "flags": ["asimd", "asimddp"]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with runtime.load(bundle, "onnxruntime", "fp32", cache=False) as r:
        assert r.settings["tuned_on"] == "defaults"
        assert (r.settings["spinning"], r.settings["execution_mode"]) == (True, "sequential")


def test_bench_choose_tune_measures_the_settings_on_the_device_and_load_follows_them(tuned, tmp_path):
    import shutil

    from runtime.bundle import DEVICE_CHOICE
    from runtime.machine import cpu_signature
    from tests.test_cli import run

    bundle = tmp_path / "dsc"
    shutil.copytree(tuned.bundle, bundle)
    result = run("runtime", "bench", str(bundle), "--choose", "--tune", "0.3", "--runs", "5", "--warmup", "1")
    assert result.returncode == 0, result.stderr
    assert "settings measured here: onnxruntime fp32: " in result.stdout
    choice = json.loads((bundle / DEVICE_CHOICE).read_text())[cpu_signature()]
    shipped = {a["key"] for a in json.loads((bundle / "manifest.json").read_text())["artifacts"]}
    assert set(choice["settings"]) == set(choice["tuning"]) == {k for k in shipped if not k.endswith("/int8")}
    for key, record in choice["tuning"].items():
        assert [c["settings"] for c in record["candidates"]] == candidates(key.split("/")[0])
        assert choice["settings"][key] == record["chosen"]
    # the device's own settings win over the build's, whatever the build chose
    manifest = json.loads((bundle / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["key"] == "onnxruntime/fp32":
            a["settings"] = {**ORT_DEFAULTS, "graph_optimization": "basic"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with runtime.load(bundle, "onnxruntime", "fp32", cache=False) as r:
        assert r.settings["tuned_on"] == "device"
        assert r.settings["graph_optimization"] == choice["settings"]["onnxruntime/fp32"]["graph_optimization"]
    refused = run("runtime", "bench", str(bundle), "--tune")
    assert refused.returncode == 2 and refused.stderr.startswith("error: --tune is for --choose (what this device runs)")


def test_under_a_memory_budget_the_memory_settings_are_candidates_and_what_is_chosen_fits(tuned):
    """ONNX Runtime's arena and memory pattern join the candidates, each candidate's peak measured in a
    fresh process; with no candidate within the budget the defaults stay (and the build's recommendation
    then names the overrun)."""
    from runtime.bundle import Bundle
    from runtime.tune import tune

    opened = Bundle.open(tuned.bundle)
    artifact = opened.artifact("onnxruntime", "fp32")
    feeds = {k: v[:1] for k, v in opened.golden()[0].items()}
    for budget in (1e6, 1.0):
        record = tune([artifact], opened.path, opened.spec, opened.manifest["outputs"], feeds, 2, 0.3,
                      memory_budget=budget)[artifact.key]
        tried = [c["settings"] for c in record["candidates"]]
        assert tried == candidates("onnxruntime", memory=True) and len(tried) == 7
        assert {"arena": False, "mem_pattern": False}.items() <= tried[-1].items()
        assert all(c["peak_mb"] > 0 for c in record["candidates"]) and record["memory_budget_mb"] == budget
        chosen = next(c for c in record["candidates"] if c["settings"] == record["chosen"])
        assert record["chosen"] == record["defaults"] or chosen["peak_mb"] <= budget
    assert record["chosen"] == record["defaults"]  # nothing fits in 1 MB


def test_a_candidate_that_cannot_run_the_artifact_is_left_out_with_its_reason(tuned, monkeypatch):
    """LiteRT's reference kernels refuse some graphs its XNNPACK delegate runs (unet's joins): such a
    candidate is not timed, the tuning goes on, and its record says why. Here OpenVINO is asked for
    a number of streams it cannot take."""
    from runtime import tune as tuning

    bundle = runtime.Bundle.open(tuned.bundle)
    (a,) = [x for x in bundle.artifacts if (x.backend, x.precision) == ("openvino", "fp32")]
    monkeypatch.setattr(tuning, "candidates", lambda backend, memory=False: [{}, {"streams": "many"}])
    inputs, _ = bundle.golden()
    one = {k: v[:1] for k, v in inputs.items()}
    record = tuning.tune([a], bundle.path, bundle.spec, bundle.manifest["outputs"], one, 2, 0.3)[a.key]
    assert record["chosen"] == {} and [c["settings"] for c in record["candidates"]] == [{}]
    (refused,) = record["cannot_run"]
    assert refused["settings"] == {"streams": "many"} and refused["reason"]
