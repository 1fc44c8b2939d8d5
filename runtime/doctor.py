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

from .bundle import BACKENDS, Artifact, Bundle
from .machine import ARM, FEATURES, cpu_signature, int8_instructions, machine_info
from .memory import available_mb

RUNS, SLOW, EMULATED, CANNOT = "runs", "runs, no speed-up", "emulated", "cannot run"


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
    for name in ("numpy", *BACKENDS, "pillow"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def artifact_status(art: Artifact, machine: dict[str, Any], installed: dict[str, str | None]) -> ArtifactStatus:
    backend, precision, flags = art.backend, art.precision, set(machine["flags"])
    status = lambda s, why="": ArtifactStatus(art.file, backend, precision, s, why)  # noqa: E731
    arm = machine["machine"] in ARM
    if not installed.get(backend):
        return status(CANNOT, f"{backend} is not installed")
    if precision == "fp32":
        return status(RUNS)
    if precision == "int8" and backend == "openvino" and arm:
        return status(EMULATED, "OpenVINO on ARM executes INT8 models in floating point (simulation mode)")
    if not machine.get("flags_known", True):
        return status(RUNS, "the CPU's features are unknown here (no /proc/cpuinfo of this architecture): "
                            "verify tells whether it stays within its bound")
    if precision == "int8":
        if not int8_instructions(flags):
            return status(SLOW, "no INT8 dot-product instruction (AVX-512 VNNI, AVX-VNNI, AMX or Arm SDOT): "
                                "about FP32 speed")
        return status(RUNS, "INT8 with " + ", ".join(int8_instructions(flags)))
    if backend != "openvino":
        return status(SLOW, "ONNX Runtime's CPU kernels compute most FP16 operators in FP32")
    if arm:
        return (status(RUNS, "FP16 arithmetic (NEON FP16), accumulation included: verify tells whether it "
                             "stays within the bound proven on the build machine") if "asimdhp" in flags
                else status(SLOW, "no FP16 arithmetic here: computed in FP32"))
    if "avx512_fp16" in flags or "amx_fp16" in flags:
        return status(RUNS, "FP16 arithmetic")
    return (status(RUNS, "computed in BF16 (AVX-512 BF16), weights stored in FP16") if "avx512_bf16" in flags
            else status(SLOW, "no FP16 or BF16 arithmetic here: computed in FP32, weights stored in FP16"))


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
