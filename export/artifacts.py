"""Stages: the FP32 artifacts of a module, made one way for the build, the study and diagnose.

Export to ONNX (and `onnx.checker`), simplify with onnxsim and check the
simplified graph against the exported one on real inputs, rewrite it
(`export.rewrite`: the same function with less work, checked the same way),
and convert it for each backend asked for (`export/backends/<name>.py`): `model.onnx` and,
say, `openvino/model[.fp16].xml` in a folder. A converter that cannot convert the model leaves its
backend out, with the converter's words (`FP32Artifacts.failed`), and the others go on.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence

import numpy as np

from runtime.backends import DEFAULT_BACKENDS
from runtime.compare import ParityError
from runtime.errors import backend_reason

from . import golden
from .backends import REGISTRY
from .contract import Exportable, module_nodes, node_modules
from .onnx_export import export_onnx
from .rewrite import rewrite
from .simplify import simplify
from .winograd import Timing, choose

ONNX_FILE = "model.onnx"
Stage = Callable[[str], ContextManager[None]]


@contextlib.contextmanager
def silent(name: str) -> Iterator[None]:
    yield


@dataclass
class FP32Artifacts:
    """What `make_fp32_artifacts` wrote and how: the files, the exporter's, onnxsim's and
    the rewrites' records for the manifest, the ONNX nodes of the modules INT8 leaves in
    float, and the module every node was made in."""

    onnx: Path
    files: dict[str, dict[str, Path]] = field(default_factory=dict)  # backend -> precision -> its artifact
    export: dict[str, Any] = field(default_factory=dict)
    simplify: dict[str, Any] = field(default_factory=dict)
    rewrites: dict[str, Any] = field(default_factory=dict)
    keep_nodes: list[str] = field(default_factory=list)
    modules: dict[str, str] = field(default_factory=dict)  # ONNX node -> the module path it was made in
    failed: dict[str, str] = field(default_factory=dict)  # backend -> why its converter could not convert the model

    def why_failed(self) -> str:
        """The converters that failed and why, in one line ("litert: ConversionError: ...")."""
        return "; ".join(f"{backend}: {why}" for backend, why in self.failed.items())


def make_fp32_artifacts(model: Exportable, feeds: Mapping[str, np.ndarray], folder: Path, opset: int,
                        conversions: Mapping[str, Sequence[str]] | None = None,
                        stage: Stage = silent, rewrites: bool = True, timing: Timing | None = None) -> FP32Artifacts:
    """Write `folder/model.onnx` and each backend's artifacts of the precisions `conversions` names
    (backend -> precisions; none: the ONNX graph alone). `feeds` are real inputs (batch 2 or more keeps
    the batch axis dynamic).
    `rewrites` False leaves the simplified graph as it is; with `timing`, the rewrites whose gain depends on
    the machine (`export.winograd`) are timed on its backends and kept where faster. Raises ParityError where
    simplification or a rewrite changed the outputs."""
    made = FP32Artifacts(folder / ONNX_FILE)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".work-") as work:  # inside: a killed build's goes with it
        raw = Path(work) / "exported.onnx"
        with stage("ONNX export + checker"):
            made.export = export_onnx(model, feeds, raw, opset)
            made.keep_nodes = module_nodes(raw, model.spec.keep_fp32) if model.spec.keep_fp32 else []
            made.modules = node_modules(raw)
        simplified = Path(work) / "simplified.onnx"
        with stage("onnxsim + numeric check"):
            made.simplify = simplify(raw, simplified, model.spec, feeds)
        if not made.simplify["check"]["passed"]:
            raise ParityError(f"simplification changed the model's outputs: {made.simplify['check']}")
        batch = len(next(iter(feeds.values())))
        one = {k: v[:1] for k, v in feeds.items()}
        timed = (lambda graph: choose(graph, model.spec, one, timing)) if timing is not None else None
        with stage("graph rewrites + numeric check" + (" (Winograd timed)" if timing is not None and not timing.why_not else "")):
            made.rewrites, applied = rewrite(simplified, made.onnx, model.spec, feeds, rewrites,
                                             lambda seed: golden.golden_inputs(model.spec, batch, 1000 + seed), timed)
    check = made.rewrites["check"]
    if check is not None and not check["passed"]:
        raise ParityError(f"a graph rewrite changed the model's outputs: {check}")
    for a, record in zip(applied, made.rewrites["applied"]):  # the new nodes belong to the replaced node's module
        module = record["module"] = made.modules.get(a.where)
        made.modules.update(dict.fromkeys(a.added, module) if module else {})
        if a.where in made.keep_nodes:
            made.keep_nodes += list(a.added)
    for backend, precisions in (conversions or {}).items():
        plugin = REGISTRY[backend]
        try:
            with stage(plugin.stage(precisions)) if plugin.stage(precisions) else contextlib.nullcontext():
                made.files[backend], record = plugin.convert(model, feeds, made.onnx, folder, precisions)
        except Exception as err:  # noqa: BLE001 - the converters' failures have no common type; said, never a traceback
            made.failed[backend] = backend_reason(err)  # and nothing it half wrote stays:
            for file in {folder / part for f in plugin.runtime.files.values() for part in plugin.runtime.parts(f)}:
                file.unlink(missing_ok=True)
                if file.parent != folder and file.parent.is_dir() and not any(file.parent.iterdir()):
                    file.parent.rmdir()
            continue
        if record:
            made.export.setdefault("backends", {})[backend] = record
    return made


def fp32_of(backends: Sequence[str] = DEFAULT_BACKENDS) -> dict[str, tuple[str, ...]]:
    """The FP32 artifact of each of `backends` (the study's rows, diagnose's fresh conversion)."""
    return {backend: ("fp32",) for backend in backends}


def made_by_conversion(backends: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The precisions of `backends` a build converts (INT8 is made by quantization, later)."""
    return {b: tuple(p for p in REGISTRY[b].runtime.files if p != "int8") for b in backends}
