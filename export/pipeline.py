"""The build: sequences the stages and records what each one produced.

Every model, a zoo variant or a user's own, comes as a module and its
`ModelSpec`; the stages consume only those. A bundle is written to a temporary
folder beside its destination and renamed into place only when every stage has
passed, so `<out>/<name>` is always a complete bundle or absent. A build whose
parity fails is kept for inspection at `<out>/<name>.failed` and never
replaces a good bundle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import models
from runtime import runners as rt
from runtime.bundle import GOLDEN, Bundle, sha256
from runtime.bench import bench_interleaved
from runtime.compare import BOUNDS, effective_bounds
from runtime.errors import UserError
from runtime.files import clean_leftovers, publish, temporary_name
from runtime.machine import machine_info
from runtime.spec import ModelSpec
from runtime.tasks import Task, task_of

from . import golden, openvino_convert, quantize
from .benchmark import measure
from .artifacts import ONNX_FILE, Stage, make_fp32_artifacts, silent
from .contract import Exportable, check_modules, check_signature, example_tensors, infer_spec
from .manifest import tool_versions, write_manifest
from .report import report_markdown
from .settings import BuildSettings, check_settings
from .stats import model_stats
from .validate import validate

TASK_SAMPLES = 16  # held-out task images that INT8 is judged on


@dataclass
class BuildResult:
    bundle: Path
    manifest: dict[str, Any]
    passed: bool
    failures: list[str]
    replaced: dict[str, Any] | None = None  # the manifest of the bundle this one replaced




INT8_FILES = {"onnxruntime": quantize.ONNX_INT8, "openvino": quantize.OPENVINO_INT8}


def _manifest_of(path: Path) -> dict[str, Any] | None:
    try:
        return Bundle.open(path).manifest if path.is_dir() else None
    except UserError:
        return None


def artifact_entries(spec: ModelSpec, backends: tuple[str, ...], int8: bool = False) -> list[dict[str, Any]]:
    entries = []
    if "onnxruntime" in backends:
        entries.append({"file": ONNX_FILE, "backend": "onnxruntime", "precision": "fp32"})
    if "openvino" in backends:
        for precision, name in openvino_convert.IR_FILES.items():
            entries.append({"file": name, "backend": "openvino", "precision": precision})
    if int8:
        entries += [{"file": INT8_FILES[b], "backend": b, "precision": "int8"} for b in backends]
    task = task_of(spec)
    for e in entries:
        e["key"] = f"{e['backend']}/{e['precision']}"
        e["bound"] = spec.bound(e["backend"], e["precision"], BOUNDS[(e["backend"], e["precision"])])
        e["bound_metric"] = "max_rel"
        if e["precision"] == "int8" and task.int8_bounds:
            e["task_bounds"] = dict(task.int8_bounds)
    return entries


def model_for(s: BuildSettings) -> tuple[nn.Module, ModelSpec, dict | None]:
    """The module and its spec that `s` asks for (a zoo variant, or a user's model made
    from its code, its spec inferred from the example inputs), and how its checkpoint
    was read: None, or the published layout a zoo variant's checkpoint was renamed from."""
    if s.variant is not None:
        module, read = models.load(s.variant, s.checkpoint, **s.overrides)
        return module, models.spec(s.variant, **s.overrides), read
    from models.checkpoint import load_into
    from models.user import make_module

    m = s.model
    module = make_module(m.ref, m.args)
    if s.checkpoint is not None:
        load_into(module, s.checkpoint)
    example = {name: torch.rand(shape) for name, shape in m.inputs}
    spec = infer_spec(module, example, s.name or type(module).__name__, dynamic=m.dynamic, task=m.task,
                      preprocess=m.preprocess, output_names=m.outputs, multiple=m.multiple,
                      source={"model": m.ref, "args": dict(m.args)}, summary=f"{type(module).__name__} from {m.ref}")
    return module, spec, None


def build(s: BuildSettings, stage: Stage = silent) -> BuildResult:
    """Build the bundle that `s` asks for (a zoo variant or a user's model)."""
    check_settings(s)
    with stage("model"):
        module, spec, read = model_for(s)
    if s.name is not None:
        spec = dataclasses.replace(spec, name=s.name)
    if s.keep_fp32:
        spec = dataclasses.replace(spec, keep_fp32=tuple(dict.fromkeys(spec.keep_fp32 + s.keep_fp32)))
    return build_model(module, spec, s, stage, read)


def build_model(module: nn.Module, spec: ModelSpec, s: BuildSettings, stage: Stage = silent,
                checkpoint_read: dict | None = None) -> BuildResult:
    """Build the bundle of `module` as `spec` describes it, into `s.out / spec.name`
    (`checkpoint_read`: how `s.checkpoint` was read into it, for the manifest)."""
    check_signature(module, spec.input_names)
    check_modules(module, spec.keep_fp32)
    model = Exportable(module, spec).eval()
    with stage("model statistics"):
        stats = model_stats(model, input_data=example_tensors(spec, golden.golden_inputs(spec, 1, s.seed)))
    name = spec.name
    out = s.out
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused build leaves no folder behind
    clean_leftovers(out, name)
    tmp = temporary_name(out / name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        result = _build_into(tmp, s, spec, model, stats, stage, checkpoint_read)
        if result.passed:
            result.replaced = _manifest_of(out / name)
            publish(tmp, out / name)
            result.bundle = out / name
        else:
            failed = out / f"{name}.failed"
            shutil.rmtree(failed, ignore_errors=True)
            tmp.rename(failed)
            result.bundle = failed
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(out.iterdir()):  # a build that stopped early leaves no empty folder either
            out.rmdir()


def _golden_sets(model: Exportable, s: BuildSettings) -> dict[str, tuple[dict, dict]]:
    """The golden inputs and PyTorch's outputs: at the example size ("golden"), at a
    second size where the sides are dynamic ("size.HxW"), and held-out task
    images where INT8 is built and the model has a generated task ("task")."""
    spec = model.spec
    inputs = golden.golden_inputs(spec, s.golden_batch, s.seed)
    sets = {"golden": (inputs, golden.reference_outputs(model, inputs))}
    other = spec.image.other_size()
    if other is not None:
        moved = golden.golden_inputs(spec, 1, s.seed + 1, size=other)
        sets[f"size.{other[0]}x{other[1]}"] = (moved, golden.reference_outputs(model, moved))
    if s.quantize:  # INT8 is judged on what the model was trained for, where a task exists
        task_images = quantize.task_images(spec, TASK_SAMPLES)
        if task_images is not None:
            feeds = {spec.image.name: task_images}
            sets["task"] = (feeds, golden.reference_outputs(model, feeds))
    return sets


def _noise(model: Exportable, sets: dict[str, tuple[dict, dict]]) -> dict[str, float]:
    """The reference's own float32 noise per output, the largest over the golden set and every other size."""
    noise: dict[str, float] = {}
    for name, (inputs, reference) in sets.items():
        if name == "golden" or name.startswith("size."):
            for k, v in golden.reference_noise(model, inputs, reference, float64=name == "golden").items():
                noise[k] = max(noise.get(k, 0.0), v)
    return noise


def _build_into(bundle: Path, s: BuildSettings, spec: ModelSpec, model: Exportable, stats: dict,
                stage: Stage, checkpoint_read: dict | None) -> BuildResult:
    with stage("golden vectors"):
        sets = _golden_sets(model, s)
        inputs, reference = sets["golden"]
        noise = _noise(model, sets)
        golden.save_golden(bundle / GOLDEN, sets)
    outputs = [{"name": k, "shape": ["batch", *v.shape[1:]], "dtype": str(v.dtype)} for k, v in reference.items()]

    made = make_fp32_artifacts(model, inputs, bundle, s.opset,
                               tuple(openvino_convert.IR_FILES) if "openvino" in s.backends else (), stage)
    keep = made.keep_nodes
    calibration = None
    if s.quantize:
        with stage("INT8 calibration + quantization"):
            calib, calibration = quantize.calibration_set(spec, s.calib_dir, s.calib_samples)
            plans = {b: _quantize(bundle, b, calib, _methods("onnxruntime", s.calib_method)[0], "full", keep)
                     for b in s.backends}

    artifacts = artifact_entries(spec, s.backends, int8=bool(s.quantize))
    for a in artifacts:
        if a["precision"] == "int8" and "task" in sets:
            a["judged_on"] = "task"
    for a in artifacts:
        a["bounds"] = effective_bounds(a["bound"], noise)
    manifest: dict[str, Any] = {
        "name": spec.name,
        "spec": spec.to_dict(),
        "model": {"summary": spec.summary, **stats},
        "outputs": outputs,
        "checkpoint": ({"path": str(s.checkpoint), "sha256": sha256(Path(s.checkpoint)), "read": checkpoint_read}
                       if s.checkpoint else None),
        "export": made.export,
        "quantization": ({"precision": s.quantize, "calibration": {**calibration, "method": s.calib_method},
                          "plans": plans, "keep_fp32": {"modules": list(spec.keep_fp32), "nodes": keep}}
                         if s.quantize else None),
        "simplify": made.simplify,
        "golden": {"file": GOLDEN, "seed": s.seed, "batch": s.golden_batch,
                   "sets": {name: len(next(iter(x.values()))) for name, (x, _) in sets.items()}},
        "reference_noise": {"what": "largest max rel err of PyTorch fp32 against fp64, and against fp32 "
                            "with the golden inputs moved by one ulp; an output's bound is raised to twice "
                            "this where it is larger", "outputs": noise},
        "artifacts": artifacts,
        "versions": tool_versions(),
        "machine": machine_info(),
    }
    write_manifest(bundle, manifest)  # the runtime loads artifacts through it

    loaded = Bundle.open(bundle)
    task = task_of(spec)
    with contextlib.ExitStack() as stack:
        with stage("load artifacts"):
            runners = {a["key"]: stack.enter_context(rt.load(loaded, a["backend"], a["precision"], s.threads,
                                                                    cache=False))
                       for a in artifacts}
        with stage("parity against PyTorch" + (f" at {len([k for k in sets if k.startswith('size.')]) + 1} sizes"
                                               if spec.image.other_size() else "")):
            parity = validate(runners, {a["key"]: a for a in artifacts}, sets, task)
        failures, rejected = [], []
        for a in list(artifacts):
            a["parity"] = parity[a["key"]].to_dict()
            problems = [f"{a['file']} on {a['backend']} ({a['precision']}): {f}" for f in parity[a["key"]].failures()]
            if problems and a["precision"] == "fp16":
                _reject(a, "; ".join(problems), bundle, artifacts, runners, rejected)
            failures += [] if a["precision"] != "fp32" else problems
        if failures:
            with stage("localising the divergence"):
                manifest["diagnosis"] = [d.summary() for d in _localise(bundle, s, model, inputs, artifacts)]
        with stage("latency"):
            one = {k: v[:1] for k, v in inputs.items()}
            manifest["latency"] = measure(runners, model, one, s.threads, s.warmup, s.runs)
        for a in [a for a in artifacts if a["precision"] == "int8"]:
            with stage(f"INT8 on {a['backend']}: faster and accurate?"):
                reason = _settle_int8(a, bundle, s, calib, runners, parity, manifest, sets, stack, task)
            if reason:
                manifest["latency"].pop(a["key"])
                _reject(a, reason, bundle, artifacts, runners, rejected)

    manifest["rejected"] = rejected
    manifest["recommended"] = recommend(manifest["latency"], artifacts)
    manifest["benchmark"] = {"batch": 1, "threads": s.threads, "warmup": s.warmup, "runs": s.runs,
                             "interleaved": True}
    if "onnxruntime" not in s.backends:
        (bundle / ONNX_FILE).unlink()  # only the source of the IRs (and of INT8's selective plan)
    for a in artifacts:  # size on disk: an IR's .xml and .bin together
        a["bytes"] = sum(f.stat().st_size for f in {bundle / a["file"], bundle / (a["file"].removesuffix(".xml") + ".bin")}
                         if f.is_file())
    (bundle / "report.md").write_text(report_markdown(manifest))
    write_manifest(bundle, manifest)
    return BuildResult(bundle, manifest, not failures, failures)


def recommend(latency: dict[str, dict], artifacts: list[dict]) -> dict[str, Any]:
    """The shipped artifact with the lowest p50 in this build: what `runtime.load` runs by default."""
    shipped = {a["key"]: a for a in artifacts}
    best = min((k for k in latency if k in shipped), key=lambda k: latency[k]["p50_ms"])
    return {"backend": shipped[best]["backend"], "precision": shipped[best]["precision"],
            "p50_ms": latency[best]["p50_ms"], "why": "the fastest shipped artifact in this build's interleaved run"}


def _quantize(bundle: Path, backend: str, calib, method: str, plan: str, keep: list[str]) -> dict[str, Any]:
    if backend == "onnxruntime":
        return quantize.quantize_onnxruntime(bundle / ONNX_FILE, bundle / quantize.ONNX_INT8, calib, method, plan,
                                             keep)
    return quantize.quantize_openvino(bundle / openvino_convert.IR_FILES["fp32"], bundle / quantize.OPENVINO_INT8,
                                      calib, plan, bundle / ONNX_FILE, keep)


def _methods(backend: str, method: str) -> list[str]:
    """Calibration methods to try: ONNX Runtime's chosen one (or all three); NNCF has its own."""
    if backend == "openvino":
        return ["nncf"]
    return list(quantize.CALIB_METHODS) if method == "all" else [method]


def _settle_int8(a: dict, bundle: Path, s: BuildSettings, calib, runners: dict, parity: dict, manifest: dict,
                 sets: dict, stack: contextlib.ExitStack, task: Task) -> str:
    """Keep an INT8 artifact only if it is accurate and no slower than its FP32 twin.
    Plans are tried in order (full, then selective); within a plan every
    calibration method asked for is measured and the fastest that passes is
    shipped. Returns why nothing was shipped, or ''."""
    twin = f"{a['backend']}/fp32"
    one = {k: v[:1] for k, v in sets["golden"][0].items()}
    attempts = manifest["quantization"].setdefault("attempts", {}).setdefault(a["backend"], [])
    current = (_methods(a["backend"], s.calib_method)[0], "full")  # what the file on disk holds now

    def requantize(method: str, plan: str) -> None:
        nonlocal current
        runners.pop(a["key"]).close()
        info = _quantize(bundle, a["backend"], calib, method if method != "nncf" else "minmax", plan,
                         manifest["quantization"]["keep_fp32"]["nodes"])
        manifest["quantization"]["plans"][a["backend"]] = info
        runners[a["key"]] = stack.enter_context(rt.load(bundle, a["backend"], "int8", s.threads, cache=False))
        parity[a["key"]] = validate({a["key"]: runners[a["key"]]}, {a["key"]: a}, sets, task)[a["key"]]
        current = (method, plan)

    for plan in quantize.PLANS:
        passing = []
        for method in _methods(a["backend"], s.calib_method):
            if (method, plan) != current:
                requantize(method, plan)
            if attempts:  # a re-quantized model: time it against its twin again, interleaved
                lat = bench_interleaved({a["key"]: runners[a["key"]], twin: runners[twin]}, one, s.warmup, s.runs)
                manifest["latency"][a["key"]] = lat[a["key"]]
                p50_int8, p50_fp32 = lat[a["key"]]["p50_ms"], lat[twin]["p50_ms"]
            else:
                p50_int8, p50_fp32 = manifest["latency"][a["key"]]["p50_ms"], manifest["latency"][twin]["p50_ms"]
            result = parity[a["key"]]
            problems = result.failures() + ([] if p50_int8 <= p50_fp32 else
                                            [f"slower than FP32 ({p50_int8:.2f} vs {p50_fp32:.2f} ms p50)"])
            attempts.append({"plan": plan, "method": method, "p50_ms": p50_int8, "fp32_p50_ms": p50_fp32,
                             "speedup": p50_fp32 / p50_int8, "task": result.task, "passed": not problems,
                             "problems": problems, "parity": result.to_dict(),
                             "latency": dict(manifest["latency"][a["key"]])})
            if not problems:
                passing.append(attempts[-1])
        if passing:
            best = min(passing, key=lambda x: x["p50_ms"])
            if (best["method"], plan) != current:
                requantize(best["method"], plan)
            best["shipped"] = True
            a.update(plan=plan, method=best["method"], parity=best["parity"])
            manifest["latency"][a["key"]] = best["latency"]
            return ""
    return "; ".join(f"{x['plan']} plan ({x['method']}): {', '.join(x['problems'])}" for x in attempts)


def _localise(bundle: Path, s: BuildSettings, model: Exportable, inputs: dict, artifacts: list[dict]) -> list:
    from .diagnose import localise_files

    files = {a["backend"]: bundle / a["file"] for a in artifacts if a["precision"] == "fp32"}
    feeds = {k: v[:1] for k, v in inputs.items()}
    return localise_files(model, feeds, files, s.opset, s.threads)


def _reject(a: dict, reason: str, bundle: Path, artifacts: list, runners: dict, rejected: list) -> None:
    """An optional precision that loses is not shipped; the manifest says why."""
    artifacts.remove(a)
    runners.pop(a["key"]).close()
    (bundle / a["file"]).unlink()
    if a["file"].endswith(".xml"):  # its weights: model.fp16.xml -> model.fp16.bin
        (bundle / (a["file"].removesuffix(".xml") + ".bin")).unlink()
    rejected.append({**a, "reason": reason})

