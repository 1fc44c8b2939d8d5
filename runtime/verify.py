"""On-device parity: check every file's sha256, then replay the golden vectors
through every artifact on every installed backend, against the stored bounds; where
the bundle carries labelled images (`build --data`), each artifact's task figures
against their labels too, held to the drop from PyTorch's the build allowed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bundle import Artifact, Bundle
from .compare import Parity, Truth, check_artifact
from .errors import BackendError, UserError, backend_reason
from .runners import installed_backends, load
from .tasks import task_of


@dataclass
class ArtifactCheck:
    """One artifact's verdict: its parity, or why it was not checked (`skipped`), or the
    backend's own reason it could not be loaded or run here (`error`: a failure)."""

    artifact: Artifact
    parity: Parity | None = None
    skipped: str = ""
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.parity is not None and self.parity.passed and not self.error


@dataclass
class Verification:
    bundle: Path
    bundle_files: list[str] = field(default_factory=list)
    file_problems: list[str] = field(default_factory=list)
    checks: list[ArtifactCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        ran = [c for c in self.checks if not c.skipped]
        return not self.file_problems and bool(ran) and all(c.passed for c in ran)

    def to_dict(self, task=None) -> dict[str, Any]:
        """What `verify --json` prints (and `export deploy` reads back from a device)."""
        def check(c: ArtifactCheck) -> dict[str, Any]:
            a = c.artifact
            entry = {"file": a.file, "backend": a.backend, "precision": a.precision}
            if c.skipped:
                return {**entry, "status": "skipped", "why": c.skipped}
            if c.error:
                return {**entry, "status": "FAIL", "why": c.error, "failures": [c.error]}
            worst = c.parity.worst
            found = {**entry, "status": "pass" if c.passed else "FAIL", "max_rel": worst.max_rel,
                     "worst_output": worst.name, "bound": worst.bound, "failures": c.parity.failures(),
                     "task": task.describe(c.parity.task) if task else c.parity.task}
            return {**found, "truth": c.parity.truth, "max_drop": dict(c.parity.max_drop)} if c.parity.truth else found
        return {"bundle": str(self.bundle), "passed": self.passed, "files": len(self.bundle_files),
                "file_problems": self.file_problems, "artifacts": [check(c) for c in self.checks]}


def verify(bundle: str | Path | Bundle, threads: int | None = None) -> Verification:
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    result = Verification(bundle.path, list(bundle.manifest["files"]), bundle.check_files())
    broken = {p.split(" ", 1)[0] for p in result.file_problems}
    sets, truth = {}, None
    if "golden.npz" not in broken:
        for name in bundle.golden_sets():
            sets[name] = bundle.golden(name)
        truth = Truth.of_bundle(bundle)
    have = installed_backends()
    task = task_of(bundle.spec)
    for art in bundle.artifacts:
        check = ArtifactCheck(art)
        result.checks.append(check)
        if art.backend not in have:
            check.skipped = f"{art.backend} is not installed"
        elif not sets:
            check.skipped = "golden.npz is missing or changed"
        elif broken & set(art.files):
            check.skipped = "its file is missing or changed"
        else:
            try:  # a backend that cannot compile or run the artifact on this CPU fails it, with its reason
                with load(bundle, art.backend, art.precision, threads) as runner:
                    check.parity = check_artifact(runner, art, sets, task, truth)
            except BackendError as err:
                check.error = str(err)
            except UserError:
                raise
            except Exception as err:  # noqa: BLE001 (the backends raise RuntimeError and their own types)
                check.error = f"{art.backend} cannot run {art.file} ({art.precision}) here: {backend_reason(err)}"
    return result
