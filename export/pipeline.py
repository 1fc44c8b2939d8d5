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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

import models
from runtime import runners as rt
from runtime import tune
from runtime.bench import difference
from runtime.bundle import GOLDEN, Artifact, Bundle, sha256
from runtime.compare import BOUNDS, Parity, Truth, effective_bounds
from runtime.errors import BackendError, UserError, backend_reason
from runtime.files import clean_leftovers, publish, temporary_name
from runtime.machine import int8_instructions, machine_info
from runtime.memory import RUNS, measure_all
from runtime.spec import ModelSpec
from runtime.tasks import Task, task_of

from . import golden, quantize
from .benchmark import measure
from .calibration import CALIB_METHODS, calibration_set, task_images
from .artifacts import ONNX_FILE, FP32Artifacts, Stage, made_by_conversion, make_fp32_artifacts, silent
from .backends import REGISTRY
from .contract import Exportable, check_modules, check_signature, example_tensors, infer_spec
from .manifest import tool_versions, write_manifest
from .report import (FRONTIER_PLOT, LABELS_PLOT, LATENCY_PLOT, plot_frontier, plot_labels, plot_latency_memory,
                     report_markdown)
from .settings import BuildSettings, check_settings
from .stats import model_stats
from .validate import validate
from .winograd import Timing

TASK_SAMPLES = 16  # held-out task images that INT8 is judged on


@dataclass
class BuildResult:
    bundle: Path
    manifest: dict[str, Any]
    passed: bool
    failures: list[str]
    replaced: dict[str, Any] | None = None  # the manifest of the bundle this one replaced
    signed_by: str | None = None  # the fingerprint of the key that signed it (`--sign`)



def _manifest_of(path: Path) -> dict[str, Any] | None:
    try:
        return Bundle.open(path).manifest if path.is_dir() else None
    except UserError:
        return None


def artifact_entries(spec: ModelSpec, backends: tuple[str, ...], int8: bool = False,
                     truth: bool = False) -> list[Artifact]:
    """The artifacts a build makes, each with its nominal bound (and INT8's task bounds). With labelled
    images (`truth`), FP16 and INT8 are judged on them instead: their tensor bound only catches a broken
    model, and what they may lose is the allowed drop against the truth."""
    made = [(REGISTRY[b].runtime.files[p], b, p) for b, precisions in made_by_conversion(backends).items()
            for p in precisions]
    quantized = [(REGISTRY[b].runtime.files["int8"], b, "int8") for b in backends if int8]
    files = [f for b in REGISTRY for f in made if f[1] == b] + quantized  # FP32/FP16 in the registry's order
    task = task_of(spec)

    def entry(file: str, backend: str, precision: str) -> Artifact:
        if truth and precision != "fp32":
            return Artifact(file, backend, precision, BOUNDS[(backend, "int8")], judged_on="truth")
        return Artifact(file, backend, precision, spec.bound(backend, precision, BOUNDS[(backend, precision)]),
                        task_bounds=dict(task.int8_bounds) if precision == "int8" and task.int8_bounds else {})

    return [entry(*f) for f in files]


def model_for(s: BuildSettings) -> tuple[nn.Module, ModelSpec, dict | None]:
    """The module and its spec that `s` asks for (a zoo variant, or a user's model made
    from its code, its spec inferred from the example inputs), and how its checkpoint
    was read: None, or the layout it was renamed from (a zoo variant's published code's,
    a transformers model's older names)."""
    if s.variant is not None:
        module, read = models.load(s.variant, s.checkpoint, **s.overrides)
        return module, models.spec(s.variant, **s.overrides), read
    from models.checkpoint import load_into
    from models.user import make_module

    m = s.model
    module = make_module(m.ref, m.args)
    read = load_into(module, s.checkpoint) if s.checkpoint is not None else None
    example = {name: torch.rand(shape) for name, shape in m.inputs}
    spec = infer_spec(module, example, s.name or type(module).__name__, dynamic=m.dynamic, task=m.task,
                      preprocess=m.preprocess, output_names=m.outputs, multiple=m.multiple,
                      source={"model": m.ref, "args": dict(m.args)}, summary=f"{type(module).__name__} from {m.ref}")
    return module, spec, read


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
            if s.sign is not None:  # signed before it is published: no moment without its signature
                from .signing import sign

                result.signed_by = sign(tmp, s.sign)
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
    if s.quantize and s.data is None:  # INT8 is judged on what the model was trained for, where a task exists
        held_out = task_images(spec, TASK_SAMPLES)
        if held_out is not None:
            feeds = {spec.image.name: held_out}
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


@dataclass
class BuildState:
    """What the stages of one build share: what it was asked for, and what each stage adds."""

    folder: Path  # the bundle under its temporary name
    s: BuildSettings
    spec: ModelSpec
    model: Exportable
    stage: Stage
    manifest: dict[str, Any]  # filled in by the stages, in the order of `runtime.bundle.MANIFEST_KEYS`
    sets: dict[str, tuple[dict, dict]] = field(default_factory=dict)  # golden sets: inputs, PyTorch's outputs
    truth: Truth | None = None  # the labelled images' labels (set "truth"), with `--data`
    noise: dict[str, float] = field(default_factory=dict)
    made: FP32Artifacts | None = None
    int8: "_Int8 | None" = None
    artifacts: list[Artifact] = field(default_factory=list)  # what ships
    runners: dict[str, rt.Runner] = field(default_factory=dict)
    parity: dict[str, Parity] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # FP32 parity failures: the build fails
    rejected: list[dict[str, Any]] = field(default_factory=list)  # optional precisions that lost
    latency_times: dict[str, list[float]] = field(default_factory=dict)  # every timed call of the latency stage

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return self.sets["golden"][0]


def _build_into(bundle: Path, s: BuildSettings, spec: ModelSpec, model: Exportable, stats: dict,
                stage: Stage, checkpoint_read: dict | None) -> BuildResult:
    st = BuildState(bundle, s, spec, model, stage, {
        "name": spec.name, "spec": spec.to_dict(), "model": {"summary": spec.summary, **stats},
        "checkpoint": ({"path": str(s.checkpoint), "sha256": sha256(Path(s.checkpoint)), "read": checkpoint_read}
                       if s.checkpoint else None)})
    _golden_stage(st)
    _fp32_stage(st)
    _int8_plans_stage(st)
    _describe_stage(st)
    with contextlib.ExitStack() as stack:
        _load_stage(st, stack)
        _tune_stage(st, stack)
        _parity_stage(st)
        _latency_stage(st)
        _int8_stage(st)
    _memory_stage(st)
    _finish_stage(st)
    return BuildResult(bundle, st.manifest, not st.failures, st.failures)


def _golden_stage(st: BuildState) -> None:
    with st.stage("golden vectors"):
        st.sets = _golden_sets(st.model, st.s)
        st.noise = _noise(st.model, st.sets)
    labels = _truth_stage(st) if st.s.data is not None else {}
    golden.save_golden(st.folder / GOLDEN, st.sets, labels)
    st.manifest["outputs"] = [{"name": k, "shape": ["batch", *v.shape[1:]], "dtype": str(v.dtype)}
                              for k, v in st.sets["golden"][1].items()]


def _truth_stage(st: BuildState) -> dict[str, np.ndarray]:
    """The labelled images the bundle carries (set "truth"), PyTorch's outputs and figures on them, and the
    drop the FP16/INT8 artifacts may lose from those figures; the labels, as golden.npz stores them."""
    from runtime.labelled import eval_set, read_label_map

    from .settings import max_drop

    s, task = st.s, task_of(st.spec)
    with st.stage(f"labelled images ({s.eval_samples} from {s.data})"):
        label_map = read_label_map(s.label_map) if s.label_map is not None else None
        inputs, labels, read = eval_set(st.spec, s.data, s.eval_samples, s.ignore_index, label_map, s.seed)
        feeds = {st.spec.image.name: inputs}
        st.sets["truth"] = (feeds, golden.reference_outputs(st.model, feeds))
        st.truth = Truth.of(labels, st.sets["truth"][1], task, max_drop(s, task))
    st.manifest["evaluation"] = {
        **read, "set": "truth", "size": list(inputs.shape[2:]), "ignore_index": s.ignore_index,
        "label_map": {str(k): v for k, v in label_map.items()} if label_map else None,
        "max_drop": dict(st.truth.max_drop), "reference": dict(st.truth.reference),
        "judge": "FP16 and INT8 ship only within max_drop of PyTorch FP32's figures on these images"}
    return {"truth.label": labels}


def _fp32_stage(st: BuildState) -> None:
    st.made = make_fp32_artifacts(st.model, st.feeds, st.folder, st.s.opset, made_by_conversion(st.s.backends),
                                  st.stage, st.s.rewrites, _winograd_timing(st.s))
    if len(st.made.failed) == len(st.s.backends):
        raise UserError(f"no backend's converter could convert the model: {st.made.why_failed()}")
    st.manifest.update(export=st.made.export, simplify=st.made.simplify, rewrites=st.made.rewrites)


def _winograd_timing(s: BuildSettings) -> Timing:
    """How the build times the Winograd rewrite (`export.winograd`): on the backends that run the ONNX
    graph, for the backend settings' budget; or why it does not."""
    onnx_backends = [REGISTRY[b].runtime for b in s.backends if REGISTRY[b].runs_onnx]
    if s.quantize:
        return Timing(refused="an INT8 build: its plans are made from this graph, and INT8's rounding in "
                              "the transformed domain is larger")
    if s.tune_budget <= 0:
        return Timing(refused="--tune-budget 0: the build times nothing")
    if s.memory_budget is not None:
        return Timing(refused="a memory budget: the runtimes hold 16/9 of the kernels it replaces")
    if not onnx_backends:
        return Timing(refused="no backend built runs the ONNX graph")
    return Timing(onnx_backends, s.threads, s.tune_budget)


def _int8_plans_stage(st: BuildState) -> None:
    """Calibration and every backend's full plan (the INT8 stage searches on from it)."""
    s, keep = st.s, st.made.keep_nodes
    st.manifest["quantization"] = None
    if not s.quantize:
        return
    with st.stage("INT8 calibration + quantization (full plan)"):
        calib, calibration = calibration_set(st.spec, s.calib_dir, s.calib_samples)
        st.int8 = _Int8(st.folder, s, calib, keep, st.model, st.made.modules)
        st.manifest["quantization"] = {
            "precision": s.quantize, "calibration": {**calibration, "method": s.calib_method},
            "plans": {b: _full_plan(st.int8, b) for b in s.backends if b not in st.made.failed},
            "keep_fp32": {"modules": list(st.spec.keep_fp32), "nodes": keep},
            "int8_instructions": int8_instructions(machine_info()["flags"]), "search": {}}


def _full_plan(int8: "_Int8", backend: str) -> dict[str, Any]:
    """A backend's full plan, or why its tool could not make it (that backend then ships no INT8)."""
    try:
        return int8.full_plan(backend)
    except Exception as err:  # noqa: BLE001 - the tools' failures have no common type; said, never a traceback
        return {"failed": backend_reason(err)}


def _describe_stage(st: BuildState) -> None:
    """The artifacts with their bounds, and the manifest the runtime loads them through."""
    st.artifacts = artifact_entries(st.spec, st.s.backends, int8=bool(st.s.quantize), truth=st.truth is not None)
    for a in [a for a in st.artifacts if a.backend in st.made.failed]:  # the others ship without it
        st.artifacts.remove(a)
        st.rejected.append({**a.to_dict(), "reason": f"{a.file} on {a.backend} ({a.precision}): its converter could "
                                                     f"not convert the model: {st.made.failed[a.backend]}"})
    plans = (st.manifest["quantization"] or {}).get("plans", {})
    for a in [a for a in st.artifacts if a.precision == "int8" and "failed" in plans.get(a.backend, {})]:
        st.artifacts.remove(a)
        st.rejected.append({**a.to_dict(), "reason": f"{a.file} on {a.backend} (int8): its quantizer could not make "
                                                     f"the full plan: {plans[a.backend]['failed']}"})
    for a in st.artifacts:
        if a.precision == "int8" and "task" in st.sets:
            a.judged_on = "task"
        a.bounds = effective_bounds(a.bound, st.noise)
    st.manifest.update({
        "golden": {"file": GOLDEN, "seed": st.s.seed, "batch": st.s.golden_batch,
                   "sets": {name: len(next(iter(x.values()))) for name, (x, _) in st.sets.items()}},
        "reference_noise": {"what": "largest max rel err of PyTorch fp32 against fp64, and against fp32 "
                            "with the golden inputs moved by one ulp; an output's bound is raised to twice "
                            "this where it is larger", "outputs": st.noise},
        "artifacts": [a.to_dict() for a in st.artifacts], "versions": tool_versions(), "machine": machine_info()})
    write_manifest(st.folder, st.manifest)


def _load_stage(st: BuildState, stack: contextlib.ExitStack) -> None:
    """A runner for each artifact; one its runtime cannot load (an operator it has no kernel for) is not
    shipped, and a backend whose FP32 it is ships nothing; with no FP32 left the build is refused."""
    loaded = Bundle.open(st.folder)
    refused = {}
    with st.stage("load artifacts"):
        for a in st.artifacts:
            try:
                st.runners[a.key] = stack.enter_context(rt.load(loaded, a.backend, a.precision, st.s.threads,
                                                                cache=False))
            except BackendError as err:
                refused[a.key] = backend_reason(err.__cause__ or err)
    _refuse(st, refused, "load")
    if not any(a.precision == "fp32" for a in st.artifacts):
        raise UserError(f"no backend's runtime could load the FP32 model here: {'; '.join(refused.values())}")


def _tune_stage(st: BuildState, stack: contextlib.ExitStack) -> None:
    """Each FP32/FP16 artifact's backend settings, measured; the runners reloaded with the choice
    (INT8's plans are searched on the backends' defaults)."""
    st.manifest["tuning"] = None
    if st.s.tune_budget <= 0:
        return
    tuned = [a for a in st.artifacts if a.precision != "int8"]
    with st.stage(f"backend settings ({st.s.tune_budget:g} s per artifact)"):
        one = {k: v[:1] for k, v in st.feeds.items()}
        st.manifest["tuning"] = {"budget_s": st.s.tune_budget, "margin": tune.MARGIN, "threads": st.s.threads,
                                 "artifacts": tune.tune(tuned, st.folder, st.spec, st.manifest["outputs"], one,
                                                        st.s.threads, st.s.tune_budget, st.s.memory_budget)}
        st.manifest["artifacts"] = [a.to_dict() for a in st.artifacts]
        write_manifest(st.folder, st.manifest)
        loaded = Bundle.open(st.folder)
        for a in tuned:
            st.runners.pop(a.key).close()
            st.runners[a.key] = stack.enter_context(rt.load(loaded, a.backend, a.precision, st.s.threads,
                                                            cache=False))


def _parity_stage(st: BuildState) -> None:
    """Every artifact against PyTorch: FP32 must pass (or the build fails, with the
    divergence localised); FP16 that fails is not shipped."""
    sizes = len([k for k in st.sets if k.startswith("size.")])
    with st.stage("parity against PyTorch" + (f" at {sizes + 1} sizes" if sizes else "")):
        st.parity, refused = validate(st.runners, {a.key: a for a in st.artifacts}, st.sets, task_of(st.spec),
                                      st.truth)
    _refuse(st, refused, "run")
    if refused and not any(a.precision == "fp32" for a in st.artifacts):
        st.failures += [f"no backend's runtime could run the FP32 model: {'; '.join(refused.values())}"]
        return
    for a in list(st.artifacts):
        a.parity = st.parity[a.key].to_dict()
        problems = [f"{a.file} on {a.backend} ({a.precision}): {f}" for f in st.parity[a.key].failures()]
        if problems and a.precision == "fp16":
            _reject(a, "; ".join(problems), st)
        st.failures += [] if a.precision != "fp32" else problems
    if st.failures:
        with st.stage("localising the divergence"):
            st.manifest["diagnosis"] = [d.summary() for d in _localise(st.folder, st.s, st.model, st.feeds,
                                                                       st.artifacts, st.made.rewrites)]


def _latency_stage(st: BuildState) -> None:
    with st.stage("latency"):
        one = {k: v[:1] for k, v in st.feeds.items()}
        st.manifest["latency"] = measure(st.runners, st.model, one, st.s.threads, st.s.warmup, st.s.runs,
                                         st.latency_times)


def _int8_stage(st: BuildState) -> None:
    """Per INT8 artifact, the policy's search; what it ships replaces the full plan's model, or nothing ships."""
    q, latency = st.manifest["quantization"], st.manifest["latency"]
    for a in [a for a in st.artifacts if a.precision == "int8"]:
        try:
            with st.stage(f"INT8 on {a.backend}: sensitivity and frontier (budget {st.s.int8_budget:.0f} s)"):
                found = st.int8.search(a, st.runners, st.parity[a.key], latency, st.latency_times, st.sets,
                                       task_of(st.spec), st.made.modules, st.truth)
        except Exception as err:  # noqa: BLE001 - a plan its quantizer could not make: no INT8 here, said why
            latency.pop(a.key, None)
            _reject(a, f"{a.file} on {a.backend} (int8): the search stopped: {backend_reason(err)}", st)
            continue
        q["search"][a.backend] = found.to_dict()
        shipped = found.shipped
        if shipped is None:
            latency.pop(a.key)
            _reject(a, found.reason(), st)
            continue
        if shipped.file is not None:  # a plan other than the full one: its model replaces the full plan's
            st.runners.pop(a.key).close()
            quantize.install(shipped, st.folder / a.file, REGISTRY[a.backend].runtime)
            q["plans"][a.backend] = shipped.made
        a.plan, a.method, a.parity = shipped.plan.name, shipped.method, shipped.parity.to_dict()
        latency[a.key] = shipped.latency


def _memory_stage(st: BuildState) -> None:
    """Each shipped artifact's resident set by phase, each in a fresh process (`runtime.memory`)."""
    st.manifest["memory"] = None
    if not st.s.memory:
        return
    with st.stage("memory by phase (a fresh process per artifact)"):
        # as the build loads them (no model cache), which is how their settings were tuned
        found = measure_all(st.folder, [(a.backend, a.precision) for a in st.artifacts], st.s.threads, cache=False)
    st.manifest["memory"] = {"runs": RUNS, "artifacts": {k.replace(" ", "/"): v for k, v in found.items()}}


def _finish_stage(st: BuildState) -> None:
    """What runs by default, sizes on disk, the report and the final manifest."""
    s, m, folder = st.s, st.manifest, st.folder
    if st.int8 is not None:
        shutil.rmtree(st.int8.work)
    m["rejected"] = st.rejected
    m["recommended"] = recommend(m["latency"], st.artifacts, m["memory"], s.memory_budget)
    if m["recommended"] is None:
        peaks = sorted((v["peak_mb"], k.replace("/", " ")) for k, v in m["memory"]["artifacts"].items() if "peak_mb" in v)
        st.failures.append(f"no shipped artifact fits --memory-budget {s.memory_budget:g} MB: the smallest peak is "
                           f"{peaks[0][1]}'s, {peaks[0][0]:.0f} MB" if peaks else
                           f"no shipped artifact's memory could be measured against --memory-budget {s.memory_budget:g} MB")
    m["benchmark"] = {"batch": 1, "threads": s.threads, "warmup": s.warmup, "runs": s.runs, "interleaved": True}
    if all(ONNX_FILE not in a.files for a in st.artifacts):
        (folder / ONNX_FILE).unlink()  # only the source of the other backends' artifacts (and of INT8's plans)
    for a in st.artifacts:  # size on disk: an IR's .xml and .bin together
        a.bytes = sum((folder / f).stat().st_size for f in a.files)
    m["artifacts"] = [a.to_dict() for a in st.artifacts]
    plot_frontier(m, folder / FRONTIER_PLOT)
    plot_latency_memory(m, st.latency_times, folder / LATENCY_PLOT)
    plot_labels(m, folder / LABELS_PLOT)
    (folder / "report.md").write_text(report_markdown(m))
    write_manifest(folder, m)


def recommend(latency: dict[str, dict], artifacts: list[Artifact], memory: dict | None = None,
              budget: float | None = None) -> dict[str, Any] | None:
    """The shipped artifact with the lowest p50 in this build (within `budget` MB of peak memory, where
    given): what `runtime.load` runs by default; None when no artifact fits the budget."""
    shipped = {a.key: a for a in artifacts}
    peaks = {k: v.get("peak_mb") for k, v in ((memory or {}).get("artifacts") or {}).items()}
    fits = [k for k in latency if k in shipped and (budget is None or (peaks.get(k) or float("inf")) <= budget)]
    if not fits:
        return None
    best = min(fits, key=lambda k: latency[k]["p50_ms"])
    over = [f"{k.replace('/', ' ')} {peaks[k]:.0f} MB" for k in latency if k in shipped and k not in fits]
    return {"backend": shipped[best].backend, "precision": shipped[best].precision,
            "p50_ms": latency[best]["p50_ms"],
            "why": "the fastest shipped artifact in this build's interleaved run" + (
                f" within --memory-budget {budget:g} MB" + (f" (over it: {', '.join(over)})" if over else "")
                if budget is not None else "")}


class _Int8:
    """The INT8 stage's tools for one build: the QDQ models of ONNX Runtime's quantization (with the
    calibration method asked for, or with each of them), from which every backend's plans are made
    (`export/backends/<name>.py`: its own tool for the full plan, where it has one), and the search of
    `quantize.search`."""

    def __init__(self, bundle: Path, s: BuildSettings, calib: dict, keep: list[str], model: Exportable,
                 modules: dict[str, str]):
        self.bundle, self.s, self.calib, self.keep, self.model, self.modules = bundle, s, calib, keep, model, modules
        self.work = Path(tempfile.mkdtemp(dir=bundle, prefix=".work-int8-"))  # gone before the manifest is written
        methods = list(CALIB_METHODS) if s.calib_method == "all" else [s.calib_method]
        self.qdq = {m: quantize.OnnxRuntimeQuantizer(bundle / ONNX_FILE, calib, m, self.work / m) for m in methods}
        self.method = methods[0]  # the one the search goes on with
        self.instead: dict[str, quantize.Quantizer] = {}  # a backend's full-plan tool that failed -> its fallback
        self.qat: quantize.OnnxRuntimeQuantizer | None = None  # made on first use, for every backend
        self.found: dict[str, quantize.Search] = {}  # each backend's search, once made

    def quantizer(self, backend: str) -> quantize.Quantizer:
        return self.instead.get(backend) or REGISTRY[backend].quantizer(self.bundle, self.calib, self.qdq[self.method],
                                                                        self.modules)

    def full_plan(self, backend: str) -> dict[str, Any]:
        """The full plan's model in the bundle. Where the backend's own tool cannot quantize the
        model (NNCF fails on some graphs), its fallback makes it, and the manifest says why."""
        dst = self.bundle / REGISTRY[backend].runtime.files["int8"]
        try:
            return self.quantizer(backend).quantize(quantize.full_plan(self.keep), dst)
        except Exception as err:  # noqa: BLE001 - the tools' failures have no common type
            fallback = None if backend in self.instead else REGISTRY[backend].fallback(self.qdq[self.method], err)
            if fallback is None:
                raise
            self.instead[backend], why = fallback
            return {**self.instead[backend].quantize(quantize.full_plan(self.keep), dst), "note": why}

    def search(self, a: Artifact, runners: dict, parity: Parity, latency: dict, times: dict[str, list[float]],
               sets: dict, task: Task, modules: dict[str, str], truth: Truth | None = None) -> quantize.Search:
        """The INT8 policy for the artifact `a`; with `--calib-method all`, a backend whose full plan is the
        QDQ model itself goes on with the method whose full plan did least damage."""
        s, backend, twin = self.s, a.backend, runners[f"{a.backend}/fp32"]
        loaded = Bundle.open(self.bundle)
        judge = quantize.Judge(a, sets, task, lambda file, profile=False: REGISTRY[backend].runtime.runner(
            file, loaded.spec.inputs, loaded.manifest["outputs"], "int8", s.threads, profile=profile),
            self.bundle / loaded.artifact(backend, "fp32").file, s.warmup, s.runs, self.bundle / a.file, truth)
        fp32 = f"{backend}/fp32"
        full = quantize.Attempt(quantize.full_plan(self.keep), self.quantizer(backend).method, parity,
                                latency[a.key], latency[fp32]["p50_ms"],
                                versus=difference(times[fp32], times[a.key], latency[fp32]["others_cores"]))
        others = []
        if len(self.qdq) > 1 and self.quantizer(backend) is self.qdq[self.method]:
            for method in list(self.qdq)[1:]:
                dst = self.work / method / "full" / quantize.ONNX_INT8
                made = self.qdq[method].quantize(quantize.full_plan(self.keep), dst)
                with judge.open(dst) as runner:
                    lat, fp32, versus = judge.race(runner, twin)
                    others.append(quantize.Attempt(quantize.full_plan(self.keep), method, judge.parity(runner),
                                                   lat, fp32["p50_ms"], dst, made, versus))
            full = min([full, *others], key=lambda x: x.damage)
            self.method = full.method
        plans = REGISTRY[backend].plans(self.qdq[self.method], self.quantizer(backend))
        if not REGISTRY[backend].runs_onnx:
            shipped = {b: f.shipped.plan for b, f in self.found.items() if f.shipped and f.shipped.plan.keep_nodes}
            borrowed = {p.keep_nodes: dataclasses.replace(p, name=f"{p.name} (as {b})") for b, p in shipped.items()}
            self.found[backend] = quantize.known_plans(full, twin, plans, self.qdq[self.method], judge, self.keep,
                                                       list(borrowed.values()), self.work / "search", s.int8_budget)
            return self.found[backend]
        found = quantize.search(full, twin, plans, self.qdq[self.method], judge, modules,
                                self.keep, self.work / "search", s.int8_budget)
        found.attempts[1:1] = [x for x in others if x is not full]  # every method's full plan is on the record
        if s.qat and not (found.shipped and found.shipped.plan.name == "full"):
            found.add(self._qat_search(backend, judge, twin, modules), "QAT")
        self.found[backend] = found
        return found

    def _qat_search(self, backend: str, judge: quantize.Judge, twin, modules: dict[str, str]) -> quantize.Search:
        """The same search on the model fine-tuned with INT8 rounding simulated (`export.qat`)."""
        if self.qat is None:
            from .qat import finetune

            tuned = finetune(self.model, self.calib, self.s.qat, seed=self.s.seed)
            feeds = {k: v[:2] for k, v in self.calib.items()}
            (self.work / "qat").mkdir()
            make_fp32_artifacts(tuned, feeds, self.work / "qat", self.s.opset)
            self.qat = quantize.OnnxRuntimeQuantizer(self.work / "qat" / ONNX_FILE, self.calib, self.method,
                                                     self.work / "qat" / "ort", tag=f"QAT {self.s.qat} steps")
        plans = REGISTRY[backend].plans(self.qat, self.qat)
        dst = self.work / "qat" / backend / "full" / Path(REGISTRY[backend].runtime.files["int8"]).name
        made = plans.quantize(quantize.full_plan(self.keep), dst)
        with judge.open(dst) as runner:
            lat, fp32, versus = judge.race(runner, twin)
            full = quantize.Attempt(quantize.full_plan(self.keep), plans.method, judge.parity(runner), lat,
                                    fp32["p50_ms"], dst, made, versus)
        return quantize.search(full, twin, plans, self.qat, judge, modules, self.keep,
                               self.work / "qat-search", self.s.int8_budget)


def _localise(bundle: Path, s: BuildSettings, model: Exportable, inputs: dict, artifacts: list[Artifact],
              rewrites: dict) -> list:
    from .diagnose import localise_files

    files = {a.backend: bundle / a.file for a in artifacts if a.precision == "fp32"}
    feeds = {k: v[:1] for k, v in inputs.items()}
    return localise_files(model, feeds, files, s.opset, s.threads, rewrites)


def _refuse(st: BuildState, refused: Mapping[str, str], verb: str) -> None:
    """The artifacts (by key) their runtime cannot `verb` here, with its words, are not shipped; a
    backend whose FP32 is one of them ships nothing."""
    for key, why in refused.items():
        a = next((a for a in st.artifacts if a.key == key), None)
        if a is None:  # gone with its backend's FP32
            continue
        gone = [a] + ([b for b in st.artifacts if b.backend == a.backend and b is not a] if a.precision == "fp32" else [])
        for b in gone:
            if b in st.artifacts:
                _reject(b, f"{a.file} on {a.backend} ({a.precision}): its runtime cannot {verb} it here: {why}"
                        if b is a else f"{b.file} ({b.precision}): not without its backend's FP32, which "
                                       f"its runtime cannot {verb} here", st)


def _reject(a: Artifact, reason: str, st: BuildState) -> None:
    """An optional precision that loses is not shipped; the manifest says why."""
    st.artifacts.remove(a)
    runner = st.runners.pop(a.key, None)  # none where its runtime could not load it
    if runner is not None:
        runner.close()
    for file in a.files:  # an IR's weights too: model.fp16.xml -> model.fp16.bin
        (st.folder / file).unlink()
    st.rejected.append({**a.to_dict(), "reason": reason})
