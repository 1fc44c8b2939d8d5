"""The backends a bundle's artifacts run on, one plugin file each: `runtime/backends/<name>.py`.

A plugin defines `BACKEND`, a `base.Backend`: its runner, the precisions and files it runs, their
bounds, its tuning candidates, its package, and what it does on a CPU. Its build-side half is
`export/backends/<name>.py` (conversion, INT8, how `diagnose` reads its intermediate tensors). This
registry is built from the files found here; everything that names backends (`BACKENDS`, the bounds,
doctor, tuning, a kit's wheels, the lab's rows) is derived from it, and no code outside a plugin
compares a backend's name. Adding a backend is adding those two files and their tests.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import check_choice
from .base import Backend


def _found() -> dict[str, Backend]:
    plugins = [importlib.import_module(f"{__name__}.{m.name}").BACKEND
               for m in pkgutil.iter_modules(__path__) if m.name != "base"]
    return {b.name: b for b in sorted(plugins, key=lambda b: b.rank)}


REGISTRY = _found()
BACKENDS = tuple(REGISTRY)
DEFAULT_BACKENDS = tuple(name for name, b in REGISTRY.items() if b.default)  # what a build makes unless told


def backend(name: str) -> Backend:
    """The plugin of the backend `name`; a UserError naming the known ones for another."""
    check_choice("backend", name, BACKENDS)
    return REGISTRY[name]
