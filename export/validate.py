"""Stage: run every artifact through the device runtime and compare with PyTorch."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from runtime.bundle import Artifact
from runtime.compare import Parity, Truth, check_artifact
from runtime.errors import backend_reason
from runtime.tasks import Task


def validate(runners: Mapping[str, Any], artifacts: Mapping[str, Artifact],
             sets: Mapping[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]], task: Task,
             truth: Truth | None = None) -> tuple[dict[str, Parity], dict[str, str]]:
    """Parity per artifact (keyed like `runners`), as `runtime.compare.check_artifact` judges it
    (with the labelled images' figures where the build has them); and the artifacts whose runtime
    refused to run them (a kernel that cannot prepare the converter's graph), with the runtime's words."""
    parity, refused = {}, {}
    for key, runner in runners.items():
        try:
            parity[key] = check_artifact(runner, artifacts[key], sets, task, truth)
        except Exception as err:  # noqa: BLE001 - said in the manifest and the build's output, never a traceback
            refused[key] = backend_reason(err)
    return parity, refused
