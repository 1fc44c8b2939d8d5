"""Parameters and mult-adds of every registered variant at its default input
size, as torchinfo counts them (batch 1): what `python -m export list` shows
without building a model. tests/test_models.py recounts every variant and
fails when one of these differs; `python -m export list --counts` recounts too.
"""

# variant: (parameters, mult-adds)
COUNTS: dict[str, tuple[int, int]] = {
    "baseline": (14_215_368, 1_277_944_032),
    "dsc": (1_702_758, 410_583_264),
    "asym": (10_042_344, 934_248_672),
    "layernorm": (15_733_128, 1_279_461_792),
    "instancenorm": (14_215_368, 1_277_944_032),
    "groupnorm": (14_215_368, 1_277_944_032),
    "transpose": (14_215_368, 1_277_944_032),
    "dsc-deep": (5_271_974, 637_071_200),
    "dsc-lite": (1_622_258, 139_781_264),
    "kp-erfnet": (2_151_031, 526_705_504),
    "kp-edanet": (782_501, 358_495_274),
    "kp-esnet": (1_745_911, 506_715_424),
    "kp-lednet": (1_012_813, 377_169_391),
    "erfnet": (2_064_191, 7_481_858_496),
    "edanet": (689_485, 2_220_762_570),
    "esnet": (1_659_071, 6_842_225_536),
    "lednet": (922_821, 2_828_679_595),
    "segnet": (15_274_892, 9_116_329_484),
    "segnet-dsc": (1_749_671, 1_077_667_340),
    "unet": (31_037_763, 13_656_583_680),
    "unet-dsc": (5_988_382, 3_507_105_280),
}
