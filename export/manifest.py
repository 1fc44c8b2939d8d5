"""Stage: the manifest: what the bundle holds, how it was made, what was proven."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from runtime.bundle import FORMAT, MANIFEST, sha256


TOOLS = ("torch", "onnx", "onnxscript", "onnxsim", "onnxruntime", "openvino", "numpy")


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_hashes(bundle: Path) -> dict[str, str]:
    """sha256 of every file in the bundle but the manifest itself."""
    return {p.relative_to(bundle).as_posix(): sha256(p)
            for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_manifest(bundle: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` (completed in place with the format and the file hashes)."""
    manifest["format"] = FORMAT
    manifest["files"] = file_hashes(bundle)
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
