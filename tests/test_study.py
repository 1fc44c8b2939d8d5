"""`python -m export study`: the articles' tables, measured here, with plots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch import nn

from export.lab.harness import flops, transposed_overcount
from export.report import threads
from models import layers
from runtime.machine import usable_cores


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def study(tmp_path_factory, built):
    """One quick study (about 4 minutes here) with the built dsc bundle, shared by the tests below."""
    out = tmp_path_factory.mktemp("study") / "study"
    result = run_cli("study", "--quick", "--out", str(out),
                     "--artifacts", str(built("dsc").bundle.parent))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_report_has_seven_tables_and_four_plots(study):
    report = (study / "report.md").read_text()
    for heading in ("## 1a. Convolution", "## 1b. Convolution", "## 2a. Normalisation", "## 3. Upsampling",
                    "## 4. Lightweight encoder-decoders", "## 5. Pet segmentation", "## 6. Where the time goes",
                    "## 7. Against torch.compile and ExecuTorch"):
        assert heading in report
    plots = sorted(p.name for p in study.glob("*.png"))
    assert plots == ["breakdown.png", "latency_vs_params.png", "micro_benchmarks.png", "roofline.png"]
    for name in plots:
        assert f"]({name})" in report
        with Image.open(study / name) as image:
            assert image.width > 400 and image.height > 300
    assert "avx2" in report and f"- {threads(usable_cores())} on every backend" in report  # the default


def test_counts_match_the_reference_beside_the_article(study):
    sections = {s["key"]: s for s in json.loads((study / "study.json").read_text())["sections"]}
    hourglass = {row[0]: row for row in sections["hourglass"]["rows"]}
    assert hourglass["baseline"][1:3] == ["14,129,568", "989.31 M"]
    assert hourglass["dsc"][1:3] == ["1,616,958", "121.95 M"]
    assert hourglass["dsc"][3].startswith("1.62 M / 120.30 M")
    assert "121.95 M by torchinfo's count against the article's 120.30 M" in " ".join(sections["hourglass"]["notes"])
    assert sections["norms"]["data"]["params"] == {"batch": 2048, "layer": 8192, "instance": 2048, "group": 2048}
    upsample = sections["upsample"]["rows"]
    assert [row[1:3] for row in upsample] == [["4,719,104", "75.51 M"]] * 2
    assert "18.88 M" in sections["upsample"]["notes"][0]  # the transposed conv's real work, per input pixel (+ bias)
    pet = {row[0]: row for row in sections["pet"]["rows"]}
    assert pet["segnet"][1] == "15,274,892" and pet["segnet-dsc"][1] == "1,749,671"
    assert sections["kp-encdec"]["data"]["params"]["kp-edanet"] > 0


def test_every_cell_timed_and_the_breakdown_under_the_roofline(study):
    data = json.loads((study / "study.json").read_text())
    sections = {s["key"]: s for s in data["sections"]}
    for key in ("hourglass", "detector", "upsample", "kp-encdec", "pet", "breakdown"):
        stats = sections[key]["data"]["stats"]
        assert stats and all(s["p50_ms"] > 0 and s["runs"] >= 3 for s in stats.values()), key
        assert {k.split(" | ")[1] for k in stats} >= {"pytorch", "onnxruntime", "openvino"}
    assert data["peak"]["gflops"] > 1
    breakdown = sections["breakdown"]
    assert [row[0] for row in breakdown["rows"]] == ["resize (stride-4 blur)", "hourglass",
                                                     "heads (7x7 keypoint + Jacobian)", "keypoint extraction",
                                                     "whole detector"]
    # the whole detector's FLOPs are its parts' (the extraction's softmax is not counted)
    work = breakdown["data"]["flops"]
    assert work["whole detector"] == sum(v for k, v in work.items() if k != "whole detector")
    # each part under the roofline, counted on the graph its backends run: the whole detector's graph
    # does less than PyTorch counts (the rewritten Jacobian head), and its bound is at least its work at the peak
    placed = breakdown["data"]["roofline"]
    assert set(placed) == set(work)
    whole = placed["whole detector"]
    assert whole["gflop"] * 1e9 < work["whole detector"]
    assert whole["bound_ms"] >= whole["gflop"] / breakdown["data"]["roofs"]["gflops"] * 1e3
    assert all(p["bound"] in ("compute", "memory") and 0 < p["share"] for p in placed.values())


def test_each_table_has_a_column_per_backend_asked_for_litert_too(tmp_path):
    """`study --backends onnxruntime,litert`: every part converted for both (LiteRT from PyTorch), and
    each timed beside PyTorch eager in one interleaved run."""
    from export.lab.harness import Study, StudySettings, of

    study = Study(StudySettings(threads=1, backends=("onnxruntime", "litert")), tmp_path, lambda _: None)
    assert study.backends == ("pytorch", "onnxruntime", "litert")
    runners = study.runners("separable", of(layers.conv("dsc", 8, 16)), (8, 20, 20))
    assert set(runners) == {("separable", b) for b in study.backends}
    feeds = study.feeds((8, 20, 20))
    outs = {b: next(iter(runners["separable", b].infer(feeds).values())) for b in study.backends}
    assert all(outs[b].shape == outs["pytorch"].shape and abs(outs[b] - outs["pytorch"]).max() < 1e-4 for b in outs)
    stats = study.time(runners, {"separable": feeds}, runs=5)
    assert {b for _, b in stats} == set(study.backends) and all(s["p50_ms"] > 0 for s in stats.values())


def test_counting_helpers():
    up = nn.Sequential(*layers.upsample("transpose", 1024, 512))
    assert transposed_overcount(up, (1024, 2, 2)) == 1024 * 512 * 9 * (16 - 4)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    assert flops(conv, (8, 10, 10)) == 2 * 8 * 16 * 9 * 100
    assert transposed_overcount(conv, (8, 10, 10)) == 0
    with torch.no_grad():
        assert flops(nn.Linear(4, 4), (4,)) == 2 * 16


@pytest.mark.parametrize("args, message", [
    (("--threads", "0"), "--threads 0 is not a positive number of threads"),
    (("--train-steps", "-1"), "--train-steps -1 must be 0 (no training) or more"),
    (("--out", "/dev/null"), "--out '/dev/null' is a file; expected a folder for the study (replaced if it exists)"),
    (("--backends", "onnxruntime,tflite"), "unknown backend 'tflite'; did you mean 'litert'? valid: onnxruntime, "
                                           "openvino, litert"),
])
def test_bad_settings_are_one_line(tmp_path, args, message):
    result = run_cli("study", "--quick", "--out", str(tmp_path / "s"), *args)  # the last --out wins
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {message}" and not result.stdout
    assert not (tmp_path / "s").exists()


def test_the_built_bundle_is_held_against_the_peers(study):
    sections = {s["key"]: s for s in json.loads((study / "study.json").read_text())["sections"]}
    (row,) = sections["peers"]["rows"]
    (dsc,) = sections["peers"]["data"]["variants"]
    assert row[0] == "dsc" and row[1] == dsc["best_artifact"] and row[1].split()[0] in ("onnxruntime", "openvino")
    assert row[4] == f"{dsc['speedup']['torch.compile']:.2f}x"
    assert "Every bundle under" in sections["peers"]["notes"][0]
