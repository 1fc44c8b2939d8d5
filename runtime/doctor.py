"""`python -m runtime doctor`: what this device is and what it can run.

The CPU (architecture, cores, the features that decide speed and arithmetic),
the C library, Python, the installed backends, and for a bundle which of its
artifacts run here natively, which run emulated or without their speed-up,
and which cannot run at all; and whether each one's peak memory, as the build
measured it, fits in the memory this device has available now.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict, dataclass
from typing import Any

from .backends import REGISTRY
from .backends.base import CANNOT, RUNS
from .bundle import Artifact, Bundle
from .machine import ARM, FEATURES, cpu_signature, machine_info
from .memory import available_mb


@dataclass(frozen=True)
class ArtifactStatus:
    file: str
    backend: str
    precision: str
    status: str  # RUNS, SLOW, EMULATED or CANNOT
    why: str = ""
    peak_mb: float | None = None  # its peak resident set as the build measured it (None: not measured)
    fits: bool | None = None  # peak_mb within the memory available here (None: one of them unknown)


def versions() -> dict[str, str | None]:
    """Installed versions of what the runtime uses (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in ("numpy", *(b.distribution for b in REGISTRY.values()), "pillow"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def artifact_status(art: Artifact, machine: dict[str, Any], installed: dict[str, str | None]) -> ArtifactStatus:
    plugin = REGISTRY[art.backend]
    status = lambda s, why="": ArtifactStatus(art.file, art.backend, art.precision, s, why)  # noqa: E731
    if not installed.get(plugin.distribution):
        return status(CANNOT, f"{art.backend} is not installed")
    if art.precision == "fp32":
        return status(RUNS)
    return status(*plugin.status(art.precision, set(machine["flags"]), machine["machine"] in ARM,
                                 machine.get("flags_known", True)))


def with_memory(status: ArtifactStatus, peak_mb: float | None, available: float | None) -> ArtifactStatus:
    """The status with the artifact's peak and whether it fits; one that does not fit cannot run here."""
    fits = None if peak_mb is None or available is None else peak_mb <= available
    if fits is False:
        return ArtifactStatus(status.file, status.backend, status.precision, CANNOT,
                              f"its peak resident set is {peak_mb:.0f} MB (measured at build), {available:.0f} MB "
                              "is available here", peak_mb, fits)
    return ArtifactStatus(status.file, status.backend, status.precision, status.status, status.why, peak_mb, fits)


def doctor(bundle: Bundle | None = None, available: float | None = None) -> dict[str, Any]:
    """This device, and a bundle's artifacts on it (`available`: the MB free to a new process; default:
    what the kernel says now, MemAvailable)."""
    machine = machine_info()
    installed = versions()
    available = available_mb() if available is None else available
    report: dict[str, Any] = {"machine": machine, "cpu_signature": cpu_signature(machine), "versions": installed,
                              "available_mb": available}
    if bundle is not None:
        report["bundle"] = str(bundle.path)
        memory = (bundle.manifest.get("memory") or {}).get("artifacts", {})
        report["artifacts"] = [asdict(with_memory(artifact_status(a, machine, installed),
                                                  memory.get(a.key, {}).get("peak_mb"), available))
                               for a in bundle.artifacts]
    return report


def feature_names(flags) -> str:
    return ", ".join(FEATURES[f] for f in FEATURES if f in flags) or "none of those edge-export looks for"
