"""Loading one artifact of a bundle on its backend, and choosing which artifact runs.

The backends themselves are plugins (`runtime.backends`): each holds its runner. Inputs are checked
against the manifest before they reach a backend: a wrong name, dtype, rank, shape or a non-finite
value is a `ValueError` that names the input, what was expected and what came.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .backends import BACKENDS, REGISTRY
from .backends.base import Runner, cache_limit
from .bundle import PRECISIONS, Bundle
from .errors import BackendError, UserError, backend_reason, check_choice

MODES = ("latency", "throughput")


def choose(bundle: Bundle, backend: str | None, precision: str | None) -> tuple[str, str]:
    """The artifact to run where the caller leaves it open: the one `runtime bench
    --choose` measured fastest on this kind of CPU, else the build's recommendation
    (its fastest shipped artifact on the build machine); FP32 on a backend the caller names."""
    from .machine import cpu_signature

    recommended = (bundle.device_choice(cpu_signature()) if backend is None and precision is None else None) \
        or bundle.manifest.get("recommended") or {"backend": BACKENDS[0], "precision": "fp32"}
    if backend is None:
        backend = recommended["backend"] if recommended["backend"] in installed_backends() else installed_backends()[0]
    if precision is None:
        precision = recommended["precision"] if backend == recommended["backend"] else "fp32"
    return backend, precision


def load(bundle: str | Path | Bundle, backend: str | None = None, precision: str | None = None,
         threads: int | None = None, mode: str = "latency", profile: bool = False, cache: bool = True,
         settings: Mapping[str, Any] | None = None) -> Runner:
    """Load one artifact of a bundle: by default the one `runtime bench --choose`
    measured fastest on this kind of CPU, else the one the build measured fastest
    (its manifest's `recommended`). `threads=None` lets the backend
    choose. `mode="throughput"` sets the backend up for many concurrent calls
    (OpenVINO's THROUGHPUT hint; ONNX Runtime one core per caller);
    `profile=True` turns the backend's profiler on for `runner.profile()`;
    `cache=True` keeps OpenVINO's compiled model and ONNX Runtime's optimized
    graph in `cache_dir()`, so the next load on this device skips that work.
    The backend settings are `settings` where given (a candidate being measured), else those
    measured on this kind of CPU (`Bundle.settings_here`; `runner.settings["tuned_on"]` says
    whose), else the backends' defaults."""
    from .machine import cpu_signature

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    backend, precision = choose(bundle, backend, precision)
    check_choice("backend", backend, BACKENDS)
    check_choice("precision", precision, PRECISIONS)
    check_choice("mode", mode, MODES)
    if threads is not None and threads < 1:
        raise UserError(f"threads {threads} is not a positive number; pass None to let the backend choose")
    if cache:
        cache_limit()  # a bad $EDGE_EXPORT_CACHE_MB is named before any work
    entry = bundle.artifact(backend, precision)
    tuned, source = ((dict(settings), "caller") if settings is not None else
                     bundle.settings_here(entry, cpu_signature()) if mode == "latency" else ({}, "defaults"))
    try:
        runner = REGISTRY[backend].runner(bundle.path / entry.file, bundle.spec.inputs, bundle.manifest["outputs"], precision,
                                  threads, mode, profile, cache, tuned=tuned)
        runner.settings["tuned_on"] = source
        return runner
    except ImportError:
        raise UserError(f"backend {backend!r} is not installed here; pip install {REGISTRY[backend].distribution}") from None
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 (each backend raises its own types)
        raise BackendError(f"{backend} cannot load {entry.file} ({precision}) here: {backend_reason(err)}") from err


def installed_backends() -> list[str]:
    import importlib.util

    return [b.name for b in REGISTRY.values() if importlib.util.find_spec(b.module) is not None]
