"""Model figures against the published ones (and the counts `export list` shows),
and the exported formulation against FOMM's original one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchinfo import summary

import models
from models.hourglass import AntiAliasDownsample, coordinate_grid
from runtime.errors import UserError

from .conftest import perturb_


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("variant", models.list_variants())
def test_stored_counts_are_what_torchinfo_counts(variant):
    """`python -m export list` shows models/counts.py without building a model: it must stay true."""
    from export.stats import model_stats
    from models.counts import COUNTS

    stats = model_stats(models.create(variant), models.get_variant(variant).config.input_shape)
    assert COUNTS[variant] == (stats["params"], stats["mult_adds"])


@pytest.mark.parametrize("variant, hourglass, whole", [
    ("baseline", 14_129_568, 14_215_368),
    ("dsc", 1_616_958, 1_702_758),
])
def test_parameter_counts_match_reference(variant, hourglass, whole):
    model = models.create(variant)
    assert n_params(model.predictor) == hourglass
    assert n_params(model) == whole
    assert models.get_variant(variant).reference["params"] == whole


def test_baseline_per_block_figures_match_reference():
    encoder = models.create("baseline").predictor.encoder
    assert [n_params(b) for b in encoder.down_blocks] == [1_920, 74_112, 295_680, 1_181_184, 4_721_664]
    decoder = models.create("baseline").predictor.decoder
    assert [n_params(b) for b in decoder.up_blocks] == [4_720_128, 2_360_064, 590_208, 147_648, 36_960]


@pytest.mark.parametrize("variant, mult_adds", [("baseline", 989_312_832), ("dsc", 121_952_064)])
def test_hourglass_mult_adds_as_torchinfo_counts(variant, mult_adds):
    hourglass = models.create(variant).predictor
    assert summary(hourglass, input_size=(1, 3, 64, 64), verbose=0).total_mult_adds == mult_adds


def test_detector_outputs():
    out = models.create("dsc")(torch.rand(2, 3, 256, 256))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "value": (2, 10, 2), "jacobian": (2, 10, 2, 2), "heatmap": (2, 10, 58, 58)}
    assert out["value"].abs().max() <= 1
    torch.testing.assert_close(out["heatmap"].sum(dim=(2, 3)), torch.ones(2, 10))
    # untrained Jacobian head: zero weights, identity bias
    torch.testing.assert_close(out["jacobian"], torch.eye(2).expand(2, 10, 2, 2))


def test_stride4_blur_equals_full_resolution_blur_then_subsampling():
    """FOMM's AntiAliasInterpolation2d: pad 6, 13x13 blur at 256x256, keep every 4th pixel."""
    down = AntiAliasDownsample(3, 0.25)
    assert tuple(down.weight.shape) == (3, 1, 13, 13)
    x = torch.rand(2, 3, 256, 256)
    reference = F.conv2d(F.pad(x, (6, 6, 6, 6)), down.weight, groups=3)[:, :, ::4, ::4]
    torch.testing.assert_close(down(x), reference, rtol=0, atol=1e-6)
    assert down(x).shape == (2, 3, 64, 64)


def fomm_heads(model, x):
    """FOMM's KPDetector.forward written as in its repository (broadcast multiply-and-sum)."""
    feature_map = model.predictor(model.down(x))
    prediction = model.kp(feature_map)
    b, k, h, w = prediction.shape
    heatmap = F.softmax(prediction.view(b, k, -1) / 0.1, dim=2).view(b, k, h, w)
    grid = coordinate_grid(h, w).view(1, 1, h, w, 2)
    value = (heatmap.unsqueeze(-1) * grid).sum(dim=(2, 3))
    jacobian_map = model.jacobian(feature_map).reshape(b, k, 4, h, w)
    jacobian = (heatmap.unsqueeze(2) * jacobian_map).view(b, k, 4, -1).sum(dim=-1).view(b, k, 2, 2)
    return {"value": value, "jacobian": jacobian, "heatmap": heatmap}


def test_contractions_equal_fomm_formulation():
    model = perturb_(models.create("dsc"))
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        ours, theirs = model(x), fomm_heads(model, x)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


def test_grid_is_x_then_y_in_minus_one_to_one():
    grid = coordinate_grid(3, 5).view(3, 5, 2)
    assert grid[0, 0].tolist() == [-1, -1] and grid[0, -1].tolist() == [1, -1] and grid[-1, 0].tolist() == [-1, 1]


def test_fomm_parameter_names():
    keys = models.create("baseline").state_dict()
    for key in ("down.weight", "kp.weight", "jacobian.bias", "predictor.encoder.down_blocks.0.conv.weight",
                "predictor.decoder.up_blocks.4.norm.running_var"):
        assert key in keys


def test_checkpoint_round_trip_and_wrappings(tmp_path):
    model = perturb_(models.create("dsc"), seed=3)
    state = model.state_dict()
    x = torch.rand(1, 3, 256, 256)
    expected = model(x)["value"]
    for i, wrapped in enumerate([state, {"state_dict": state}, {"model": state},
                                 {"module." + k: v for k, v in state.items()}]):
        torch.save(wrapped, tmp_path / f"{i}.pt")
        loaded = models.create("dsc", checkpoint=tmp_path / f"{i}.pt")
        assert not loaded.training
        torch.testing.assert_close(loaded(x)["value"], expected)


def test_checkpoint_of_another_variant_names_the_keys(tmp_path):
    torch.save(models.create("baseline").state_dict(), tmp_path / "b.pt")
    with pytest.raises(UserError, match=r"does not fit this variant: missing keys: .*depthwise"):
        models.create("dsc", checkpoint=tmp_path / "b.pt")


def test_unknown_variant_lists_valid_names():
    with pytest.raises(UserError, match=r"unknown variant 'nope'; valid: .*baseline.*dsc"):
        models.create("nope")


WITH_REFERENCE = [v for v in models.list_variants() if "params" in models.get_variant(v).reference]


@pytest.mark.parametrize("variant", WITH_REFERENCE)
def test_every_reference_parameter_count(variant):
    """The reference architectures' exact counts (ESNet with the reference code's shared
    BatchNorm, LEDNet as its reference code builds it)."""
    assert n_params(models.create(variant)) == models.get_variant(variant).reference["params"]


def test_reference_covers_the_issue_figures():
    expected = {"baseline": 14_215_368, "dsc": 1_702_758, "erfnet": 2_064_191, "edanet": 689_485,
                "esnet": 1_659_071, "lednet": 922_821, "segnet": 15_274_892, "segnet-dsc": 1_749_671}
    assert {v: models.get_variant(v).reference["params"] for v in expected} == expected


@pytest.mark.parametrize("variant, giga", [("segnet", 9.12), ("segnet-dsc", 1.08)])
def test_pet_mult_adds_at_128(variant, giga):
    assert round(summary(models.create(variant), input_size=(1, 3, 128, 128), verbose=0).total_mult_adds / 1e9, 2) == giga


def test_layer_swaps_as_the_seed_defines_them():
    from models import layers

    up, conv = layers.upsample("transpose", 1024, 512)
    assert n_params(conv) == 4_719_104 == n_params(layers.upsample("interp", 1024, 512)[1])
    assert n_params(layers.norm("layer", 1024, (2, 2))) == 8_192
    assert n_params(layers.norm("batch", 1024)) == n_params(layers.norm("instance", 1024)) == 2_048
    group = layers.norm("group", 1024)
    assert group.num_groups == 512 and n_params(group) == 2_048
    assert n_params(models.create("transpose").predictor) == 14_129_568
    assert n_params(layers.conv("asym", 64, 64)) == 2 * (64 * 64 * 3 + 64)


def test_dsc_deep_wins_back_capacity_and_dsc_lite_has_separable_heads():
    dsc, deep, lite = (n_params(models.create(v).predictor) for v in ("dsc", "dsc-deep", "dsc-lite"))
    assert dsc == lite == 1_616_958 and deep == 5_186_174
    heads = n_params(models.create("dsc-lite")) - lite
    assert heads == 5_300  # kp: 35*49 + 35 + 35*10 + 10; jacobian: 35*49 + 35 + 35*40 + 40


@pytest.mark.parametrize("variant", ["kp-erfnet", "kp-edanet", "kp-esnet", "kp-lednet"])
def test_encoder_decoder_detectors_feed_the_unchanged_heads(variant):
    model = models.create(variant)
    assert model.predictor.out_filters == 35
    assert n_params(model.kp) + n_params(model.jacobian) == 17_160 + 68_640
    out = model(torch.rand(1, 3, 256, 256))
    assert tuple(out["heatmap"].shape) == (1, 10, 58, 58)


def test_lednet_follows_the_input_size():
    model = models.create("lednet", height=64, width=96)
    assert tuple(model(torch.rand(1, 3, 64, 96))["logits"].shape) == (1, 19, 64, 96)


def test_random_init_is_the_same_every_time():
    a, b = models.create("dsc"), models.create("dsc")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_overrides_are_checked():
    assert models.resolve("baseline", conv="dsc", norm="group").norm == "group"
    with pytest.raises(UserError, match="unknown norm kind 'weight'; valid: batch, layer, instance, group"):
        models.resolve("baseline", norm="weight")
    with pytest.raises(UserError, match="variant 'segnet' has no setting 'norm'"):
        models.resolve("segnet", norm="group")
