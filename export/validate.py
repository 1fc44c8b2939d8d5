"""Stage: run every artifact through the device runtime and compare with PyTorch."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from runtime.bundle import Artifact
from runtime.compare import Parity, Truth, check_artifact
from runtime.tasks import Task


def validate(runners: Mapping[str, Any], artifacts: Mapping[str, Artifact],
             sets: Mapping[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]], task: Task,
             truth: Truth | None = None) -> dict[str, Parity]:
    """Parity per artifact (keyed like `runners`), as `runtime.compare.check_artifact` judges it
    (with the labelled images' figures where the build has them)."""
    return {key: check_artifact(runner, artifacts[key], sets, task, truth) for key, runner in runners.items()}
