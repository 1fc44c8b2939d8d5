"""The build side of each backend, one plugin file each: `export/backends/<name>.py`.

A plugin defines `BACKEND`, a `base.ExportBackend`: how its artifacts are made from the exported,
simplified and rewritten ONNX graph, its INT8 quantizer, and how `diagnose` reads its intermediate
tensors. Its device-side half is `runtime/backends/<name>.py`, which says what the artifacts are
(files, bounds) and runs them. The two registries hold the same names (a test checks it).
"""

from __future__ import annotations

import importlib
import pkgutil

from runtime.backends import REGISTRY as RUNTIME

from .base import ExportBackend


def _found() -> dict[str, ExportBackend]:
    plugins = {p.name: p for p in (importlib.import_module(f"{__name__}.{m.name}").BACKEND
                                   for m in pkgutil.iter_modules(__path__) if m.name != "base")}
    return {name: plugins[name] for name in RUNTIME if name in plugins}


REGISTRY = _found()
