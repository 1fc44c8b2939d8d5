"""What machine a figure was measured on, and what a device can run. Standard library only."""

from __future__ import annotations

import os
import platform
import zlib

from .kit import cpu_flags, device_glibc as glibc  # the installer's own checks, which run before the rest can

# instructions that make INT8 convolutions pay: without one, an INT8 model runs about as fast as FP32
INT8_INSTRUCTIONS = {"amx_int8": "AMX-INT8", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                     "asimddp": "Arm dot product (SDOT)"}
# The CPU features that decide how fast (and in what arithmetic) a bundle's artifacts run, with their names.
FEATURES = {
    # x86-64 (the "flags" of /proc/cpuinfo)
    "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16", "avx512_fp16": "AVX-512 FP16", "amx_tile": "AMX", "amx_int8": "AMX-INT8", "amx_fp16": "AMX-FP16",
    # Arm64 (its "Features")
    "asimd": "NEON", "asimdhp": "NEON FP16 arithmetic", "asimddp": "dot product (SDOT)", "i8mm": "INT8 matrix multiply",
    "bf16": "BF16", "sve": "SVE",
}
FLAGS = tuple(FEATURES)
ARM = ("aarch64", "arm64")


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (an Arm core's part number where it has no name)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
                if key.strip() == "CPU part":
                    return f"Arm CPU part {value.strip()}"
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity: `taskset`, a container's cpuset), which the thread
    counts default to; a library that sizes its pool by the machine's cores puts several threads on one."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_info() -> dict[str, object]:
    flags, emulated = cpu_flags()
    return {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "python": platform.python_version(), "glibc": glibc(),
            "flags": sorted(f for f in FLAGS if f in flags) if flags is not None else [],
            "flags_known": flags is not None, "emulated": emulated}


def int8_instructions(flags) -> list[str]:
    """The INT8 dot-product instructions among a machine's CPU flags (machine_info()["flags"])."""
    return [name for flag, name in INT8_INSTRUCTIONS.items() if flag in flags]


def cpu_signature(info: dict[str, object] | None = None) -> str:
    """A short name for this kind of CPU: its architecture and a digest of its model,
    core count and features. The choice of artifact `bench --choose` makes on a device
    is kept under it, so a bundle copied to another board does not inherit it."""
    info = info or machine_info()
    key = "|".join(map(str, (info["machine"], info["cpu"], info["logical_cores"], ",".join(info["flags"]))))
    # a CRC, not a cryptographic hash: a name needs no OpenSSL, whose library (3.6 MB resident) hashlib
    # would load into every process that runs a model
    return f"{info['machine']}-{zlib.crc32(key.encode()):08x}"
