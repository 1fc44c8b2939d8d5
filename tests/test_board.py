"""What a board needs from a bundle: `runtime doctor`, `runtime bench --choose` and the choice
`runtime.load` follows, and `export pack --target`'s offline kit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

import runtime
from export.pack import pack, wheel_floor
from runtime.bundle import DEVICE_CHOICE, Artifact, Bundle, sha256
from runtime.backends.base import CANNOT, EMULATED, RUNS, SLOW
from runtime.doctor import artifact_status, doctor
from runtime.memory import PHASES
from runtime.machine import cpu_signature, machine_info
from tests.test_cli import REPO, run


@pytest.fixture
def bundle(built, tmp_path):
    copy = tmp_path / "dsc"
    shutil.copytree(built("dsc").bundle, copy)
    return copy


def test_bench_choose_times_every_artifact_and_load_follows_the_choice(bundle):
    result = run("runtime", "bench", str(bundle), "--choose", "--runs", "5", "--warmup", "1", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    shipped = {f"{a.backend} {a.precision}" for a in Bundle.open(bundle).artifacts}
    assert set(figures["artifacts"]) == shipped and all(f["runs"] == 5 for f in figures["artifacts"].values())
    assert all(f["memory"]["peak_mb"] > f["memory"]["phases"]["python"]["rss_mb"] for f in figures["artifacts"].values())
    fastest = min(figures["artifacts"], key=lambda k: figures["artifacts"][k]["p50_ms"])
    assert f"{figures['choice']['backend']} {figures['choice']['precision']}" == fastest
    choices = json.loads((bundle / DEVICE_CHOICE).read_text())
    assert list(choices) == [figures["cpu_signature"]] == [cpu_signature()]
    with runtime.load(bundle) as runner:
        assert f"{runner.backend} {runner.precision}" == fastest
    # load reads the file: another choice for this CPU is followed, one for another CPU is not
    other = next(k for k in sorted(shipped) if k != fastest)
    backend, precision = other.split()
    choices[cpu_signature()].update(backend=backend, precision=precision)
    (bundle / DEVICE_CHOICE).write_text(json.dumps(choices))
    with runtime.load(bundle) as runner:
        assert (runner.backend, runner.precision) == (backend, precision)
    (bundle / DEVICE_CHOICE).write_text(json.dumps({"aarch64-000000000000": choices[cpu_signature()]}))
    recommended = Bundle.open(bundle).manifest["recommended"]
    with runtime.load(bundle) as runner:
        assert (runner.backend, runner.precision) == (recommended["backend"], recommended["precision"])
    # the choice sits beside the hashed files: the bundle still verifies, and is packed without it
    assert run("runtime", "verify", str(bundle)).returncode == 0
    with tarfile.open(pack(bundle)) as tar:
        assert f"dsc/{DEVICE_CHOICE}" not in tar.getnames()


def test_the_single_stream_protocol_gives_intervals_and_calls_a_difference_real_or_not(bundle, tmp_path):
    """Short here (64 queries, 0.2 s per artifact; on a board the defaults are 1024 and 60 s): every artifact
    timed at least that much, each percentile inside its bootstrap interval, the machine's conditions before
    and after, and the two fastest compared by the interval of their p50 ratio."""
    result = run("runtime", "bench", str(bundle), "--choose", "--protocol", "single-stream", "--min-queries", "64",
                 "--min-duration", "0.2", "--warmup", "2", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for f in figures["artifacts"].values():
        assert f["protocol"] == "single-stream" and f["runs"] >= 64 and f["seconds"] >= 0.2
        assert all(low <= f[q] <= high for q, (low, high) in f["intervals"].items()), f
        assert all(len(f["conditions"][when]["loadavg"]) == 3 for when in ("before", "after"))
    versus = figures["versus_runner_up"]
    low, high = versus["interval"]
    assert versus["ratio_p50"] >= 1 and low <= versus["ratio_p50"] <= high
    assert versus["real"] == (not versus["busy"] and not low <= 1 <= high)  # busy: undecided, whatever the interval
    choice = json.loads((bundle / DEVICE_CHOICE).read_text())[cpu_signature()]
    assert choice["protocol"] == "single-stream" and choice["versus_runner_up"] == versus
    text = run("runtime", "bench", str(bundle), "--backend", "onnxruntime", "--precision", "fp32", "--protocol",
               "single-stream", "--min-queries", "64", "--min-duration", "0.2", "--sustained", "0.6", "--window",
               "0.2", "--plot", str(tmp_path / "sustained.png")).stdout
    assert "single-stream: " in text and "95% intervals: p50 " in text and "before: load " in text
    assert "sustained 0.6 s: p50 per 0.2 s window " in text and "drift of the last window from the first" in text
    # the picture: latency distribution, memory by phase and p50 over time, three panels side by side
    assert f"plot: {tmp_path / 'sustained.png'}" in text
    with Image.open(tmp_path / "sustained.png") as picture:
        assert picture.format == "PNG" and picture.size[0] == 3 * picture.size[1] * 5.5 / 4


def test_a_plot_without_matplotlib_is_refused_before_anything_is_measured(bundle, tmp_path):
    """A device install has no matplotlib: --plot says so in one line, and no picture is half written."""
    code = ("import sys; sys.modules['matplotlib'] = None; from runtime.cli import main; "
            f"sys.exit(main(['bench', {str(bundle)!r}, '--plot', {str(tmp_path / 'p.png')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --plot draws with matplotlib, which is not installed here: pip install matplotlib, or drop it "
        "(--json keeps every figure)"]
    assert not (tmp_path / "p.png").exists()


def test_bootstrap_intervals_tell_a_real_difference_from_noise():
    """Seeded samples: 5% slower over 1024 calls is real; two draws of the same distribution are not."""
    from runtime.bench import difference, intervals

    rng = np.random.default_rng(0)
    a, b, c = rng.gamma(20, 0.5, 1024), rng.gamma(20, 0.5 * 1.05, 1024), rng.gamma(20, 0.5, 1024)
    slower, same = difference(a, b), difference(a, c)
    assert slower["real"] and slower["interval"][0] > 1 and 1.02 < slower["ratio_p50"] < 1.08
    assert not same["real"] and same["interval"][0] < 1 < same["interval"][1]
    for q, (low, high) in intervals(a).items():
        assert low <= np.percentile(a, {"p50_ms": 50, "p90_ms": 90, "p99_ms": 99}[q]) <= high


def test_a_comparison_timed_while_other_processes_held_the_cores_is_undecided():
    """The intervals measure the noise within a run, not the bias another job puts on one side of it: a
    difference the interval calls real is undecided when other processes held a quarter core or more."""
    from runtime.bench import BUSY_CORES, Others, difference

    rng = np.random.default_rng(0)
    a, b = rng.gamma(20, 0.5, 1024), rng.gamma(20, 0.5 * 1.2, 1024)
    quiet, busy = difference(a, b, others_cores=0.0), difference(a, b, others_cores=BUSY_CORES)
    assert quiet["real"] and not quiet["busy"] and busy["interval"] == quiet["interval"]
    assert not busy["real"] and busy["busy"] and busy["others_cores"] == BUSY_CORES
    # the kernel's accounting sees another process spinning, and not this one's own work
    others = Others()
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() < t + 1.5: pass"])
    spinner.wait()
    assert others.cores() >= 0.3


def test_a_memory_budget_is_never_exceeded_by_what_is_recommended_or_chosen(bundle, tmp_path):
    """At build time (the measured peaks of the built dsc): a budget below OpenVINO FP32's peak recommends
    another artifact, one below every peak recommends none. On the device, --choose leaves out what does
    not fit, and refuses in one line when nothing does."""
    from export.pipeline import recommend

    opened = Bundle.open(bundle)
    manifest = opened.manifest
    peaks = {k: v["peak_mb"] for k, v in manifest["memory"]["artifacts"].items()}
    budget = peaks["openvino/fp32"] - 0.5
    chosen = recommend(manifest["latency"], opened.artifacts, manifest["memory"], budget)
    assert peaks[f"{chosen['backend']}/{chosen['precision']}"] <= budget
    assert f"within --memory-budget {budget:g} MB (over it: " in chosen["why"] and "openvino fp32" in chosen["why"]
    assert recommend(manifest["latency"], opened.artifacts, manifest["memory"], min(peaks.values()) - 0.5) is None
    refused = run("runtime", "bench", str(bundle), "--choose", "--runs", "3", "--warmup", "1", "--memory-budget", "1")
    assert refused.returncode == 2 and refused.stderr.startswith(
        "error: no artifact of dsc fits --memory-budget 1 MB here: the smallest peak is "), refused.stderr
    roomy = run("runtime", "bench", str(bundle), "--choose", "--runs", "3", "--warmup", "1", "--memory-budget", "1e6",
                "--json")
    assert roomy.returncode == 0 and not json.loads(roomy.stdout)["not_chosen"]


def test_a_build_whose_every_artifact_is_over_the_memory_budget_fails_in_one_line(tmp_path):
    result = run("export", "build", "--variant", "dsc-lite", "--backends", "onnxruntime", "--tune-budget", "0",
                 "--memory-budget", "1", "--out", str(tmp_path))
    assert result.returncode == 1, result.stdout
    assert "failed: no shipped artifact fits --memory-budget 1 MB: the smallest peak is onnxruntime fp32's, " \
        in result.stdout
    assert not (tmp_path / "dsc-lite").exists() and (tmp_path / "dsc-lite.failed").is_dir()
    assert run("export", "build", "--variant", "dsc-lite", "--memory-budget", "5", "--no-memory", "--out",
               str(tmp_path)).stderr.startswith("error: --memory-budget is held against the memory each artifact")


def test_bench_choose_takes_no_artifact_options(bundle):
    result = run("runtime", "bench", str(bundle), "--choose", "--backend", "openvino")
    assert result.returncode == 2 and "error: --choose times every artifact at batch 1" in result.stderr


def test_doctor_names_this_machine_and_what_of_the_bundle_runs(bundle):
    result = run("runtime", "doctor", str(bundle), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["machine"] == machine_info() and report["cpu_signature"] == cpu_signature()
    assert report["versions"]["onnxruntime"] and report["versions"]["openvino"] and report["versions"]["numpy"]
    assert [a["file"] for a in report["artifacts"]] == [a.file for a in Bundle.open(bundle).artifacts]
    assert all(a["status"] == RUNS for a in report["artifacts"] if a["precision"] == "fp32")
    table = run("runtime", "doctor", str(bundle)).stdout
    assert "CPU signature" in table and f"glibc {machine_info()['glibc']}" in table


def test_each_artifacts_memory_is_measured_by_phase_in_a_fresh_process(bundle):
    """The build measured every shipped artifact; `bench` measures again on the spot. Each phase's peak is at
    least what is resident at its end, a backend's import adds to the bare interpreter, and the peak of the
    whole run is the largest phase's."""
    manifest = Bundle.open(bundle).manifest
    measured = manifest["memory"]["artifacts"]
    assert set(measured) == {a["key"] for a in manifest["artifacts"]}
    bench = run("runtime", "bench", str(bundle), "--backend", "onnxruntime", "--precision", "fp32", "--runs", "5",
                "--warmup", "1", "--json")
    assert bench.returncode == 0, bench.stderr
    for found in [*measured.values(), json.loads(bench.stdout)["memory"]]:
        phases = found["phases"]
        assert list(phases) == list(PHASES) and found["peak_resettable"]
        assert all(p["peak_mb"] >= p["rss_mb"] > 0 and 0 < p["pss_mb"] <= p["rss_mb"] for p in phases.values())
        assert phases["import"]["rss_mb"] > phases["python"]["rss_mb"]
        assert found["peak_mb"] == max(p["peak_mb"] for p in phases.values()) >= phases["runs"]["rss_mb"]
    text = run("runtime", "bench", str(bundle), "--backend", "onnxruntime", "--precision", "fp32", "--runs", "5",
               "--warmup", "1").stdout
    assert "memory, in a fresh process (MB, peak resident by phase): python " in text and "PSS after them" in text
    report = (bundle / "report.md").read_text()
    assert "## Memory" in report and "| onnxruntime fp32 | " in report


def test_doctor_says_whether_each_artifact_fits_the_memory_available(bundle):
    """With less memory available than an artifact's peak (a simulated figure), doctor says it cannot run
    and why; with enough, each fits and keeps its status."""
    opened = Bundle.open(bundle)
    peaks = {k.replace("/", " "): v["peak_mb"] for k, v in opened.manifest["memory"]["artifacts"].items()}
    lowest, highest = min(peaks.values()), max(peaks.values())
    tight = doctor(opened, available=lowest - 1)
    assert all(a["status"] == CANNOT and a["fits"] is False and a["why"] == (
        f"its peak resident set is {a['peak_mb']:.0f} MB (measured at build), {lowest - 1:.0f} MB is available here")
        for a in tight["artifacts"])
    roomy, plain = doctor(opened, available=highest + 1), doctor(opened)
    assert all(a["fits"] is True for a in roomy["artifacts"]) and plain["available_mb"] > 0
    assert [a["status"] for a in roomy["artifacts"]] == [a["status"] for a in plain["artifacts"]]
    assert [a["peak_mb"] for a in roomy["artifacts"]] == [peaks[f"{a['backend']} {a['precision']}"]
                                                           for a in roomy["artifacts"]]


@pytest.mark.parametrize("machine, flags, backend, precision, status, why", [
    ("aarch64", ["asimd", "asimddp"], "openvino", "int8", EMULATED, "executes INT8 models in floating point"),
    ("aarch64", ["asimd", "asimddp"], "onnxruntime", "int8", RUNS, "Arm dot product (SDOT)"),
    ("aarch64", ["asimd"], "openvino", "fp16", SLOW, "no FP16 arithmetic here: computed in FP32"),
    ("aarch64", ["asimd", "asimdhp"], "openvino", "fp16", RUNS, "FP16 arithmetic (NEON FP16)"),
    ("x86_64", ["avx2", "fma"], "onnxruntime", "int8", SLOW, "no INT8 dot-product instruction"),
    ("x86_64", ["avx2", "avx512f", "avx512_vnni"], "onnxruntime", "int8", RUNS, "AVX-512 VNNI"),
    ("x86_64", ["avx2", "avx512_bf16"], "openvino", "fp16", RUNS, "computed in BF16"),
    ("x86_64", ["avx2"], "openvino", "fp32", CANNOT, "openvino is not installed"),
])
def test_what_runs_where(machine, flags, backend, precision, status, why):
    installed = {"onnxruntime": "1.32.0", "openvino": None if status == CANNOT else "2026.4.1"}
    found = artifact_status(Artifact("m", backend, precision, 1e-3),
                            {"machine": machine, "flags": flags, "flags_known": True}, installed)
    assert found.status == status and why in found.why, found


@pytest.mark.parametrize("name, floor", [
    ("numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl", (2, 27)),
    ("protobuf-7.36.2-cp310-abi3-manylinux2014_aarch64.whl", (2, 17)),
    ("openvino-2026.4.1-22982-cp311-cp311-manylinux_2_35_aarch64.whl", (2, 35)),
    ("packaging-26.4-py3-none-any.whl", None),
])
def test_a_wheels_glibc_floor_is_read_from_its_platform_tags(name, floor):
    assert wheel_floor(name) == floor


def test_an_aarch64_kit_holds_the_bundle_runtime_wheels_and_their_floors(bundle, tmp_path):
    result = run("export", "pack", str(bundle), "--target", "linux-aarch64", "--python", "3.11",
                 "--out", str(tmp_path / "kits"))
    assert result.returncode == 0, result.stderr
    archive = tmp_path / "kits" / "dsc-linux-aarch64.tar.gz"
    # each backend's wheels on their own: the kit installs ONNX Runtime from glibc 2.28, OpenVINO from 2.35
    assert "for linux-aarch64, Python 3.11, glibc 2.28 or newer, a CPU with ARMv8-A with NEON" in result.stdout
    assert "installs where the device's glibc allows it: onnxruntime glibc 2.28, openvino glibc 2.35." in result.stdout
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        kit = json.load(tar.extractfile("dsc-linux-aarch64/kit.json"))
    wheels = [n.rsplit("/", 1)[1] for n in names if n.endswith(".whl")]
    assert all("aarch64" in w or w.endswith("-none-any.whl") or "abi3" in w for w in wheels), wheels
    assert {w.split("-")[0] for w in wheels} >= {"numpy", "onnxruntime", "openvino", "pillow", "pip"}
    assert kit["backends"]["openvino"]["glibc"] == "2.35" == max(kit["wheels"].values()).removeprefix("glibc ")
    assert kit["glibc"] == kit["backends"]["onnxruntime"]["glibc"] == "2.28" and kit["left_out"] == {}
    manifest = Bundle.open(bundle).manifest
    assert kit["requirements"] == [f"numpy=={manifest['versions']['numpy']}",
                                   f"onnxruntime=={manifest['versions']['onnxruntime']}",
                                   f"openvino=={manifest['versions']['openvino']}", kit["requirements"][3]]
    assert manifest["targets"]["linux-aarch64"]["wheels"] == kit["wheels"]
    for needed in ("install.sh", "SHA256SUMS", "lib/runtime/kit.py", "dsc/manifest.json", "dsc/model.onnx"):
        assert f"dsc-linux-aarch64/{needed}" in names
    assert run("runtime", "verify", str(bundle)).returncode == 0  # the manifest's new entry keeps it whole


def test_a_kit_for_a_glibc_no_backend_of_the_bundle_has_wheels_for_is_refused_naming_each(bundle, tmp_path):
    result = run("export", "pack", str(bundle), "--target", "linux-aarch64", "--python", "3.11", "--glibc", "2.27",
                 "--out", str(tmp_path / "kits"))
    assert result.returncode == 2 and not (tmp_path / "kits" / "dsc-linux-aarch64.tar.gz").exists()
    assert result.stderr.strip() == (
        "error: no backend of the bundle has wheels for linux-aarch64, Python 3.11, glibc 2.27 or older (no wheel of "
        "onnxruntime==1.32.0 for linux-aarch64, Python 3.11, glibc 2.27 or older on the package index; no wheel of "
        "openvino==2026.4.1 for linux-aarch64, Python 3.11, glibc 2.27 or older on the package index); pack with "
        "another --python or a newer --glibc if the device has it")


@pytest.mark.parametrize("args, message", [
    (["--target", "android"], "error: unknown --target 'android'; valid: linux-aarch64, linux-x86_64"),
    (["--target", "linux-aarch64", "--glibc", "2.5"], "error: --glibc '2.5' is not a glibc version of 2.17 or newer"),
    (["--target", "linux-aarch64", "--python", "3"], "error: --python '3' is not a Python 3 version such as 3.11"),
    (["--python", "3.11"], "error: --python and --glibc choose the wheels of an install kit; add --target"),
])
def test_bad_pack_options_are_refused_in_one_line(bundle, args, message):
    result = run("export", "pack", str(bundle), *args)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert not list(bundle.parent.glob("*.tar.gz"))


@pytest.fixture
def newer_ir(bundle):
    """The bundle with its OpenVINO FP32 IR using an operator version this OpenVINO does not know
    (as an IR from a newer OpenVINO has), its hash updated: the files match, the backend refuses."""
    xml = bundle / "openvino" / "model.xml"
    text = xml.read_text()
    assert 'type="SoftMax" version="opset8"' in text
    xml.write_text(text.replace('type="SoftMax" version="opset8"', 'type="SoftMax" version="opset99"'))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["openvino/model.xml"] = sha256(xml)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def test_an_artifact_the_backend_cannot_run_is_a_fail_row_with_its_reason(newer_ir):
    reason = ("openvino cannot load openvino/model.xml (fp32) here: RuntimeError: Cannot create SoftMax layer "
              "node_softmax id:")
    verified = run("runtime", "verify", str(newer_ir))
    assert verified.returncode == 1 and "Traceback" not in verified.stderr, verified.stderr
    assert f"FAIL  openvino/model.xml (openvino fp32): {reason}" in verified.stdout
    assert "unsupported opset: opset99" in verified.stdout and "verify: FAILED" in verified.stdout
    result = json.loads(run("runtime", "verify", str(newer_ir), "--json").stdout)
    status = {(a["backend"], a["precision"]): a for a in result["artifacts"]}
    assert status["openvino", "fp32"]["status"] == "FAIL" and status["openvino", "fp32"]["why"].startswith(reason)
    assert status["onnxruntime", "fp32"]["status"] == "pass" and not result["passed"]
    # the device's choice is made among the others, and says why this one was left out
    chosen = run("runtime", "bench", str(newer_ir), "--choose", "--runs", "3", "--warmup", "1", "--json")
    assert chosen.returncode == 0, chosen.stderr
    figures = json.loads(chosen.stdout)
    assert "openvino fp32" not in figures["artifacts"] and figures["not_chosen"]["openvino fp32"].startswith(reason)
    # and asking for it by name is one line, exit 1
    refused = run("runtime", "bench", str(newer_ir), "--backend", "openvino", "--precision", "fp32", "--runs", "3")
    assert refused.returncode == 1 and refused.stderr.startswith(f"error: {reason}") and "Traceback" not in refused.stderr
