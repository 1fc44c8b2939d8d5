"""What machine a figure was measured on."""

from __future__ import annotations

import os
import platform

# instructions that make INT8 convolutions pay: without one, an INT8 model runs about as fast as FP32
INT8_INSTRUCTIONS = {"amx_int8": "AMX-INT8", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                     "asimddp": "Arm dot product (SDOT)"}
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "asimddp")


def machine_info() -> dict[str, object]:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):  # x86, Arm
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"cpu": model, "logical_cores": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "python": platform.python_version(),
            "flags": sorted(f for f in FLAGS if f in flags)}


def int8_instructions(flags) -> list[str]:
    """The INT8 dot-product instructions among a machine's CPU flags (machine_info()["flags"])."""
    return [name for flag, name in INT8_INSTRUCTIONS.items() if flag in flags]
