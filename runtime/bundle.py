"""A bundle on disk: its manifest, its files and their hashes.

Only the standard library and numpy: reading a bundle must work on any device.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .backends import BACKENDS, REGISTRY
from .errors import UserError, check_choice
from .spec import ModelSpec

MANIFEST = "manifest.json"
FORMAT = 2  # 2: the model's spec recorded whole; the name, inputs, preprocessing and task read from it
GOLDEN = "golden.npz"
PRECISIONS = ("fp32", "fp16", "int8")
# The manifest's entries, in the order a build writes them. The runtime reads the first five; a build
# writes every one (the stages of export/pipeline.py fill them in, export/manifest.py checks them).
READ_BY_RUNTIME = ("name", "spec", "outputs", "artifacts", "files")
MANIFEST_KEYS = (
    "name", "spec", "model", "checkpoint", "outputs", "export", "simplify", "rewrites", "quantization", "golden",
    "evaluation", "reference_noise", "artifacts", "versions", "machine", "tuning", "latency", "memory", "rejected", "recommended",
    "benchmark",
    "targets", "format", "files",
)
# What a device writes beside the hashed files, in the bundle's folder: never hashed, never packed.
DEVICE_CHOICE = "device-choice.json"  # the artifact `runtime bench --choose` measured fastest, per CPU signature
DEVICES = "devices"  # `python -m export deploy`'s results, one JSON file per device
SIGNATURE = "manifest.sig"  # `python -m export sign`'s signature of the manifest (runtime.signing); packed with it
UNHASHED = (MANIFEST, DEVICE_CHOICE, DEVICES, SIGNATURE)


def sha256(path: Path) -> str:
    import hashlib  # here, not at the top: a process that only runs a model never loads OpenSSL

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Artifact:
    """One model file of a bundle, as its manifest lists it: which backend runs it in which
    precision, the bounds it is held to against PyTorch and the parity it showed. The build
    fills one in stage by stage; the runtime reads it back (`from_dict`)."""

    file: str  # relative to the bundle; an IR's weights sit beside it (.bin)
    backend: str
    precision: str
    bound: float  # the nominal bound on the max relative error against PyTorch
    bounds: dict[str, float] = field(default_factory=dict)  # per output: `bound`, raised to the reference's noise
    bound_metric: str = "max_rel"
    task_bounds: dict[str, Any] = field(default_factory=dict)  # INT8: task figure -> ["max" | "min", limit]
    judged_on: str = "golden"  # the set of golden.npz its parity is taken on
    parity: dict[str, Any] | None = None  # `runtime.compare.Parity.to_dict()` of the build's check
    plan: str | None = None  # INT8: the plan that shipped, and its calibration method
    method: str | None = None
    bytes: int | None = None  # size on disk, an IR's .bin included
    settings: dict[str, Any] = field(default_factory=dict)  # the backend's settings the build measured fastest

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.precision}"

    @property
    def files(self) -> tuple[str, ...]:
        """The bundle's files this artifact is made of."""
        return REGISTRY[self.backend].parts(self.file) if self.backend in REGISTRY else (self.file,)

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> "Artifact":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in entry.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The manifest's entry: its fields (those that apply) and the key readers look it up by."""
        entry = {"file": self.file, "backend": self.backend, "precision": self.precision, "key": self.key}
        entry.update((k, v) for k, v in asdict(self).items() if k not in entry and v not in (None, {}))
        return entry


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> "Bundle":
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"bundle {str(path)!r} is not a folder; expected a folder written by "
                            "`python -m export build` (it holds manifest.json)")
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise UserError(f"bundle {str(path)!r} has no {MANIFEST}; is it a build output folder?") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"bundle {str(path)!r}: {MANIFEST} is unreadable or truncated ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise UserError(f"bundle {str(path)!r} has manifest format {found}, this runtime reads format {FORMAT}; "
                            "rebuild it with this version of edge-export")
        for key in READ_BY_RUNTIME:
            if key not in manifest:
                raise UserError(f"bundle {str(path)!r}: {MANIFEST} lacks the {key!r} entry; "
                                "it was not written by this version of edge-export")
        return cls(path, manifest)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.manifest["spec"])

    @property
    def artifacts(self) -> list[Artifact]:
        return [Artifact.from_dict(entry) for entry in self.manifest["artifacts"]]

    def artifact(self, backend: str, precision: str) -> Artifact:
        check_choice("backend", backend, BACKENDS)
        for a in self.artifacts:
            if a.backend == backend and a.precision == precision:
                return a
        have = [a.precision for a in self.artifacts if a.backend == backend]
        why = next((r["reason"] for r in self.manifest.get("rejected", [])
                    if r["backend"] == backend and r["precision"] == precision), None)
        raise UserError(f"bundle {str(self.path)!r} has no {precision!r} artifact for {backend}"
                        + (f": the build made one and did not ship it ({why})" if why else "")
                        + f"; it has: {', '.join(have) or 'none'}")

    def check_files(self) -> list[str]:
        """Names of files whose sha256 differs from the manifest, or which are missing."""
        problems = []
        for name, expected in self.manifest["files"].items():
            file = self.path / name
            if not file.is_file():
                problems.append(f"{name} is missing")
            elif sha256(file) != expected:
                problems.append(f"{name} has changed (sha256 differs from the manifest)")
        return problems

    def choice_record(self, signature: str) -> dict[str, Any] | None:
        """Everything `runtime bench --choose` kept for a CPU with this signature (its choice, its figures,
        the settings it measured), or None."""
        try:
            chosen = json.loads((self.path / DEVICE_CHOICE).read_text()).get(signature)
        except (OSError, ValueError, AttributeError):
            return None
        return chosen if isinstance(chosen, dict) else None

    def device_choice(self, signature: str) -> dict[str, Any] | None:
        """What `runtime bench --choose` chose on a CPU with this signature, if it ran there and the
        artifact it chose is still in the bundle."""
        chosen = self.choice_record(signature)
        have = {(a.backend, a.precision) for a in self.artifacts}
        return chosen if chosen and (chosen.get("backend"), chosen.get("precision")) in have else None

    def settings_here(self, artifact: Artifact, signature: str) -> tuple[dict[str, Any], str]:
        """The backend settings to load `artifact` with on a CPU of this signature, and whose they are:
        measured on this kind of CPU by `bench --choose --tune` ("device"), else the build's where the
        build machine has this signature ("build"), else none: the backends' defaults. Settings measured
        on one machine under one load are not facts about the model, so they do not travel."""
        from .machine import cpu_signature

        tuned = ((self.choice_record(signature) or {}).get("settings") or {}).get(artifact.key)
        if tuned is not None:
            return dict(tuned), "device"
        machine = self.manifest.get("machine")
        if artifact.settings and (machine is None or cpu_signature(machine) == signature):
            return dict(artifact.settings), "build"
        return {}, "defaults"

    def record_device_choice(self, signature: str, choice: dict[str, Any]) -> Path:
        """Keep `choice` (backend, precision, the figures behind it) under `signature`, beside the
        hashed files; the choices of other CPUs stay."""
        from .files import atomic_file

        path = self.path / DEVICE_CHOICE
        try:
            choices = json.loads(path.read_text())
            choices = choices if isinstance(choices, dict) else {}
        except (OSError, ValueError):
            choices = {}
        choices[signature] = choice
        with atomic_file(path) as partial:
            partial.write_text(json.dumps(choices, indent=2) + "\n")
        return path

    def golden_sets(self) -> list[str]:
        """The sets of golden.npz: "golden"; "task" (held-out task samples INT8 is
        judged on); "truth" (the user's labelled images, with their labels); "size.HxW"
        (the golden inputs at another size, for dynamic sides)."""
        return list(self.manifest.get("golden", {}).get("sets", {"golden": 0}))

    def labels(self, name: str = "truth"):
        """The labels golden.npz stores beside a set's inputs (the labelled images of `build --data`)."""
        import numpy as np

        with np.load(self.path / GOLDEN) as data:
            return data[f"{name}.label"]

    def golden(self, name: str = "golden") -> tuple[dict[str, Any], dict[str, Any]]:
        """(inputs, reference outputs) of one set of golden.npz, stored at build time."""
        import numpy as np

        prefix = "" if name == "golden" else f"{name}."
        with np.load(self.path / GOLDEN) as data:
            inputs = {i: data[f"{prefix}input.{i}"] for i in self.spec.input_names}
            outputs = {o["name"]: data[f"{prefix}output.{o['name']}"] for o in self.manifest["outputs"]}
        return inputs, outputs
