"""Accuracy on the user's own labelled images: folders as people keep them, bad files named and counted,
figures in each image's own pixels with intervals, every artifact in one table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import models
import runtime
from models.tasks import pet_sample
from runtime.bundle import DEVICE_CHOICE
from runtime.images import preprocess, upsampled_mask
from runtime.labelled import IGNORE, confusion
from runtime.tasks import mask_figures as figures, task_of
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
    # the PyTorch model, remade from the manifest (its checkpoint still where it was), is the reference
    assert found["images"] == 6 and found["reference"] == "pytorch fp32" and found["not_run"] == {}
    skipped = {s["file"]: s["why"] for s in found["skipped"]}
    assert len(skipped) == 7
    assert {k: v for k, v in skipped.items() if k != "images/truncated.jpg"} == SKIPPED
    assert skipped["images/truncated.jpg"].startswith("is not a readable image (OSError: ")
    own = found["artifacts"]["onnxruntime fp32"]
    # its own predictions are the truth: every figure is 100%, and the interval cannot leave it
    assert own["miou"] == own["pixel_accuracy"] == own["mean_dice"] == 1.0 and own["intervals"]["miou"] == [1.0, 1.0]
    reference = found["artifacts"]["pytorch fp32"]
    assert reference["miou"] > 0.9 and "miou_drop" not in reference and found["allowed_drop"] == 0.01
    for key, f in found["artifacts"].items():
        low, high = f["intervals"]["miou"]
        assert low <= f["miou"] <= high and 0 < f["miou"] <= 1 and len(f["iou"]) == 3
        if key != "pytorch fp32":
            assert f["miou_drop"] == pytest.approx(reference["miou"] - f["miou"]) and f["miou"] > 0.9
            assert f["passed"] == (f["miou_drop"] <= 0.01)
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


def test_a_detector_given_masks_is_told_which_labels_it_reads(built, labelled):
    _, root = labelled
    bundle = built("dsc").bundle
    assert one_line_exit_2(run("export", "evaluate", str(bundle), "--data", str(root))) == (
        f"error: --data {str(root)!r} holds no keypoint labels: expected images/ with annotations.json (COCO "
        "keypoints), keypoints.csv (image,keypoint,x,y) or keypoints.json")


MAX_DROP = 0.001  # a tenth of a point of mIoU: far above the FP32 artifacts' float noise


@pytest.fixture(scope="module")
def judged(checkpoint_for, tmp_path_factory):
    """unet-dsc built with INT8 and 8 labelled pictures at its input size whose masks are PyTorch's own
    predictions (so every pixel an artifact flips is a loss), judged by --max-drop miou=0.001."""
    import torch

    from export.pipeline import build
    from export.settings import BuildSettings

    root = tmp_path_factory.mktemp("truth")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    model = models.create("unet-dsc")
    model.load_state_dict(torch.load(checkpoint_for("unet-dsc")))
    model.eval()
    for i, image in enumerate(photos(8)):
        image = image.resize((128, 128))
        image.save(root / "images" / f"pet{i}.png")
        with torch.no_grad():
            logits = model(torch.from_numpy(preprocess(image, models.spec("unet-dsc"))))["logits"]
        Image.fromarray(logits[0].argmax(0).numpy().astype(np.uint8), "L").save(root / "masks" / f"pet{i}.png")
    out = tmp_path_factory.mktemp("judged")
    result = build(BuildSettings(variant="unet-dsc", checkpoint=checkpoint_for("unet-dsc"), out=out,
                                 quantize="int8", int8_anyway=True, int8_budget=6, calib_samples=8, data=root,
                                 eval_samples=8, max_drop={"miou": MAX_DROP}, warmup=2, runs=10, tune_budget=0,
                                 memory=False))
    return result, root


def test_the_labels_judge_what_ships_and_ride_in_the_bundle(judged):
    """FP16 and INT8 are held to the drop from PyTorch FP32 on the labelled images, not to agreement with it:
    an attempt that loses more is refused whatever its agreement; the figures ride in the bundle."""
    result, root = judged
    assert result.passed, result.failures
    m = result.manifest
    e = m["evaluation"]
    assert e["images"] == 8 and e["available"] == 8 and e["skipped"] == [] and e["size"] == [128, 128]
    assert e["max_drop"] == {"miou": MAX_DROP} and e["reference"]["miou"] > 0.999  # its own predictions
    assert "truth" in m["golden"]["sets"] and "task" not in m["golden"]["sets"]  # no generated task set needed
    every = m["artifacts"] + m["rejected"]
    for a in every:
        truth = a["parity"]["truth"]
        assert truth["images"] == 8 and truth["reference"] == e["reference"]
        assert truth["drop"]["miou"] == pytest.approx(e["reference"]["miou"] - truth["figures"]["miou"])
        if a["precision"] == "fp32":
            assert a["judged_on"] == "golden" and truth["drop"]["miou"] <= MAX_DROP
        else:  # judged on the labels alone: no agreement bound, a tensor bound that only catches a broken model
            assert a["judged_on"] == "truth" and "task_bounds" not in a and a["bound"] == 1.0
            assert (a in m["artifacts"]) == (truth["drop"]["miou"] <= MAX_DROP) or a["precision"] == "int8"
    for backend, found in m["quantization"]["search"].items():
        assert found["attempts"][0]["parity"]["truth"]["drop"]["miou"] > MAX_DROP  # the full plan flips pixels
        for attempt in found["attempts"]:
            drop = attempt["parity"]["truth"]["drop"]["miou"]
            assert "mask_agreement" in attempt["task"]  # agreement is still measured, and does not decide
            if drop > MAX_DROP:
                assert not attempt["passed"] and any(
                    p.startswith("miou ") and f"drops {drop:.4f} from PyTorch FP32's {e['reference']['miou']:.4f}, "
                    f"more than the allowed {MAX_DROP:g}" in p for p in attempt["problems"]), attempt["problems"]
        shipped = [a for a in found["attempts"] if a["shipped"]]
        assert all(a["parity"]["truth"]["drop"]["miou"] <= MAX_DROP for a in shipped)
    report = (result.bundle / "report.md").read_text()
    assert "## Accuracy on the labelled images" in report and "allowed drop miou 0.001" in report
    assert "labels.png" in m["files"] and "](labels.png)" in report  # each class's IoU, artifact by artifact
    assert len(e["reference"]["iou"]) == 3 and all(len(a["parity"]["truth"]["figures"]["iou"]) == 3 for a in every)
    # on the device: the same figures from the bundle alone, every artifact within the allowance
    checked = run("runtime", "verify", str(result.bundle), "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for a in json.loads(checked.stdout)["artifacts"]:
        built_with = next(x for x in m["artifacts"] if x["key"] == f"{a['backend']}/{a['precision']}")
        assert a["truth"]["figures"]["miou"] == pytest.approx(built_with["parity"]["truth"]["figures"]["miou"],
                                                              abs=1e-3)
        assert a["max_drop"] == {"miou": MAX_DROP}
    text = run("runtime", "verify", str(result.bundle)).stdout
    assert f"ok    8 labelled images in the bundle; PyTorch FP32 on them: miou {e['reference']['miou']:.4f}" in text


def test_bench_choose_leaves_out_every_artifact_that_loses_more_than_the_allowance_on_the_labels(judged, tmp_path):
    """The device chooses only among artifacts within the allowed drop on the bundle's labelled images. The
    same bundle with an allowance no artifact can meet (each must gain a whole point of mIoU over PyTorch):
    nothing is timed, and the one line names each artifact and its figure on the labels."""
    import shutil

    result, _ = judged
    bundle = tmp_path / "bundle"
    shutil.copytree(result.bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["evaluation"]["max_drop"] = {"miou": -1.0}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    chose = run("runtime", "bench", str(bundle), "--choose", "--runs", "5", "--warmup", "1")
    line = one_line_exit_2(chose)
    assert line.startswith(f"error: no artifact of {manifest['name']} runs within its bounds here: "), line
    for a in manifest["artifacts"]:
        assert f"{a['backend']} {a['precision']}: miou " in line
    assert line.count("more than the allowed -1") == len(manifest["artifacts"]), line
    assert not (bundle / DEVICE_CHOICE).exists()  # nothing chosen


def test_an_artifact_is_held_to_the_allowed_drop_from_pytorchs_figures_on_the_labels():
    """Two pixels of 16 flipped from PyTorch's masks, on labels PyTorch matches but for one pixel: the drop
    is counted against PyTorch's own figures, and one over the allowance fails in one line."""
    from runtime.compare import Parity, Truth, truth_text

    task = task_of(models.spec("unet-dsc"))
    labels = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 1, -1]]])  # -1: not scored
    pytorch = labels.copy()
    pytorch[0, 0, 0] = 1
    ours = pytorch.copy()
    ours[0, 1, 0], ours[0, 2, 0] = 1, 0

    def logits(mask):
        return {"logits": np.eye(3)[np.where(mask < 0, 0, mask)].transpose(0, 3, 1, 2)}

    truth = Truth.of(labels, logits(pytorch), task, {"miou": 0.05})
    assert truth.reference["pixel_accuracy"] == pytest.approx(14 / 15)
    judged = truth.judge(task, logits(ours))
    assert judged["images"] == 1 and judged["figures"]["pixel_accuracy"] == pytest.approx(12 / 15)
    drop = truth.reference["miou"] - judged["figures"]["miou"]
    assert judged["drop"]["miou"] == pytest.approx(drop) and drop > 0.05
    parity = Parity([], truth=judged, max_drop={"miou": 0.05})
    assert not parity.passed and parity.failures() == [
        f"miou {judged['figures']['miou']:.4f} on the 1 labelled images drops {drop:.4f} from PyTorch FP32's "
        f"{truth.reference['miou']:.4f}, more than the allowed 0.05"]
    assert Parity([], truth=judged, max_drop={"miou": 0.5}).passed
    assert truth_text(judged, {"miou": 0.05}) == f"miou {judged['figures']['miou']:.4f} ({-drop:+.4f})"


def test_a_detectors_figures_on_the_labels_count_each_keypoints_error_in_pixels_and_bin_them():
    """Keypoints at known distances from their labels: the mean error, PCK (within 5% of the side) and the
    histogram's counts follow from them; a keypoint without a label (NaN) is not counted."""
    task = task_of(models.spec("dsc"))
    k, side = len(task.names), task.image_size
    targets = np.zeros((2, k, 2))
    targets[1, 0] = np.nan  # not labelled
    errors_px = np.linspace(0.5, 80, 2 * k).reshape(2, k)  # along x, in pixels of the input
    outputs = {task.output: (targets + np.stack([errors_px * 2 / side, np.zeros_like(errors_px)], -1))}
    found = task.metrics(targets, outputs)
    scored = np.delete(errors_px.ravel(), k)
    assert found["keypoint_error_px"] == pytest.approx(scored.mean())
    assert found["pck"] == pytest.approx((scored <= 0.05 * side).mean())
    assert found["error_px_per_keypoint"][0] == pytest.approx(errors_px[0, 0])  # its one labelled figure
    assert sum(found["error_px_histogram"]) == 2 * k - 1
    assert found["error_px_histogram"] == np.histogram(scored, [*task.ERROR_BINS_PX, np.inf])[0].tolist()
    assert found["error_px_histogram"][-1] == (scored >= task.ERROR_BINS_PX[-1]).sum() > 0  # the open last bin


def figure_pictures(count: int) -> list[Image.Image]:
    """Held-out figures of the keypoint task, 256 px."""
    from models.tasks import keypoint_sample

    return [Image.fromarray((np.transpose(keypoint_sample(i, "heldout")[0], (1, 2, 0)) * 255).astype(np.uint8))
            for i in range(count)]


@pytest.fixture(scope="module")
def keypoint_labels(built, tmp_path_factory):
    """dsc, and 6 pictures whose COCO annotations are ONNX Runtime FP32's own keypoints (so that artifact
    must score PCK 100%, no error and OKS AP 1), listed in another order than the model's; beside them one
    bad file or annotation of each kind. The same labels as a plain keypoints.csv in a second folder."""
    from runtime.images import keypoints_px

    bundle = built("dsc").bundle
    opened = runtime.Bundle.open(bundle)
    names = task_of(opened.spec).names
    order = names[::-1]  # the annotations name the keypoints; their order is the file's own
    root, plain = tmp_path_factory.mktemp("coco"), tmp_path_factory.mktemp("plain")
    for folder in (root, plain):
        (folder / "images").mkdir()
    images, annotations, rows = [], [], ["image,keypoint,x,y"]
    pictures = figure_pictures(8)
    with runtime.load(opened, "onnxruntime", "fp32") as runner:
        for i, picture in enumerate(pictures[:6]):
            xy = keypoints_px(runner.infer(preprocess(picture, opened.spec))["value"][0], 256, 256)
            for folder in (root, plain):
                picture.save(folder / "images" / f"fig{i}.png")
            images.append({"id": i, "file_name": f"fig{i}.png", "width": 256, "height": 256})
            annotations.append({"id": 100 + i, "image_id": i, "category_id": 1,
                                "keypoints": [v for n in order for v in (*xy[names.index(n)].round(4), 2)]})
            rows += [f"fig{i}.png,{n},{xy[k][0]:.4f},{xy[k][1]:.4f}" for k, n in enumerate(names)]
    bad = annotations[0]["keypoints"]
    images += [{"id": 10, "file_name": "missing.png", "width": 256, "height": 256},
               {"id": 11, "file_name": "unannotated.png", "width": 256, "height": 256},
               {"id": 12, "file_name": "two.png", "width": 256, "height": 256},
               {"id": 13, "file_name": "truncated.jpg", "width": 256, "height": 256},
               {"id": 14, "file_name": "rotated.jpg", "width": 256, "height": 256},
               {"id": 15, "file_name": "resized.png", "width": 300, "height": 256},
               {"id": 16, "file_name": "outside.png", "width": 256, "height": 256}]
    annotations += [{"id": 110 + i, "image_id": image_id, "category_id": 1, "keypoints": bad}
                    for i, image_id in enumerate((10, 12, 12, 13, 14, 15))]
    annotations.append({"id": 120, "image_id": 16, "category_id": 1, "keypoints": [300, 20, 2] + bad[3:]})
    annotations.append({"id": 121, "image_id": 99, "category_id": 1, "keypoints": bad})
    for name in ("unannotated.png", "two.png", "resized.png", "outside.png", "stray.png"):
        pictures[6].save(root / "images" / name)
    pictures[7].save(root / "images" / "truncated.jpg")
    data = (root / "images" / "truncated.jpg").read_bytes()
    (root / "images" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    exif = Image.Exif()
    exif[0x0112] = 6
    pictures[7].save(root / "images" / "rotated.jpg", exif=exif)
    (root / "annotations.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "figure", "keypoints": order, "skeleton": []}]}))
    (plain / "keypoints.csv").write_text("\n".join(rows) + "\n")
    return bundle, root, plain


KEYPOINT_SKIPPED = {
    "images/stray.png": "has no keypoint labels",
    "images/missing.png": "is annotated in annotations.json but is not there",
    "images/unannotated.png": "has no keypoint annotation",
    "images/two.png": "has 2 annotated figures; the model finds one per image",
    "annotations.json annotation 121": "names image id 99, which its images do not list",
    "images/rotated.jpg": "is EXIF-rotated (orientation 6): its pixels are stored turned, so its keypoints cannot "
                          "be trusted to line up; save the photo upright",
    "images/resized.png": "is 256x256, its annotations say 300x256",
    "images/outside.png": "labels keypoint l_knee at (300, 20), outside the 256x256 image",  # the file lists it first
}


def test_keypoints_are_scored_on_coco_annotations_and_every_bad_one_is_named_and_counted(keypoint_labels):
    bundle, root, plain = keypoint_labels
    result = run("export", "evaluate", str(bundle), "--data", str(root), "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["images"] == 6 and found["task"] == "keypoints" and found["reference"] == "pytorch fp32"
    skipped = {s["file"]: s["why"] for s in found["skipped"]}
    assert len(skipped) == 9 and skipped["images/truncated.jpg"].startswith("is not a readable image (OSError: ")
    assert {k: v for k, v in skipped.items() if k != "images/truncated.jpg"} == KEYPOINT_SKIPPED
    own = found["artifacts"]["onnxruntime fp32"]
    # its own keypoints are the truth (to 4 decimals): every one found, OKS AP 1 through pycocotools
    assert own["pck"] == 1.0 and own["keypoint_error_px"] < 1e-3 and own["keypoints"] == 60
    assert own["intervals"]["pck"] == [1.0, 1.0] and own["oks_ap"] == pytest.approx(1.0)
    reference = found["artifacts"]["pytorch fp32"]
    assert reference["pck"] == 1.0 and reference["keypoint_error_px"] < 1e-3  # FP32 agrees to 1e-4 px
    for key, f in found["artifacts"].items():
        low, high = f["intervals"]["keypoint_error_px"]
        assert low <= f["keypoint_error_px"] <= high and 0 <= f["pck"] <= 1 and 0 <= f["oks_ap"] <= 1
        if key != "pytorch fp32":
            assert f["pck_drop"] == pytest.approx(1.0 - f["pck"])
    text = run("export", "evaluate", str(bundle), "--data", str(root)).stdout
    assert "dsc on 6 labelled images of" in text and "PCK@0.05 of the image's larger side" in text
    assert "onnxruntime fp32  100.00 [100.00, 100.00]" in text and "9 file(s) skipped, 6 image(s) scored" in text
    # the same labels as a plain CSV: the same figures (no OKS without COCO annotations)
    csv = json.loads(run("export", "evaluate", str(bundle), "--data", str(plain), "--json").stdout)
    assert csv["images"] == 6 and csv["skipped"] == []
    for key, f in csv["artifacts"].items():
        coco = found["artifacts"][key]
        assert f["pck"] == coco["pck"] and f["keypoint_error_px"] == pytest.approx(coco["keypoint_error_px"], abs=1e-3)
        assert "oks_ap" not in f


@pytest.mark.parametrize("labels, message", [
    ("keypoints.csv:image,keypoint,x\nfig0.png,head,3", "error: keypoints.csv is not a CSV with columns image, "
                                                       "keypoint, x, y: KeyError: 'y'"),
    ("keypoints.json:" + json.dumps({"fig0.png": {"nose": [1, 2]}}),
     "error: keypoints.json labels the keypoints nose; the model finds head, neck, pelvis, l_hand, r_hand, l_foot, "
     "r_foot, l_elbow, r_elbow, l_knee (name them alike)"),
    ("annotations.json:[]", "error: annotations.json is not COCO keypoint JSON (images, annotations and categories "
                            "with keypoints): TypeError: list indices must be integers or slices, not str"),
])
def test_unreadable_keypoint_labels_are_refused_in_one_line(keypoint_labels, tmp_path, labels, message):
    bundle, root, _ = keypoint_labels
    name, text = labels.split(":", 1)
    (tmp_path / "images").symlink_to(root / "images")
    (tmp_path / name).write_text(text)
    assert one_line_exit_2(run("export", "evaluate", str(bundle), "--data", str(tmp_path))) == message


def test_without_its_checkpoint_the_pytorch_row_says_why_and_onnx_runtime_is_the_reference(keypoint_labels,
                                                                                          tmp_path):
    import shutil

    from export.manifest import update_manifest

    bundle, root, _ = keypoint_labels
    moved = tmp_path / "dsc"
    shutil.copytree(bundle, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    update_manifest(moved, checkpoint={**manifest["checkpoint"], "path": str(tmp_path / "gone.pt")})
    found = json.loads(run("export", "evaluate", str(moved), "--data", str(root), "--json").stdout)
    assert found["not_run"] == {"pytorch fp32": f"its checkpoint {tmp_path / 'gone.pt'} is not here"}
    assert found["reference"] == "onnxruntime fp32" and "pytorch fp32" not in found["artifacts"]
