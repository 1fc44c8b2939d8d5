"""Stage: the manifest: what the bundle holds, how it was made, what was proven."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from runtime.backends import REGISTRY
from runtime.bundle import FORMAT, MANIFEST, MANIFEST_KEYS, UNHASHED, sha256


TOOLS = ("torch", "onnx", "onnxscript", "onnxsim", *(b.distribution for b in REGISTRY.values()), "numpy")


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_hashes(bundle: Path) -> dict[str, str]:
    """sha256 of every file in the bundle but the manifest itself and what devices write beside it."""
    return {p.relative_to(bundle).as_posix(): sha256(p) for p in sorted(bundle.rglob("*"))
            if p.is_file() and p.relative_to(bundle).parts[0] not in UNHASHED}


def write_manifest(bundle: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` (completed in place with the format and the file hashes). Its
    entries are `runtime.bundle.MANIFEST_KEYS` (before the latency stage: those up to
    `machine`), written in that order; an entry outside them is a ValueError."""
    unknown = set(manifest) - set(MANIFEST_KEYS) - {"diagnosis"}
    if unknown:
        raise ValueError(f"manifest entries outside runtime.bundle.MANIFEST_KEYS: {', '.join(sorted(unknown))}")
    manifest["format"] = FORMAT
    manifest["files"] = file_hashes(bundle)
    order = {key: i for i, key in enumerate((*MANIFEST_KEYS, "diagnosis"))}
    ordered = dict(sorted(manifest.items(), key=lambda item: order[item[0]]))
    manifest.clear()
    manifest.update(ordered)
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def update_manifest(bundle: Path, rehash: tuple[str, ...] = (), **entries: Any) -> None:
    """Set manifest `entries` of a finished bundle (pack's `targets`, say) and the hashes of the
    files in `rehash` that the caller rewrote (deploy's report.md); every other file keeps the
    hash the build recorded, so a changed file is never blessed by a later writer."""
    from runtime.files import atomic_file

    path = bundle / MANIFEST
    manifest = json.loads(path.read_text())
    unknown = set(entries) - set(MANIFEST_KEYS)
    if unknown:
        raise ValueError(f"manifest entries outside runtime.bundle.MANIFEST_KEYS: {', '.join(sorted(unknown))}")
    manifest.update(entries)
    for name in rehash:
        manifest["files"][name] = sha256(bundle / name)
    order = {key: i for i, key in enumerate((*MANIFEST_KEYS, "diagnosis"))}
    with atomic_file(path) as partial:
        partial.write_text(json.dumps(dict(sorted(manifest.items(), key=lambda item: order[item[0]])), indent=2) + "\n")
