"""Stage: run every artifact through the device runtime and compare with PyTorch."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from runtime.compare import Parity, compare


def validate(runners: Mapping[str, Any], artifacts: Mapping[str, Mapping[str, Any]],
             sets: Mapping[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
             task: Mapping[str, Any]) -> dict[str, Parity]:
    """Parity per artifact (keyed like `runners`) on its set of inputs (`judged_on`:
    "golden" unless said otherwise), against its `bounds` and `task_bounds`."""
    parity = {}
    for key, runner in runners.items():
        inputs, reference = sets[artifacts[key].get("judged_on", "golden")]
        parity[key] = compare(reference, runner.infer(inputs), artifacts[key]["bounds"], task,
                              artifacts[key].get("task_bounds"))
    return parity
