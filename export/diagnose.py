"""Where does an artifact part ways with PyTorch?

Every PyTorch module's output is recorded with forward hooks; the exported
graph is run with its intermediate tensors exposed (each backend plugin's `activations`: extra graph
outputs in ONNX, `add_outputs` in OpenVINO, run through the device runtime's runners; LiteRT's
interpreter keeping every tensor, which its converter names after the modules).
The exporter records, for each ONNX node, the module scopes it came from (`pkg.torch.onnx.name_scopes`); a
module's output is the last tensor produced inside its scope. Walking the
graph in order, the first module whose tensor crosses the bound is where the
artifact diverges; everything before it agrees.
"""

from __future__ import annotations

import ast
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import torch

from runtime.compare import output_parity
from runtime.errors import UserError
from runtime.spec import ModelSpec
from runtime.tasks import task_of

from .backends import REGISTRY
from .contract import Exportable, example_tensors


@dataclass(frozen=True)
class Point:
    """One module output compared (or, last, one of the model's outputs: module `output NAME`):
    its path, the ONNX tensor and node it maps to, and the figures."""

    module: str
    tensor: str
    op_type: str
    max_rel: float
    bound: float

    @property
    def passed(self) -> bool:
        return bool(self.max_rel <= self.bound)


@dataclass
class Diagnosis:
    backend: str
    points: list[Point] = field(default_factory=list)
    unmatched: int = 0  # modules whose output the graph no longer holds (fused or folded)
    # layers PyTorch ran between the last agreeing module and the first diverging one,
    # whose outputs the graph does not hold (fused into it): the suspects beside it
    fused: list[str] = field(default_factory=list)
    # modules a graph rewrite computes inside a reordered expression (module -> rewrite): their
    # own outputs no longer exist, so they are judged through the model outputs they feed
    rewritten: dict[str, str] = field(default_factory=dict)

    @property
    def first_divergence(self) -> Point | None:
        return next((p for p in self.points if not p.passed), None)

    def summary(self) -> str:
        first = self.first_divergence
        if first is None:
            worst = max(self.points, key=lambda p: p.max_rel / p.bound, default=None)
            figure = f"; worst {worst.max_rel:.1e} at {worst.module!r}" if worst else ""
            outputs = sum(p.module.startswith("output ") for p in self.points)
            return (f"{self.backend}: no divergence: all {len(self.points) - outputs} module outputs and "
                    f"{outputs} model output{'s' if outputs != 1 else ''} within bound{figure}")
        fused = f"; computed together with {', '.join(map(repr, self.fused))} (fused)" if self.fused else ""
        where = (f"the model's {first.tensor!r} output" if first.module.startswith("output ")
                 else f"module {first.module!r} ({first.op_type} -> {first.tensor!r})")
        rewritten = ""
        if first.module.startswith("output ") and self.rewritten:
            rewritten = "; before it, " + ", ".join(f"{m!r} (computed by the graph rewrite {r})"
                                                    for m, r in self.rewritten.items())
        return (f"{self.backend}: first divergence at {where}: "
                f"max relative error {first.max_rel:.2e} > bound {first.bound:.1e}{fused}{rewritten}")


def module_scopes(exported: onnx.ModelProto) -> dict[str, list[str]]:
    """Tensor name -> the module paths whose forward produced it, outermost first (root excluded)."""
    scopes = {}
    for node in exported.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if "pkg.torch.onnx.name_scopes" not in meta:
            continue
        names = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])[:-1]  # the last is the op itself
        for out in node.output:
            scopes[out] = [n for n in names if n]
    return scopes


def module_tensors(graph: onnx.ModelProto, scopes: Mapping[str, list[str]]) -> dict[str, tuple[str, str]]:
    """Module path -> (tensor, op type) of the last node inside its scope, in graph order."""
    last: dict[str, tuple[str, str]] = {}
    for node in graph.graph.node:
        for out in node.output:
            for module in scopes.get(out, []):
                last[module] = (out, node.op_type)
    return last


def golden_outputs(model: Exportable, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in model(*example_tensors(model.spec, feeds))]


def torch_activations(model: Exportable, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Module path -> its output tensor (modules returning one tensor), in the order they finished."""
    acts: dict[str, np.ndarray] = {}
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(_m, _inputs, output, name=name):
            if isinstance(output, torch.Tensor):
                acts[name] = output.detach().numpy().copy()

        hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(*example_tensors(model.spec, feeds))
    finally:
        for h in hooks:
            h.remove()
    return acts


def localise(model: Exportable, exported: onnx.ModelProto, feeds: dict[str, np.ndarray],
             bounds: Mapping[str, float], files: Mapping[str, Path], threads: int = 1,
             rewritten: Mapping[str, str] | None = None) -> list[Diagnosis]:
    """Compare every module output of `model` with the matching tensor of each FP32 artifact
    in `files` (backend -> its file) on its backend. `exported` is the exporter's own graph of the
    same model: its metadata map tensors to modules (onnxsim and the backends' converters keep
    tensor names). `bounds` maps backend -> bound on the max
    relative error. The model's outputs are compared last; `rewritten` names the
    modules a graph rewrite computes (module -> rewrite), judged through them."""
    tensors = module_tensors(exported, module_scopes(exported))
    acts = torch_activations(model, feeds)
    order = {t: i for i, node in enumerate(exported.graph.node) for t in node.output}
    # graph order; a module and its parent can end on the same tensor: name the innermost
    modules = sorted((m for m in tensors if m in acts), key=lambda m: (order[tensors[m][0]], -m.count(".")))
    outputs = dict(zip(model.spec.outputs, golden_outputs(model, feeds)))
    leaves = {name for name, module in model.named_modules() if not any(module.children())}
    diagnoses = []
    for backend, file in files.items():
        with tempfile.TemporaryDirectory(prefix="edge-export-diagnose-") as folder:
            found = REGISTRY[backend].activations(file, model.spec, feeds, {m: tensors[m][0] for m in modules},
                                                  list(outputs), Path(folder), threads)
        if found is None:  # its tensors cannot be matched to modules
            continue
        got, got_outputs = found
        diagnosis = Diagnosis(backend)
        for m in modules:
            tensor, op_type = tensors[m]
            value = _as_torch_lays_out(got.get(m), acts[m].shape)
            if value is None:
                diagnosis.unmatched += 1
                continue
            figures = output_parity(m, acts[m], value, bounds[backend])
            diagnosis.points.append(Point(_shown(m), tensor, op_type, figures.max_rel, bounds[backend]))
        matched = {p.module for p in diagnosis.points}  # a rewrite that kept a module's output leaves it judged
        diagnosis.rewritten = {m: r for m, r in (rewritten or {}).items() if m not in matched}
        floors = task_of(model.spec).scales()
        for name, value in outputs.items():
            figures = output_parity(name, value, got_outputs[name], bounds[backend], floors.get(name, 0.0))
            diagnosis.points.append(Point(f"output {name}", name, "output", figures.max_rel, bounds[backend]))
        diagnosis.unmatched += len([m for m in acts if m not in tensors])
        diagnosis.fused = _fused_before(diagnosis, [_shown(m) for m in acts], {_shown(m) for m in leaves})
        diagnoses.append(diagnosis)
    return diagnoses


def _as_torch_lays_out(value: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """A backend's tensor in PyTorch's layout: as it is, or a channels-last 4-D tensor (LiteRT's
    convolutions run NHWC) moved to NCHW; None where neither has the module's shape."""
    if value is None:
        return None
    if value.shape == shape:
        return value
    if value.ndim == 4 and value.transpose(0, 3, 1, 2).shape == shape:
        return value.transpose(0, 3, 1, 2)
    return None


def _shown(path: str) -> str:
    """A module path as the user's module names it (without the export wrapper's `module.`)."""
    return path.removeprefix("module.")


def _fused_before(diagnosis: Diagnosis, executed: list[str], leaves: set[str]) -> list[str]:
    first = diagnosis.first_divergence
    if first is None or first.module.startswith("output "):  # every module agreed: nothing fused before it
        return []
    matched = {p.module for p in diagnosis.points}
    agreeing = [p.module for p in diagnosis.points[: diagnosis.points.index(first)]]
    start = executed.index(agreeing[-1]) + 1 if agreeing else 0
    return [m for m in executed[start: executed.index(first.module)] if m in leaves and m not in matched]


def export_for_diagnosis(model: Exportable, feeds: Mapping[str, np.ndarray], opset: int) -> onnx.ModelProto:
    """A fresh export of `model` as traced (unoptimized: a fused node keeps the
    name of its last op's output, so an op that was fused away has no tensor
    left to be matched against), with the exporter's metadata (onnxsim drops it)."""
    from .onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="edge-export-diagnose-") as work:
        path = Path(work) / "exported.onnx"
        export_onnx(model, feeds, path, opset, optimize=False, fallback=False)
        return onnx.load(str(path))


def diagnose(module: torch.nn.Module, spec: ModelSpec, bundle: Path | None = None, opset: int = 20,
             threads: int = 1) -> list[Diagnosis]:
    """Localise the divergence of `module` (as `spec` describes it) from the artifacts
    of `bundle`, or, without a bundle, from a fresh export, simplification and
    OpenVINO conversion as a build makes them."""
    from runtime.bundle import Bundle

    from . import golden
    from .artifacts import fp32_of, make_fp32_artifacts

    opened = Bundle.open(bundle) if bundle is not None else None
    if opened is not None and opened.spec.input_names != spec.input_names:
        raise UserError(f"bundle {str(bundle)!r} holds {opened.name!r}, whose inputs "
                        f"({', '.join(opened.spec.input_names)}) are not this model's ({', '.join(spec.input_names)})")
    model = Exportable(module, spec).eval()
    with tempfile.TemporaryDirectory(prefix="edge-export-diagnose-") as work:
        work = Path(work)
        if opened is not None:
            feeds = {k: v[:1] for k, v in opened.golden()[0].items()}
            files = {a.backend: opened.path / a.file for a in opened.artifacts if a.precision == "fp32"}
            rewrites = opened.manifest.get("rewrites")
        else:
            feeds = golden.golden_inputs(spec, 2, 0)  # batch 2: the batch axis stays dynamic
            made = make_fp32_artifacts(model, feeds, work, opset, fp32_of())
            if made.failed:
                raise UserError(f"a converter could not convert the model: {made.why_failed()}")
            files = {backend: made_here["fp32"] for backend, made_here in made.files.items()}
            rewrites = made.rewrites
            feeds = {k: v[:1] for k, v in feeds.items()}
        return localise_files(model, feeds, files, opset, threads, rewrites)


def localise_files(model: Exportable, feeds: dict[str, np.ndarray], files: Mapping[str, Path], opset: int,
                   threads: int, rewrites: Mapping[str, Any] | None = None) -> list[Diagnosis]:
    """`localise` against FP32 artifacts by backend (`files`), at their nominal FP32 bounds;
    `rewrites` is the build's record of the graph rewrites the artifacts went through."""
    from runtime.compare import BOUNDS

    exported = export_for_diagnosis(model, {k: np.concatenate([v, v]) for k, v in feeds.items()}, opset)
    bounds = {backend: BOUNDS[(backend, "fp32")] for backend in files}
    rewritten = {a["module"] or a["where"]: a["rewrite"] for a in (rewrites or {}).get("applied", [])}
    files = {backend: files[backend] for backend in REGISTRY if backend in files}  # the registry's order
    return localise(model, exported, feeds, bounds, files, threads, rewritten)
