"""edge-export's build side: any PyTorch vision model to a proven, benchmarked bundle.

From a script or a notebook::

    import export
    result = export.build(my_module, torch.rand(1, 3, 256, 256), out="artifacts", name="my-unet")

From the shell: `python -m export build --variant dsc`, or
`python -m export build --model my_file.py:make --input image:1x3x256x256`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _own_packages_first() -> None:
    """Load edge-export's `runtime` and `models` from beside this package. Run from
    the root of a research repository that has its own `models` folder, Python
    would find that one first (the current folder leads sys.path); the user's
    code gets its own `models` when it is imported (see `models.user`)."""
    root = Path(__file__).resolve().parent.parent
    for name in ("runtime", "models"):
        loaded = sys.modules.get(name)
        if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve().parent.parent == root:
            continue
        spec = importlib.util.spec_from_file_location(name, root / name / "__init__.py",
                                                      submodule_search_locations=[str(root / name)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


_own_packages_first()


def build(module, spec_or_example_inputs, out="artifacts", **options):
    """Build a bundle of `module`: a `runtime.spec.ModelSpec`, or example inputs (a tensor,
    a tuple of tensors, or a dict of them by forward's parameter names) from which the
    spec is inferred and printed. `options`: name, checkpoint, backends, opset, threads,
    quantize, calib_dir, calib_samples, calib_method, task, preprocess, dynamic, outputs,
    multiple (see `export.api.build`). Returns the `BuildResult`."""
    from .api import build as _build

    return _build(module, spec_or_example_inputs, out=out, **options)


__all__ = ["build"]
