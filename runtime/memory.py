"""Memory an artifact takes, by phase, as the kernel accounts it.

Each artifact is measured in a fresh Python process (`python -m runtime.memory`),
so that one artifact's allocations, or a backend already imported, do not hide
another's. The phases:

- `python`: the interpreter with numpy and this runtime, before any backend;
- `import`: after the backend's import;
- `load`: after loading (ONNX Runtime's session, OpenVINO's compile);
- `first`: after the first inference;
- `runs`: over the timed inferences that follow.

For each phase: the resident set at its end (`rss_mb`), the peak resident set
while it ran (`peak_mb`: the kernel's high-water mark VmHWM, reset through
/proc/self/clear_refs at each phase's start where the kernel allows it, else the
peak since the process began), and the proportional set size where
/proc/self/smaps_rollup gives it (`pss_mb`: shared libraries counted by share).
`peak_mb` of the whole run is what a device must have free. Linux only (what
the kits target); elsewhere the phases carry the process's peak from getrusage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .errors import BackendError, UserError
from .machine import usable_cores

PHASES = ("python", "import", "load", "first", "runs")
RUNS = 10  # inferences in the `runs` phase (the peak settles within a few)


def _kb(field: str, text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _reset_peak() -> bool:
    """Reset the kernel's peak resident set of this process (Linux 4.0+); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _now(resettable: bool) -> dict[str, float | None]:
    status = _read("/proc/self/status")
    rss, hwm = _kb("VmRSS", status), _kb("VmHWM", status)
    if rss is None:  # not Linux: the peak since the process began is all there is
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_kb = peak / 1024 if sys.platform == "darwin" else peak
        return {"rss_mb": None, "peak_mb": peak_kb / 1024, "pss_mb": None}
    pss = _kb("Pss", _read("/proc/self/smaps_rollup"))
    return {"rss_mb": rss / 1024, "peak_mb": max(hwm or rss, rss) / 1024, "pss_mb": pss / 1024 if pss else None,
            **({} if resettable else {"peak_since_start": True})}


def _phases(bundle_path: str, backend: str, precision: str, threads: int | None, runs: int,
            cache: bool = True, settings: dict | None = None) -> dict[str, Any]:
    """Run in the fresh process: the phases, measured in turn."""
    import importlib

    from .backends import backend as backend_plugin
    from .bundle import Bundle
    from .runners import load

    phases: dict[str, dict] = {}
    resettable = _reset_peak()

    def mark(phase: str) -> None:
        phases[phase] = _now(resettable)
        _reset_peak()

    bundle = Bundle.open(bundle_path)
    feeds, _ = bundle.golden()
    mark("python")
    importlib.import_module(backend_plugin(backend).module)
    mark("import")
    with load(bundle, backend, precision, threads, cache=cache, settings=settings) as runner:
        mark("load")
        runner.infer(feeds)
        mark("first")
        for _ in range(runs):
            runner.infer(feeds)
        mark("runs")
    return {"backend": backend, "precision": precision, "runs": runs, "phases": phases,
            "peak_mb": max(p["peak_mb"] for p in phases.values()),
            "peak_resettable": resettable}


def measure(bundle_path: str | Path, backend: str, precision: str, threads: int | None = None,
            runs: int = RUNS, cache: bool = True, settings: dict | None = None) -> dict[str, Any]:
    """Memory by phase of one artifact, measured in a fresh process (see the module's doc); `cache`:
    loaded as `runtime.load` loads it by default, through this device's cache of compiled models;
    `settings`: these backend settings instead of the ones `runtime.load` would choose."""
    args = [sys.executable, "-m", "runtime.memory", str(Path(bundle_path).resolve()), backend, precision, str(runs),
            "cache" if cache else "no-cache", str(threads or 0), json.dumps(settings)]
    here = str(Path(__file__).resolve().parent.parent)  # the child imports this very runtime
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (here, os.environ.get("PYTHONPATH"))))}
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800, env=env)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit code {done.returncode}"
        raise BackendError(f"measuring the memory of {backend} {precision} failed: {why.removeprefix('error: ')}")
    return json.loads(done.stdout)


def measure_all(bundle_path: str | Path, keys: list[tuple[str, str]], threads: int | None = None,
                runs: int = RUNS, cache: bool = True) -> dict[str, dict[str, Any]]:
    """`measure` for each (backend, precision), a few processes at a time (each has its own resident
    set, so running side by side changes no figure); "backend precision" -> figures, or {"error": why}."""
    from concurrent.futures import ThreadPoolExecutor

    def one(key: tuple[str, str]) -> dict[str, Any]:
        try:
            return measure(bundle_path, *key, threads=threads, runs=runs, cache=cache)
        except BackendError as err:
            return {"error": str(err)}

    with ThreadPoolExecutor(max_workers=max(1, min(len(keys), usable_cores()))) as pool:
        return {f"{b} {p}": found for (b, p), found in zip(keys, pool.map(one, keys))}


def phases_line(found: dict[str, Any]) -> str:
    """The phases in one line of MB, for `bench` and the build."""
    ph = found["phases"]
    pss = ph["runs"].get("pss_mb")
    return (f"python {ph['python']['peak_mb']:.0f}, backend imported {ph['import']['peak_mb']:.0f}, "
            f"loading {ph['load']['peak_mb']:.0f}, first inference {ph['first']['peak_mb']:.0f}, "
            f"over {found['runs']} runs {ph['runs']['peak_mb']:.0f} MB peak resident"
            + (f" ({pss:.0f} MB PSS after them)" if pss else ""))


def available_mb() -> float | None:
    """Memory the kernel says a new process can have without swapping (MemAvailable), or None."""
    found = _kb("MemAvailable", _read("/proc/meminfo"))
    return found / 1024 if found is not None else None


def main(argv: list[str]) -> int:
    bundle, backend, precision, runs, cache, threads, settings = argv
    try:
        found = _phases(bundle, backend, precision, int(threads) or None, int(runs), cache == "cache",
                        json.loads(settings))
    except (UserError, BackendError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
