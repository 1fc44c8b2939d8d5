"""What machine a figure was measured on, and what a device can run. Standard library only."""

from __future__ import annotations

import hashlib
import os
import platform

from .kit import device_glibc as glibc  # the installer's own check, which runs before the rest can

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


def _cpuinfo() -> tuple[str, set[str], str]:
    """(CPU model, CPU flags, the key they were under) from /proc/cpuinfo."""
    model, flags, key_seen = platform.processor() or "unknown", set(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("unknown", "", platform.machine()):
                    model = value.strip()
                elif key == "CPU part" and model in ("unknown", "", platform.machine()):  # Arm without a model name
                    model = f"Arm CPU part {value.strip()}"
                elif key in ("flags", "Features") and not flags:  # x86, Arm
                    flags, key_seen = set(value.split()), key
    except OSError:
        pass
    return model, flags, key_seen


def machine_info() -> dict[str, object]:
    model, flags, key = _cpuinfo()
    machine = platform.machine()
    # Under user-mode emulation (qemu-user) the CPU described is the host's: x86 "flags" on an Arm machine.
    emulated = bool(key) and (key == "flags") == (machine in ARM)
    known = bool(key) and not emulated
    return {"cpu": model, "logical_cores": os.cpu_count(), "machine": machine,
            "system": platform.system(), "python": platform.python_version(), "glibc": glibc(),
            "flags": sorted(f for f in FLAGS if f in flags) if known else [], "flags_known": known,
            "emulated": emulated}


def int8_instructions(flags) -> list[str]:
    """The INT8 dot-product instructions among a machine's CPU flags (machine_info()["flags"])."""
    return [name for flag, name in INT8_INSTRUCTIONS.items() if flag in flags]


def cpu_signature(info: dict[str, object] | None = None) -> str:
    """A short name for this kind of CPU: its architecture and a digest of its model,
    core count and features. The choice of artifact `bench --choose` makes on a device
    is kept under it, so a bundle copied to another board does not inherit it."""
    info = info or machine_info()
    key = "|".join(map(str, (info["machine"], info["cpu"], info["logical_cores"], ",".join(info["flags"]))))
    return f"{info['machine']}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
