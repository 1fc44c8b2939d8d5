"""What a build is asked for, and every check of it: no torch, no exporter.

The CLI checks a command line here before it imports the heavy stack, so a
typo is refused in a fraction of a second and nothing is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import models
from runtime.backends import BACKENDS, DEFAULT_BACKENDS
from runtime.errors import UserError, check_at_least, check_choice, check_folder, check_positive
from runtime.machine import int8_instructions, machine_info, usable_cores
from runtime.spec import Preprocess
from runtime.tasks import TASKS

from .calibration import CALIB_METHODS, check_calib_dir  # the stage imports no onnx or torch until it runs

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
    return check_positive("--threads", threads, "number of threads")


@dataclass(frozen=True)
class UserModel:
    """A user's own model, as the command line describes it: where its code is
    (`file.py:attr` or `package.module:attr`) and the arguments to make it, its
    inputs (name and example shape, in forward's order) and which of their axes
    are dynamic, its output names (default: a dict's keys, else output0...), its
    task settings, image preprocessing and the multiple its dynamic sides need."""

    ref: str
    args: Mapping[str, Any] = field(default_factory=dict)
    inputs: tuple[tuple[str, tuple[int, ...]], ...] = ()
    dynamic: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    task: Mapping[str, Any] = field(default_factory=lambda: {"kind": "none"})
    preprocess: Preprocess = Preprocess(None)
    multiple: int = 1


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UserError(f"--name {name!r} cannot name a bundle folder; use letters, digits, '.', '_' and '-'")
    return name


@dataclass(frozen=True)
class BuildSettings:
    """What a build is asked for: a zoo `variant` (with `overrides`) or a user's
    `model`; `name` names the bundle folder (default: the variant, or the model's class)."""

    variant: str | None = None
    model: UserModel | None = None
    name: str | None = None
    checkpoint: Path | None = None
    out: Path = Path("artifacts")
    opset: int = DEFAULT_OPSET
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    threads: int = field(default_factory=usable_cores)  # the CPUs this process may use
    overrides: dict[str, str] = field(default_factory=dict)
    quantize: str | None = None  # "int8"
    calib_dir: Path | None = None
    calib_samples: int = 32
    calib_method: str = "minmax"
    keep_fp32: tuple[str, ...] = ()  # module paths INT8 leaves in float (added to the model contract's)
    int8_budget: float = 120.0  # seconds per backend for the INT8 search beyond the full plan
    int8_anyway: bool = False  # quantize on a CPU without INT8 dot-product instructions too
    qat: int = 0  # steps of quantization-aware fine-tuning when post-training quantization loses (0: none)
    rewrites: bool = True  # the graph rewrites of `export.rewrite` (False: the simplified graph as it is)
    tune_budget: float = 2.0  # seconds of timed calls per artifact to choose its backend settings, and per
    # backend to choose the Winograd rewrite (0: defaults, no Winograd)
    memory: bool = True  # each shipped artifact's peak memory by phase, in a fresh process (runtime.memory)
    memory_budget: float | None = None  # MB: the recommended artifact's peak must fit (None: no budget)
    # labelled images (`runtime.labelled`): `eval_samples` of them ride in the bundle, and FP16/INT8 ship only
    # within `max_drop` (task metric -> largest drop from PyTorch FP32 on them; empty: the task's default)
    data: Path | None = None
    eval_samples: int = 32
    max_drop: Mapping[str, float] = field(default_factory=dict)
    ignore_index: int = 255
    label_map: Path | None = None
    sign: Path | None = None  # the private key that signs the finished bundle's manifest (`export.signing`)
    seed: int = 0
    golden_batch: int = 2
    warmup: int = 10
    runs: int = 100


def check_user_model(m: UserModel) -> None:
    from models.user import is_file_ref, parse_ref

    where, _ = parse_ref(m.ref)
    if is_file_ref(where) and not Path(where).expanduser().is_file():
        raise UserError(f"--model file {where!r} does not exist; expected a Python file (FILE.py:NAME) "
                        "or an importable module (package.module:NAME)")
    if not m.inputs:
        raise UserError("--model needs its inputs: one --input NAME:SHAPE per forward parameter, "
                        "e.g. --input image:1x3x256x256")
    names = [n for n, _ in m.inputs]
    for name, axes in m.dynamic.items():
        if name not in names:
            raise UserError(f"--dynamic names input {name!r}; the inputs are {', '.join(names)}")
        shape = dict(m.inputs)[name]
        if any(a >= len(shape) for a in axes):
            raise UserError(f"--dynamic {name}:{','.join(map(str, axes))}: {name} has {len(shape)} axes "
                            f"{'x'.join(map(str, shape))} (0 to {len(shape) - 1})")
    check_choice("--task", m.task.get("kind", "none"), tuple(TASKS))
    check_at_least("--multiple", m.multiple)
    for name, shape in m.inputs:  # found here, not as the model's own error on the odd size
        off = [d for d in shape[2:] if d % m.multiple] if len(shape) == 4 else []
        if off:
            lower = off[0] // m.multiple * m.multiple
            raise UserError(f"--input {name}:{'x'.join(map(str, shape))}: {off[0]} is not a multiple of --multiple "
                            f"{m.multiple}; use {f'{lower} or ' if lower else ''}{lower + m.multiple}")


def check_settings(s: BuildSettings) -> None:
    """Every user input, checked before any work starts (and before torch is imported)."""
    if (s.variant is None) == (s.model is None):
        raise UserError("name one model: --variant NAME (from `python -m export list`) or --model FILE.py:NAME")
    if s.variant is not None:
        models.resolve(s.variant, **s.overrides)
        spec = models.spec(s.variant, **s.overrides)
        task = TASKS[spec.task.get("kind", "none")]
    else:
        check_user_model(s.model)
        spec, task = None, TASKS[s.model.task.get("kind", "none")]  # a user's spec is known once it is exported
    check_options(s)
    check_data(s, task, spec)
    if s.sign is not None:  # a key that cannot sign is refused now, not after the build
        from .signing import load_private_key

        load_private_key(s.sign)


def max_drop(s: BuildSettings, task) -> dict[str, float]:
    """The drops the labelled data allows (`--max-drop`, else the task's first metric at its default)."""
    return dict(s.max_drop) or {next(iter(task.truth_metrics)): task.default_max_drop}


def check_data(s: BuildSettings, task, spec=None) -> None:
    """--data and what goes with it: a task whose labels a build can judge on, a folder it can read (read
    through where the model's `spec` is known before it is made: a zoo variant), the metrics it has."""
    if s.data is None:
        given = [flag for flag, on in (("--max-drop", s.max_drop), ("--label-map", s.label_map),
                                       ("--eval-samples", s.eval_samples != 32)) if on]
        if given:
            raise UserError(f"{given[0]} is only used with --data DIR (labelled images)")
        return
    from runtime.labelled import READERS, reader_for, read_label_map

    if not hasattr(READERS[task.labels], "at_input"):
        raise UserError(f"build --data judges segmenters and keypoint detectors on their labels; a {task.kind!r} "
                        "model's expected outputs (.npz) are scored by `export evaluate --data`")
    label_map = read_label_map(s.label_map) if s.label_map is not None else None
    if spec is None:
        if not Path(s.data).is_dir():
            raise UserError(f"--data {str(s.data)!r} is not a folder; pass a folder of labelled images")
    else:
        reader_for(spec, s.data, s.ignore_index, label_map)
    check_at_least("--eval-samples", s.eval_samples)
    for name, drop in s.max_drop.items():
        check_choice(f"--max-drop metric of the {task.kind} task", name, tuple(task.truth_metrics))
        if not 0 <= drop < 1:
            raise UserError(f"--max-drop {name}={drop:g}: a drop is a fraction from 0 to 1 (0.01 is one point)")


def check_backends(backends: tuple[str, ...]) -> tuple[str, ...]:
    """`--backends`: known, and what each needs on the build side installed."""
    if not backends:
        raise UserError(f"--backends is empty; valid: {', '.join(BACKENDS)}")
    for backend in backends:
        check_choice("backend", backend, BACKENDS)
    from .backends import REGISTRY  # the plugins import no backend library until they convert

    for backend in backends:
        missing = REGISTRY[backend].missing()
        if missing:
            raise UserError(f"--backends {backend} needs {', '.join(missing)}, not installed here: "
                            f"pip install 'edge-export[{REGISTRY[backend].extra}]', or leave "
                            f"{backend} out of --backends")
    return backends


def check_options(s: BuildSettings) -> None:
    """Everything but the model: the name, backends, opset, threads, quantization and output folder."""
    if s.name is not None:
        check_name(s.name)
    check_backends(s.backends)
    check_opset(s.opset)
    check_threads(s.threads)
    if s.quantize is not None:
        check_choice("--quantize precision", s.quantize, ("int8",))
        check_choice("--calib-method", s.calib_method, (*CALIB_METHODS, "all"))
        check_at_least("--calib-samples", s.calib_samples)
        check_positive("--int8-budget", s.int8_budget)
        if s.qat:
            check_at_least("--qat", s.qat)
        if s.calib_dir is not None:
            check_calib_dir(s.calib_dir)
        if not s.int8_anyway:
            check_int8_pays(machine_info()["flags"])
    elif s.calib_dir is not None:
        raise UserError("--calib-dir is only used with --quantize int8")
    elif s.keep_fp32:
        raise UserError("--keep-fp32 is only used with --quantize int8")
    elif s.qat:
        raise UserError("--qat is only used with --quantize int8")
    if s.memory_budget is not None:
        check_positive("--memory-budget", s.memory_budget)
        if not s.memory:
            raise UserError("--memory-budget is held against the memory each artifact is measured to take: "
                            "drop --no-memory")
    check_folder(s.out, "--out", "expected a folder (created if missing) for the bundles")


def check_int8_pays(flags) -> None:
    """Refuse INT8 on a CPU where it cannot pay, before minutes of calibration are spent."""
    if not int8_instructions(flags):
        raise UserError("this CPU has no INT8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX or Arm SDOT): "
                        "INT8 runs at about the speed of FP32 here (0.8-1.07x measured on AVX2); "
                        "pass --int8-anyway to calibrate and measure it anyway")
