"""What every backend plugin is made of: a `Backend` (what it runs, how it is tuned, what it does on a
CPU) and its runner, a `BaseRunner`.

A runner checks its inputs against the model contract before the backend sees them: a wrong name,
dtype, rank, shape or a non-finite value is a `ValueError` that names the input, what was expected
and what came. Each backend's library is imported inside its runner, so a device needs only the
backends it uses.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from ..errors import UserError
from ..machine import int8_instructions
from ..spec import TensorSpec

# what `runtime doctor` says of an artifact on this device
RUNS, SLOW, EMULATED, CANNOT = "runs", "runs, no speed-up", "emulated", "cannot run"


@runtime_checkable
class Runner(Protocol):
    backend: str
    precision: str
    input_names: list[str]
    output_names: list[str]
    settings: dict[str, Any]

    def infer(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def run_for(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[int, float]: ...
    def profile(self, feeds: Mapping[str, np.ndarray], runs: int) -> list[dict[str, Any]]: ...
    def node_times(self, feeds: Mapping[str, np.ndarray], runs: int) -> dict[str, float]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Runner": ...
    def __exit__(self, *exc: object) -> None: ...


class BaseRunner:
    """What every runner shares (the PyTorch ones of the build side too): inputs checked against
    the model contract before `_run` sees them, `run_for` from repeated calls, `close`."""

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: list[dict], backend: str, precision: str):
        self.inputs = inputs
        self.input_names = [i.name for i in inputs]
        self.output_names = [o["name"] for o in outputs]
        self.backend, self.precision = backend, precision
        self.settings: dict[str, Any] = {}

    def check(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            if len(self.inputs) != 1:
                raise ValueError(f"this model takes {len(self.inputs)} inputs ({', '.join(self.input_names)}); "
                                 "pass a dict of named arrays")
            feeds = {self.input_names[0]: feeds}
        unknown = [k for k in feeds if k not in self.input_names]
        missing = [k for k in self.input_names if k not in feeds]
        if unknown or missing:
            raise ValueError(f"inputs expected: {', '.join(self.input_names)}; "
                             f"missing: {', '.join(missing) or 'none'}; unknown: {', '.join(map(str, unknown)) or 'none'}")
        for spec in self.inputs:
            spec.check(feeds[spec.name])
        return dict(feeds)

    def infer(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(self.check(feeds))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    callers = 1  # concurrent callers in throughput mode
    fixed_shape: dict[str, list[int]] | None = None  # input -> the only shape the model takes, where it is fixed

    def run_for(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[int, float]:
        """Keep `self.callers` threads calling the model for `seconds`;
        returns (completed calls, elapsed seconds)."""
        feeds = self.check(feeds)
        counts = [0] * self.callers
        start = time.perf_counter()
        deadline = start + seconds

        def caller(i: int) -> None:
            while time.perf_counter() < deadline:
                self._run(feeds)
                counts[i] += 1

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(self.callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts), time.perf_counter() - start

    def profile(self, feeds: Mapping[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
        raise ValueError(f"the {self.backend} runner has no per-op profile")

    def node_times(self, feeds: Mapping[str, np.ndarray], runs: int) -> dict[str, float]:
        """Kernel time per executed node (ms per inference), named as the backend's profiler names it."""
        raise ValueError(f"the {self.backend} runner has no per-node profile")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def op_table(per_op: Mapping[str, tuple[float, int]], runs: int) -> list[dict[str, Any]]:
    """Rows of (op type, ms per inference, share of the total, kernels per inference), slowest first."""
    total = sum(ms for ms, _ in per_op.values()) or 1.0
    rows = [{"op_type": op, "ms": ms / runs, "share": ms / total, "count": n // runs}
            for op, (ms, n) in per_op.items()]
    return sorted(rows, key=lambda r: -r["ms"])


CACHE_MB = 2048  # what each backend's folder of the cache may hold, unless $EDGE_EXPORT_CACHE_MB says otherwise


def cache_dir() -> Path:
    """Where compiled models are cached: $EDGE_EXPORT_CACHE, else ~/.cache/edge-export."""
    return Path(os.environ.get("EDGE_EXPORT_CACHE") or Path.home() / ".cache" / "edge-export")


def cache_limit() -> int:
    """Bytes each backend's folder of the cache may hold: $EDGE_EXPORT_CACHE_MB megabytes, else CACHE_MB."""
    value = os.environ.get("EDGE_EXPORT_CACHE_MB", "").strip()
    if not value:
        return CACHE_MB << 20
    if not value.isdigit():
        raise UserError(f"EDGE_EXPORT_CACHE_MB={value!r} is not a whole number of megabytes "
                        f"(the default is {CACHE_MB}; 0 keeps nothing)")
    return int(value) << 20


def trim_cache(folder: Path) -> None:
    """Hold a backend's folder of the cache to `cache_limit()`, removing the entries used longest ago (the
    later of their last read and last write) first. Every rebuilt bundle brings
    new entries, so without this the cache of a machine that builds often only grows. Files being written
    (hidden names, `files.temporary_name`) are left alone."""
    limit, entries = cache_limit(), []
    for path in folder.iterdir() if folder.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):  # another process trimmed it meanwhile
            if not path.name.startswith(".") and path.is_file():
                stat = path.stat()
                entries.append((max(stat.st_atime, stat.st_mtime), stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= limit:
            break
        path.unlink(missing_ok=True)
        total -= size


class Backend:
    """One backend, as a plugin file `runtime/backends/<name>.py` describes it (its `BACKEND`).

    Everything the runtime knows of a backend is here: the files it runs by precision, the bound each
    is held to against PyTorch, its runner, the settings `runtime.tune` tries, its package, and what it
    does with each precision on a CPU (`status`). The build side's half is `export/backends/<name>.py`."""

    name: str  # as the manifest, the CLI and `runtime.load` name it
    title: str  # as people name it
    rank: int  # where it comes in tables, and which backend is first (the fallback choice)
    default = True  # built unless --backends says otherwise
    distribution: str  # its package on PyPI, pinned in a kit
    module: str  # its import name
    files: dict[str, str]  # precision -> the bundle's file of that artifact
    bounds: dict[str, float]  # precision -> the nominal bound on max relative error against PyTorch
    runner: type[BaseRunner]  # (file, inputs, outputs, precision, threads, mode, profile, cache, tuned=)
    profiler: str  # what `runner.profile` reads, in words

    def parts(self, file: str) -> tuple[str, ...]:
        """The bundle's files an artifact stored as `file` is made of."""
        return (file,)

    def candidates(self, memory: bool = False) -> list[dict[str, Any]]:
        """The settings `runtime.tune` tries: the defaults first, then one change at a time (with `memory`,
        also those that lower the peak). No candidate changes the thread count: how many threads are
        fastest is a fact of the machine and of what else runs on it, not of the model."""
        return [{}]

    def throughput(self, parallel: int) -> str:
        """How throughput mode keeps the CPU busy, in words."""
        return f"{parallel} parallel callers, 1 thread each"

    def status(self, precision: str, flags: set[str], arm: bool, flags_known: bool) -> tuple[str, str]:
        """What this backend does with a `precision` artifact other than FP32 on a CPU with `flags`:
        (RUNS, SLOW, EMULATED or CANNOT, why)."""
        if not flags_known:
            return RUNS, ("the CPU's features are unknown here (no /proc/cpuinfo of this architecture): "
                          "verify tells whether it stays within its bound")
        if precision == "int8":
            if not int8_instructions(flags):
                return SLOW, ("no INT8 dot-product instruction (AVX-512 VNNI, AVX-VNNI, AMX or Arm SDOT): "
                              "about FP32 speed")
            return RUNS, "INT8 with " + ", ".join(int8_instructions(flags))
        return self.fp16_status(flags, arm)

    def fp16_status(self, flags: set[str], arm: bool) -> tuple[str, str]:
        return SLOW, f"{self.title} computes FP16 in FP32 here"
