"""Accuracy on the user's own labelled images: folders as people keep them, bad files named and counted,
figures in each image's own pixels with intervals, every artifact in one table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import runtime
from models.tasks import pet_sample
from runtime.images import preprocess, upsampled_mask
from runtime.labelled import IGNORE, confusion, figures, read_label_map
from tests.test_cli import run
from tests.test_failures import one_line_exit_2

SIZE = (160, 120)  # the photos' own size (width, height): not the model's 128x128


def photos(count: int) -> list[Image.Image]:
    """Held-out pet pictures, resized to a photo size of their own."""
    return [Image.fromarray((np.transpose(pet_sample(i, "heldout")[0], (1, 2, 0)) * 255).astype(np.uint8))
            .resize(SIZE) for i in range(count)]


def predicted(bundle, image: Image.Image) -> np.ndarray:
    """ONNX Runtime FP32's mask of `image` at the image's own size."""
    opened = runtime.Bundle.open(bundle)
    with runtime.load(opened, "onnxruntime", "fp32") as runner:
        logits = runner.infer(preprocess(image, opened.spec))["logits"][0]
    return upsampled_mask(logits, image.size)


@pytest.fixture(scope="module")
def labelled(built, tmp_path_factory):
    """segnet-dsc, and 6 photos whose masks are ONNX Runtime FP32's own predictions (so that artifact
    must score 100%), the first with a band of ignored pixels; beside them one bad file of each kind."""
    bundle = built("segnet-dsc").bundle
    root = tmp_path_factory.mktemp("labelled")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    pictures = photos(6)
    for i, image in enumerate(pictures):
        mask = predicted(bundle, image).astype(np.uint8)
        if i == 0:
            mask[:10] = IGNORE
        image.save(root / "images" / f"pet{i}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"pet{i}.png")
    good = np.asarray(Image.open(root / "masks" / "pet1.png"))
    pictures[1].save(root / "images" / "small-mask.png")
    Image.fromarray(good[:60, :80]).save(root / "masks" / "small-mask.png")
    pictures[1].save(root / "images" / "class7.png")
    Image.fromarray(np.where(good == 1, 7, good).astype(np.uint8)).save(root / "masks" / "class7.png")
    pictures[2].save(root / "images" / "unlabelled.png")
    Image.fromarray(good).save(root / "masks" / "orphan.png")
    pictures[3].save(root / "images" / "truncated.jpg")
    data = (root / "images" / "truncated.jpg").read_bytes()
    (root / "images" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(good).save(root / "masks" / "truncated.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees
    pictures[4].save(root / "images" / "rotated.jpg", exif=exif)
    Image.fromarray(good).save(root / "masks" / "rotated.png")
    pictures[5].save(root / "images" / "rgb-mask.png")
    Image.fromarray(good).convert("RGB").save(root / "masks" / "rgb-mask.png")
    return bundle, root


SKIPPED = {
    "masks/small-mask.png": "is 80x60, its image 160x120",
    "masks/class7.png": "holds class 7, beyond the model's 3 classes (0-2; 255 is ignored)",
    "images/unlabelled.png": "has no mask (masks/unlabelled.png)",
    "masks/orphan.png": "is a mask without its image (no images/orphan.*)",
    "images/rotated.jpg": "is EXIF-rotated (orientation 6): its pixels are stored turned, so its mask cannot be "
                          "trusted to line up; save the photo upright",
    "masks/rgb-mask.png": "has image mode RGB, not class indices (a greyscale or palette PNG whose pixel values "
                          "are the classes)",
}


def test_every_artifact_is_scored_on_the_truth_and_every_bad_file_is_named_and_counted(labelled):
    bundle, root = labelled
    result = run("export", "evaluate", str(bundle), "--data", str(root), "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["images"] == 6 and found["reference"] == "onnxruntime fp32"
    skipped = {s["file"]: s["why"] for s in found["skipped"]}
    assert len(skipped) == 7
    assert {k: v for k, v in skipped.items() if k != "images/truncated.jpg"} == SKIPPED
    assert skipped["images/truncated.jpg"].startswith("is not a readable image (OSError: ")
    reference = found["artifacts"]["onnxruntime fp32"]
    # its own predictions are the truth: every figure is 100%, and the interval cannot leave it
    assert reference["miou"] == reference["pixel_accuracy"] == reference["mean_dice"] == 1.0
    assert reference["intervals"]["miou"] == [1.0, 1.0] and "miou_drop" not in reference
    for key, f in found["artifacts"].items():
        low, high = f["intervals"]["miou"]
        assert low <= f["miou"] <= high and 0 < f["miou"] <= 1 and len(f["iou"]) == 3
        if key != "onnxruntime fp32":
            assert f["miou_drop"] == pytest.approx(1.0 - f["miou"]) and f["miou"] > 0.9
    text = run("export", "evaluate", str(bundle), "--data", str(root)).stdout
    assert "on 6 labelled images of" in text and "onnxruntime fp32  100.00 [100.00, 100.00]" in text
    assert "skipped masks/class7.png: holds class 7" in text and "7 file(s) skipped, 6 image(s) scored" in text


def test_the_figures_come_from_the_summed_confusion_in_the_images_own_pixels():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, IGNORE]])
    guess = np.array([[0, 1, 1, 1], [0, 0, 2, 0]])
    c = confusion(truth, guess, 3)
    assert c.tolist() == [[3, 1, 0], [0, 2, 1], [0, 0, 0]]  # the ignored pixel is not counted
    f = figures(c)
    assert f["iou"] == [0.75, 0.5, 0.0] and f["miou"] == pytest.approx(1.25 / 3)
    assert f["pixel_accuracy"] == pytest.approx(5 / 7) and f["mean_dice"] == pytest.approx((6 / 7 + 4 / 6 + 0) / 3)


def test_pascal_voc_palette_masks_and_a_label_map_read_as_the_same_truth(labelled, tmp_path):
    """The same masks as Pascal VOC saves them (JPEGImages/, palette PNGs in SegmentationClass/), and as
    Cityscapes-style label ids 7, 8, 9 with a map to train ids: the same figures."""
    bundle, root = labelled
    voc, ids = tmp_path / "voc", tmp_path / "ids"
    for folder, (images, masks) in ((voc, ("JPEGImages", "SegmentationClass")), (ids, ("images", "masks"))):
        (folder / images).mkdir(parents=True)
        (folder / masks).mkdir()
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253
    for i in range(6):
        image, mask = Image.open(root / "images" / f"pet{i}.png"), np.asarray(Image.open(root / "masks" / f"pet{i}.png"))
        image.save(voc / "JPEGImages" / f"pet{i}.png")
        indexed = Image.fromarray(mask, "P")
        indexed.putpalette(palette)
        indexed.save(voc / "SegmentationClass" / f"pet{i}.png")
        image.save(ids / "images" / f"pet{i}.png")
        Image.fromarray(np.where(mask == IGNORE, 0, mask + 7).astype(np.uint8)).save(ids / "masks" / f"pet{i}.png")
    (tmp_path / "map.json").write_text(json.dumps({"7": 0, "8": 1, "9": 2}))  # 0, not named: ignored
    plain = json.loads(run("export", "evaluate", str(bundle), "--data", str(root), "--backend", "onnxruntime",
                           "--json").stdout)["artifacts"]
    for args in (["--data", str(voc)], ["--data", str(ids), "--label-map", str(tmp_path / "map.json")]):
        found = json.loads(run("export", "evaluate", str(bundle), *args, "--backend", "onnxruntime",
                               "--json").stdout)["artifacts"]
        assert found == plain


@pytest.mark.parametrize("args, message", [
    (["--data", "TMP/nowhere"], "error: --data 'TMP/nowhere' is not a folder; pass a folder with images/ and masks/ "
                                "(or Pascal VOC's JPEGImages/ and SegmentationClass/)"),
    (["--data", "TMP"], "error: --data 'TMP' holds neither images/ and masks/ nor Pascal VOC's JPEGImages/ and "
                        "SegmentationClass/ (masks matched to images by file stem)"),
    (["--data", "TMP/labelled", "--label-map", "TMP/map.json"],
     "error: --label-map 'TMP/map.json' is not a JSON object of whole numbers, label id to train id "
     '(e.g. {"7": 0, "8": 1})'),
    (["--ignore-index", "0"], "error: --ignore-index and --label-map are for --data: add --data DIR"),
])
def test_bad_data_options_are_refused_in_one_line(labelled, tmp_path, args, message):
    bundle, root = labelled
    (tmp_path / "labelled").symlink_to(root)
    (tmp_path / "map.json").write_text("[7, 0]")
    args = [a.replace("TMP", str(tmp_path)) for a in args]
    assert one_line_exit_2(run("export", "evaluate", str(bundle), *args)) == message.replace("TMP", str(tmp_path))


def test_a_detector_is_told_its_labels_are_not_read_yet(built, labelled):
    _, root = labelled
    bundle = built("dsc").bundle
    assert one_line_exit_2(run("export", "evaluate", str(bundle), "--data", str(root))) == (
        "error: --data reads segmentation masks (images/ and masks/, or Pascal VOC's folders); dsc is a "
        "'keypoints' model, whose labels it does not read yet")
