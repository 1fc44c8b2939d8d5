"""Every registered variant x backend: the artifact matches PyTorch within its
bound, for a checkpoint whose norm statistics are far from the defaults."""

from __future__ import annotations

import pytest

import models
import runtime
from runtime.compare import BOUNDS

ARTIFACTS = sorted(BOUNDS)


@pytest.mark.parametrize("backend, precision", ARTIFACTS, ids=[f"{b}-{p}" for b, p in ARTIFACTS])
@pytest.mark.parametrize("variant", models.list_variants())
def test_artifact_matches_pytorch(built, variant, backend, precision):
    result = built(variant)
    entry = next(a for a in result.manifest["artifacts"] if (a["backend"], a["precision"]) == (backend, precision))
    assert entry["bound"] == BOUNDS[(backend, precision)]
    assert entry["parity"]["passed"], entry["parity"]
    # and the same, replayed on the device side from the bundle alone
    bundle = runtime.Bundle.open(result.bundle)
    inputs, reference = bundle.golden()
    with runtime.load(bundle, backend, precision, threads=2) as runner:
        parity = runtime.compare(reference, runner.infer(inputs), entry["bound"], bundle.manifest["task"])
    assert parity.passed, parity.failures()
    if precision == "fp32":
        assert parity.task["keypoint_error_px"] < 0.01
