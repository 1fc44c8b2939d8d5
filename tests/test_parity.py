"""Every registered variant x backend: the artifact matches PyTorch within its
bound, for a checkpoint whose norm statistics are far from the defaults."""

from __future__ import annotations

import pytest

import models
import runtime
from export import golden
from export.pipeline import artifact_entries
from export.contract import Exportable
from runtime.backends import DEFAULT_BACKENDS
from runtime.compare import BOUNDS, Truth, check_artifact
from runtime.tasks import task_of

# what a build makes by default, without --quantize (INT8 and LiteRT have their own tests)
ARTIFACTS = [(a.backend, a.precision) for a in artifact_entries(models.spec("dsc"), DEFAULT_BACKENDS)]


@pytest.mark.parametrize("backend, precision", ARTIFACTS, ids=[f"{b}-{p}" for b, p in ARTIFACTS])
@pytest.mark.parametrize("variant", models.list_variants())
def test_artifact_matches_pytorch(built, variant, backend, precision):
    result = built(variant)
    shipped = [a for a in result.manifest["artifacts"] if (a["backend"], a["precision"]) == (backend, precision)]
    if precision != "fp32" and not shipped:  # an optional precision may be dropped, never silently
        (rejected,) = [r for r in result.manifest["rejected"] if (r["backend"], r["precision"]) == (backend, precision)]
        assert "max relative error" in rejected["reason"] or "labelled images drops" in rejected["reason"]
        pytest.skip(f"{variant} {backend} {precision} not shipped: {rejected['reason']}")
    (entry,) = shipped
    # judged on labelled pictures (dsc carries some), FP16's tensor bound only catches a broken model
    judge = "truth" if precision != "fp32" and result.manifest.get("evaluation") else "golden"
    assert entry["judged_on"] == judge
    assert entry["bound"] == BOUNDS[(backend, precision if judge == "golden" else "int8")]
    noise = result.manifest["reference_noise"]["outputs"]
    assert entry["bounds"] == {k: max(entry["bound"], 2 * n) for k, n in noise.items()}
    assert entry["parity"]["passed"], entry["parity"]
    # and the same, replayed on the device side from the bundle alone
    bundle = runtime.Bundle.open(result.bundle)
    sets = {name: bundle.golden(name) for name in bundle.golden_sets()}
    with runtime.load(bundle, backend, precision, threads=2) as runner:
        parity = check_artifact(runner, bundle.artifact(backend, precision), sets, task_of(bundle.spec),
                                Truth.of_bundle(bundle))
    assert parity.passed, parity.failures()
    if judge == "truth":
        for name, value in entry["parity"]["truth"]["figures"].items():  # the scalar figures, per keypoint too
            assert parity.truth["figures"][name] == pytest.approx(value, abs=1e-3), name
    if precision == "fp32" and "keypoint_error_px" in parity.task:
        assert parity.task["keypoint_error_px"] < 0.01
    if precision == "fp32" and "mask_agreement" in parity.task:
        assert parity.task["mask_agreement"] > 0.999


@pytest.mark.parametrize("variant, low, high", [("dsc", 0.0, 2e-5), ("segnet", 1e-2, 0.5)])
def test_reference_noise_is_float32_rounding_unless_an_argmax_routes_values(checkpoint_for, variant, low, high):
    """The bound is raised only where PyTorch's own float32 result is that uncertain:
    SegNet's max-unpool flips near-ties under a one-ulp change of its input."""
    spec = models.spec(variant)
    model = Exportable(models.create(variant, checkpoint=checkpoint_for(variant)), spec).eval()
    inputs = golden.golden_inputs(spec, 2, seed=0)
    noise = golden.reference_noise(model, inputs, golden.reference_outputs(model, inputs))
    assert all(low <= n <= high for n in noise.values()), noise
