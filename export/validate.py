"""Stage: run every artifact through the device runtime and compare with PyTorch."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from runtime.compare import Parity, compare


def validate(runners: Mapping[str, Any], bounds: Mapping[str, float], inputs: dict[str, np.ndarray],
             reference: dict[str, np.ndarray], task: Mapping[str, Any]) -> dict[str, Parity]:
    """Parity per artifact (keyed like `runners`) on the golden inputs."""
    return {key: compare(reference, runner.infer(inputs), bounds[key], task) for key, runner in runners.items()}
