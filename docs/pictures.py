"""The docs' pictures, drawn by the project's own commands at every docs build: small, seeded, CPU-quick.

- a dsc detector trained briefly on the generated keypoint task, built (its `latency_memory.png`),
  `runtime infer` on a held-out image (keypoints with their names), and a 6-second sustained
  `runtime bench --plot`;
- a U-Net-DSC pet segmenter, built with random weights, and `runtime infer` on a pet image: a mask with its
  legend (and the random-weights note infer writes on it);
- the INT8 frontier of that dsc (a short search on ONNX Runtime, on any CPU);
- the study's three plots, drawn by the study's own code from the measured run kept in
  docs/results/study.json.

The pictures are kept under ~/.cache/edge-export/docs/<digest of the code they run> (or
$EDGE_EXPORT_DOCS_WORK), so a second build of the docs on the same code draws nothing again; a build after a
code change, or on a fresh machine, makes them anew (about three minutes on 2 cores) and drops those of the
code before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDER = "generated"  # under docs/, ignored by git
PICTURES = ("keypoints.png", "mask.png", "latency_memory.png", "sustained.png", "int8_frontier.png",
            "latency_vs_params.png", "micro_benchmarks.png", "breakdown.png")
STEPS = 80  # training steps of the pictured detector (the test suite's short run)


def digest() -> str:
    """Of every source file the pictures depend on: the packages, this file and the recorded study."""
    h = hashlib.sha256()
    for path in sorted([*ROOT.glob("export/**/*.py"), *ROOT.glob("runtime/**/*.py"), *ROOT.glob("models/**/*.py"),
                        Path(__file__), ROOT / "docs/results/study.json"]):
        h.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return h.hexdigest()[:16]


def _run(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"docs pictures: `python -m {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")


def _draw(work: Path) -> None:
    import numpy as np
    from PIL import Image

    from export.lab.report import plots_from_json
    from models.tasks import keypoint_sample, pet_sample

    def save(array: np.ndarray, path: Path, size: int) -> Path:  # at a photo's size, larger than the model's
        picture = Image.fromarray((np.transpose(array, (1, 2, 0)) * 255).round().astype(np.uint8))
        picture.resize((size, size), Image.Resampling.BICUBIC).save(path)
        return path

    person = save(keypoint_sample(3, "heldout")[0], work / "person.png", 384)
    pet = save(pet_sample(5, "heldout")[0], work / "pet.png", 384)
    _run("models", "train", "--variant", "dsc", "--steps", str(STEPS), "--out", str(work / "dsc.pt"))
    _run("export", "build", "--variant", "dsc", "--checkpoint", str(work / "dsc.pt"), "--out", str(work),
         "--quantize", "int8", "--int8-anyway", "--backends", "onnxruntime", "--int8-budget", "20",
         "--tune-budget", "0")
    _run("export", "build", "--variant", "unet-dsc", "--out", str(work), "--backends", "onnxruntime",
         "--tune-budget", "0", "--no-memory")
    _run("runtime", "infer", str(work / "dsc"), str(person), "--out", str(work / "predictions"))
    _run("runtime", "infer", str(work / "unet-dsc"), str(pet), "--out", str(work / "predictions"))
    _run("runtime", "bench", str(work / "dsc"), "--backend", "onnxruntime", "--precision", "fp32", "--runs", "50",
         "--sustained", "6", "--window", "1", "--plot", str(work / "sustained.png"))
    shutil.copy(work / "predictions" / "pet.png", work / "mask.png")
    shutil.copy(work / "predictions" / "person.png", work / "keypoints.png")
    for name in ("latency_memory.png", "int8_frontier.png"):
        shutil.copy(work / "dsc" / name, work / name)
    plots_from_json(ROOT / "docs/results/study.json", work)


def make(into: Path) -> None:
    """The pictures in `into`, drawn now or copied from the cache of the same code."""
    work = Path(os.environ.get("EDGE_EXPORT_DOCS_WORK") or Path.home() / ".cache/edge-export/docs") / digest()
    if not all((work / name).is_file() for name in PICTURES):
        for older in work.parent.glob("*"):  # the pictures of other code
            shutil.rmtree(older, ignore_errors=True)
        work.mkdir(parents=True)
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        _draw(work)
        for made in work.iterdir():  # the pictures alone are kept: the bundles and checkpoints they came from go
            if made.name not in PICTURES:
                shutil.rmtree(made) if made.is_dir() else made.unlink()
    into.mkdir(parents=True, exist_ok=True)
    for name in PICTURES:
        shutil.copy(work / name, into / name)
