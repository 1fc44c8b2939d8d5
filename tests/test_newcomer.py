"""What a newcomer trips on: typos, late errors, slow listings, unreadable pictures."""

from __future__ import annotations

import os
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import models
from runtime.bench import bench_interleaved
from runtime.images import PALETTE, _font, _label_box, draw_keypoints, overlay_mask, upsampled_mask

from .test_cli import REPO, run


def run_in_process(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("cli, args, message", [
    ("export", ["build", "--variant", "dsc", "--backend", "openvino"],
     "error: unknown option --backend; did you mean --backends?"),
    ("export", ["build", "--varient", "dsc"], "error: unknown option --varient; did you mean --variant?"),
    ("export", ["biuld", "--variant", "dsc"], "error: unknown command 'biuld'; did you mean 'build'?"),
    ("runtime", ["bench", "artifacts/dsc", "--run", "3"], "error: unknown option --run; did you mean --runs?"),
    ("models", ["train", "--variant", "dsc", "--step", "3", "--out", "x.pt"],
     "error: unknown option --step; did you mean --steps?"),
])
def test_abbreviations_and_unknown_options_are_refused_by_name(tmp_path, cli, args, message):
    result = subprocess.run([sys.executable, "-m", cli, *args], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


@pytest.mark.parametrize("args, message", [
    (["--variant", "dcs"], "error: unknown variant 'dcs'; did you mean 'dsc'? valid: baseline, dsc,"),
    (["--variant", "dsc", "--backends", "openvin"], "error: unknown backend 'openvin'; did you mean 'openvino'?"),
    (["--variant", "dsc", "--conv", "dcs"], "error: unknown conv kind 'dcs'; did you mean 'dsc'?"),
    (["--variant", "dsc", "--calib-dir", "x"], "error: --calib-dir is only used with --quantize int8"),
])
def test_a_bad_name_is_refused_before_torch_is_imported(tmp_path, args, message):
    out = tmp_path / "new" / "bundles"
    code = ("import sys; from export.cli import main; "
            f"rc = main({['build', *args, '--out', str(out)]!r}); "
            "print(rc, 'torch' in sys.modules, 'onnx' in sys.modules)")
    result = run_in_process(code)
    assert result.stdout.strip() == "2 False False", result.stdout + result.stderr
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()  # the --out folder was not created


def test_a_refused_checkpoint_leaves_no_out_folder(tmp_path):
    result = run("export", "build", "--variant", "dsc", "--checkpoint", str(tmp_path / "none.pt"),
                 "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_suite_on_a_disk_without_room_for_it_stops_at_once_in_one_line(tmp_path):
    """The README's test command with TMPDIR on a 64 MB file system: one line naming the folder, what the
    suite writes there and what is free, exit code 4 (pytest's usage error), and no folder of its own left."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], capture_output=True,
                             text=True)
    assert mounted.returncode == 0, mounted.stderr
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_EXPORT_CACHE", "PYTEST_"))}
        result = subprocess.run([sys.executable, "-m", "pytest"], cwd=REPO, capture_output=True, text=True,
                                env={**env, "TMPDIR": str(small)}, timeout=600)
        left = [p.name for p in small.iterdir() if p.name.startswith("edge-export")]  # a library leaves a .ses
    finally:
        subprocess.run(["umount", str(small)])
    assert result.returncode == 4, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert re.fullmatch(rf"ERROR: the suite writes up to \d+ GB to the disk of {small} \(temporary files(, the ARM64 "
                        rf"root file system)?\) and 0\.\d GB are free there; free some space or point TMPDIR "
                        rf"elsewhere", line), line
    assert left == []


def test_list_builds_no_model_and_imports_no_torch():
    result = run_in_process("import sys; from export.cli import main; rc = main(['list']); "
                            "print(rc, 'torch' in sys.modules, file=sys.stderr)")
    assert result.stderr.strip() == "0 False", result.stderr
    assert "14,215,368" in result.stdout and "1,277.9 M" in result.stdout


def test_no_ansi_codes_into_a_pipe_even_when_colour_is_forced(tmp_path):
    env = {"FORCE_COLOR": "1", "TERM": "xterm-256color"}
    listing = run_in_process("from export.cli import main; main(['list'])", env)
    refused = run_in_process("from export.cli import main; main(['build', '--variant', 'dcs'])", env)
    for text in (listing.stdout, listing.stderr, refused.stdout, refused.stderr):
        assert "\x1b[" not in text
    assert "variants" in listing.stdout and "unknown variant" in refused.stderr


def test_every_contender_gets_the_same_number_of_runs_within_the_budget():
    class Sleeper:
        def __init__(self, ms):
            self.ms = ms

        def infer(self, feeds):
            import time
            time.sleep(self.ms / 1e3)

    runners = {"slow": Sleeper(20), "fast": Sleeper(1)}
    feeds = {"x": np.zeros((1, 1), np.float32)}
    stats = bench_interleaved(runners, feeds, warmup=0, runs=100, rounds=10, max_seconds=0.6, settle=0)
    # 100 runs of both would take 2.1 s: the budget cuts both to the same, smaller count (at least 10)
    assert stats["slow"]["runs"] == stats["fast"]["runs"]
    assert 10 <= stats["slow"]["runs"] < 100
    full = bench_interleaved(runners, feeds, warmup=0, runs=12, rounds=3, settle=0)
    assert full["slow"]["runs"] == full["fast"]["runs"] == 12


@pytest.mark.parametrize("variant", models.list_variants())
def test_untrained_outputs_have_a_real_range(variant):
    """Random weights must give outputs well above rounding noise, or parity
    would compare noise (SegNet-DSC's logits were ~1e-20 before its depthwise
    convs got their proper He initialisation). An output's typical scale is 1,
    or 1/(h*w) for a probability map (a heatmap sums to 1 over its positions)."""
    from export.contract import Exportable
    from export.golden import golden_inputs, reference_outputs

    spec = models.spec(variant)
    outputs = reference_outputs(Exportable(models.create(variant), spec), golden_inputs(spec, 1, seed=0))
    for name, value in outputs.items():
        per_map = value.shape[-1] * value.shape[-2]
        probability_map = value.ndim == 4 and np.allclose(value.sum(axis=(-1, -2)), 1, atol=1e-4)
        typical = 1 / per_map if probability_map else 1.0
        assert np.abs(value).max() >= 1e-3 * typical, (name, float(np.abs(value).max()))


def test_a_checkpoint_of_another_variant_names_the_variant_it_fits(tmp_path):
    torch.save(models.create("baseline").state_dict(), tmp_path / "baseline.pt")
    result = run("export", "build", "--variant", "dsc", "--checkpoint", str(tmp_path / "baseline.pt"),
                 "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "does not fit this variant: missing keys:" in result.stderr
    assert result.stderr.strip().endswith("it fits the variant baseline (--variant baseline)"), result.stderr
    torch.save({"w": torch.zeros(3)}, tmp_path / "odd.pt")
    odd = run("export", "build", "--variant", "dsc", "--checkpoint", str(tmp_path / "odd.pt"))
    assert odd.stderr.strip().endswith("it fits no registered variant"), odd.stderr


def test_a_build_that_replaces_a_bundle_says_what_changed(built, tmp_path):
    shutil.copytree(built("dsc").bundle, tmp_path / "dsc")
    result = run("export", "build", "--variant", "dsc", "--out", str(tmp_path), "--backends", "openvino")
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("replaced the earlier bundle"))
    # what each build ships depends on the CPU (FP16 computed in BF16 can miss its bound); read them
    before, after = (", ".join(f"{a['backend']}/{a['precision']}" for a in json.loads(m.read_text())["artifacts"])
                     for m in (built("dsc").bundle / "manifest.json", tmp_path / "dsc" / "manifest.json"))
    assert "onnxruntime" in before and "onnxruntime" not in after
    assert (f"artifacts: {before} -> {after}" in line and "checkpoint: " in line
            and "-> none (random weights)" in line), line


def test_keypoint_labels_are_names_and_never_overlap():
    image = Image.new("RGB", (256, 256), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    font = _font(image)
    assert font.size >= 12
    taken: list = []
    for name in ("head", "neck", "pelvis", "l_hand"):  # four points at the same spot
        _label_box(draw, 128, 128, 4, name, font, image.size, taken)
    assert all(not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
               for i, a in enumerate(taken) for b in taken[i + 1:])
    value = np.array([[-0.5, -0.5], [0.5, 0.5]])
    named = np.asarray(draw_keypoints(image, value, ["head", "neck"]))
    numbered = np.asarray(draw_keypoints(image, value))
    assert (named != numbered).any()  # the names are written, not the indices


def test_a_mask_is_drawn_smoothly_at_the_image_size_with_a_legend():
    logits = np.zeros((3, 4, 4), np.float32)
    logits[0, :, :2] = 5.0  # left half pet, right half background
    logits[1, :, 2:] = 5.0
    mask = upsampled_mask(logits, (400, 300))
    assert mask.shape == (300, 400) and set(np.unique(mask)) == {0, 1}
    border = np.argmax(mask[150] == 1)
    assert 180 <= border <= 220  # the class border lies between the model's pixels, not on a 100-pixel block edge
    picture = np.asarray(overlay_mask(Image.new("RGB", (400, 300), (255, 255, 255)), mask, ["pet", "background", "border"]))
    legend = picture[:60, :150].reshape(-1, 3)
    assert (legend == 0).all(axis=1).any()  # the legend's dark box
    for c in (0, 1):  # a swatch of each class present, in its own colour
        assert (legend == PALETTE[c]).all(axis=1).any()
    assert not (legend == PALETTE[2]).all(axis=1).any()  # border is absent: not in the legend


BUILT_FILES = {"report.md"}  # written into a bundle or a study by the commands the README shows
# the user's own files in the README's examples of `--model` (the first one is written out in full there)
USERS_FILES = {"my_unet.py", "FILE.py", "nope.py", "net.py"}


def test_readme_names_only_files_that_exist():
    text = (REPO / "README.md").read_text()
    named = set(re.findall(r"(?<![\w./-])([\w./-]+\.(?:md|py|toml|txt))\b", text)) - BUILT_FILES - USERS_FILES
    missing = [n for n in named if not (REPO / n).exists() and not list(REPO.glob(f"**/{n}"))]
    assert not missing, missing
    assert "Save\nthis as `my_unet.py`:" in text  # the example a newcomer pastes is complete


def test_the_repository_root_holds_only_what_the_layout_names():
    """A stray file (a profiler's dump, a checkpoint) at the root fails here, not in a reader's eyes."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    top = {path.split("/")[0] for path in tracked.splitlines()}
    layout = (REPO / "README.md").read_text().split("## Layout", 1)[1]
    named = {n for n in top if f"`{n}/`" in layout or f"`{n}`" in layout or f"[{n}]" in layout}
    product = {"pyproject.toml", "README.md", "artifacts", ".ci", ".gitignore"}
    assert top - product - named == set(), "files at the root that README's layout does not name"
