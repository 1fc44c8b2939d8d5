"""What a build is asked for, and every check of it: no torch, no exporter.

The CLI checks a command line here before it imports the heavy stack, so a
typo is refused in a fraction of a second and nothing is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import models
from runtime.bundle import BACKENDS
from runtime.errors import UserError, check_choice, check_folder

from .quantize import CALIB_METHODS, check_calib_dir  # the stage imports no onnx or torch until it runs

# The dynamo exporter emits opset 18 and up; both backends here run up to 21
# (OpenVINO's ONNX frontend is the narrower of the two).
OPSETS = range(18, 22)
DEFAULT_OPSET = 20


def check_opset(opset: int) -> int:
    if opset not in OPSETS:
        raise UserError(f"opset {opset} is not supported; valid: {OPSETS.start}..{OPSETS.stop - 1} "
                        "(the dynamo exporter starts at 18, OpenVINO's ONNX frontend stops at 21)")
    return opset


def check_threads(threads: int) -> int:
    if threads < 1:
        raise UserError(f"--threads {threads} is not a positive number of threads")
    return threads


@dataclass(frozen=True)
class BuildSettings:
    variant: str
    checkpoint: Path | None = None
    out: Path = Path("artifacts")
    opset: int = DEFAULT_OPSET
    backends: tuple[str, ...] = BACKENDS
    threads: int = os.cpu_count() or 1
    overrides: dict[str, str] = field(default_factory=dict)
    quantize: str | None = None  # "int8"
    calib_dir: Path | None = None
    calib_samples: int = 32
    calib_method: str = "minmax"
    seed: int = 0
    golden_batch: int = 2
    warmup: int = 10
    runs: int = 100


def check_settings(s: BuildSettings) -> None:
    """Every user input, checked before any work starts (and before torch is imported)."""
    models.resolve(s.variant, **s.overrides)
    if not s.backends:
        raise UserError(f"--backends is empty; valid: {', '.join(BACKENDS)}")
    for backend in s.backends:
        check_choice("backend", backend, BACKENDS)
    check_opset(s.opset)
    check_threads(s.threads)
    if s.quantize is not None:
        check_choice("--quantize precision", s.quantize, ("int8",))
        check_choice("--calib-method", s.calib_method, (*CALIB_METHODS, "all"))
        if s.calib_samples < 1:
            raise UserError(f"--calib-samples {s.calib_samples} must be at least 1")
        if s.calib_dir is not None:
            check_calib_dir(s.calib_dir)
    elif s.calib_dir is not None:
        raise UserError("--calib-dir is only used with --quantize int8")
    check_folder(s.out, "--out", "expected a folder (created if missing) for the bundles")
