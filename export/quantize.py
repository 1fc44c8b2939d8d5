"""Stage: INT8 post-training quantization, calibrated on the same images for both backends.

- ONNX Runtime: `quant_pre_process`, then static QDQ quantization with
  per-channel weights and the chosen calibration method -> `model.int8.onnx`.
- OpenVINO: NNCF post-training quantization of the FP32 IR ->
  `openvino/model.int8.xml|bin`.

A plan says what stays in FP32: the full plan quantizes everything the tools
quantize by default; the selective plan keeps in FP32 the depthwise
convolutions (slow in INT8 on CPUs without VNNI), the heads (the convolutions
whose outputs are reshaped or returned: a keypoint heatmap goes through a
softmax at temperature 0.1, which magnifies any rounding of its logits) and
the keypoint extraction (softmax and the contractions after it). The pipeline tries the full plan first and
the selective one where the full plan is slower than FP32 or too inaccurate.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.errors import UserError
from runtime.spec import ModelSpec

from .quiet import quiet

CALIB_METHODS = ("minmax", "entropy", "percentile")
PLANS = ("full", "selective")
ONNX_INT8 = "model.int8.onnx"
OPENVINO_INT8 = "openvino/model.int8.xml"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# op types kept in FP32 by the selective plan, besides depthwise convolutions
KEEP_FP32 = ("Softmax", "MatMul", "Div")


def check_calib_dir(path: Path) -> list[Path]:
    """The images of a calibration folder, or a UserError naming the problem."""
    if not path.is_dir():
        raise UserError(f"--calib-dir {str(path)!r} is not a folder; expected a folder of PNG/JPEG images")
    from runtime.images import open_image

    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise UserError(f"--calib-dir {str(path)!r} holds no images; expected files ending in "
                        f"{', '.join(IMAGE_SUFFIXES)}")
    readable = []
    for image in images:
        try:
            open_image(image)
            readable.append(image)
        except UserError:
            continue
    if not readable:
        raise UserError(f"--calib-dir {str(path)!r}: none of its {len(images)} image files is readable "
                        "(Pillow cannot open them); expected PNG/JPEG images")
    return readable


def calibration_set(spec: ModelSpec, calib_dir: Path | None, samples: int) -> tuple[dict[str, np.ndarray], dict]:
    """Calibration feeds (name -> (N, ...) float32) and their description for the manifest:
    the images of `calib_dir` preprocessed as the spec says (at the example size), else
    the model's generated task's training images, else seeded synthetic images."""
    from .golden import golden_inputs

    feeds = golden_inputs(spec, samples, seed=1)  # every input but the image stays synthetic
    image = spec.image.name
    if calib_dir is not None:
        from runtime.images import open_image
        from runtime.images import preprocess as prep

        files = check_calib_dir(calib_dir)[:samples]
        feeds = {k: v[:len(files)] for k, v in feeds.items()}
        feeds[image] = np.stack([prep(open_image(f), spec, size=spec.image.example[2:])[0] for f in files])
        source = f"{len(files)} images from {calib_dir}"
    else:
        from models.tasks import task_for

        try:
            task = task_for(spec)
            feeds[image] = task.batch(range(samples), "train", spec.image.example[2])[0]
            source = f"{samples} generated {task.kind} training images"
        except UserError:
            source = f"{samples} synthetic smooth images (no generated task for this model)"
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in feeds.values())).hexdigest()
    return feeds, {"source": source, "samples": len(feeds[image]), "sha256": digest}


def task_images(spec: ModelSpec, samples: int) -> np.ndarray | None:
    """Held-out images of the model's generated task (never used for calibration), or None."""
    from models.tasks import task_for
    from models.train import heldout

    if len(spec.inputs) > 1:
        return None
    try:
        return heldout(task_for(spec), spec.image.example[2], samples)[0]
    except UserError:
        return None


def kept_convs(model) -> list[str]:
    """Names of the Conv nodes of an `onnx.ModelProto` that the selective plan keeps in FP32:
    depthwise ones and heads."""
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    outputs = {o.name for o in model.graph.output}
    kept = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        depthwise = next((a.i for a in node.attribute if a.name == "group"), 1) > 1
        head = node.output[0] in outputs or "Reshape" in consumers.get(node.output[0], [])
        if depthwise or head:
            kept.append(node.name)
    return kept


def _one_at_a_time(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(len(next(iter(feeds.values()))))]


def quantize_onnxruntime(fp32: Path, dst: Path, data: dict[str, np.ndarray], method: str, plan: str,
                         keep: Sequence[str] = ()) -> dict:
    """`keep`: ONNX node names left in FP32 whatever the plan (the model contract's `keep_fp32` modules)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(_one_at_a_time(data))

        def get_next(self):
            return next(self.items, None)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    # ONNX Runtime's quantization tools log their progress on the root logger
    with tempfile.TemporaryDirectory(prefix="edge-export-quant-") as work, quiet(""):
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        present = {n.name for n in model.graph.node}
        exclude = (kept_convs(model) if plan == "selective" else []) + [n for n in keep if n in present]
        op_types = sorted({n.op_type for n in model.graph.node} - (set(KEEP_FP32) if plan == "selective" else set()))
        cache = None
        if method == "entropy":
            # quantize_static builds its entropy calibrator with as many histogram bins as
            # quantized bins (128/128), which leaves one threshold to try: the min-max one.
            # Calibrate with 2048 bins here and hand quantize_static the ranges.
            cache = Path(work) / "ranges.json"
            calibrator = create_calibrator(pre, op_types, augmented_model_path=str(Path(work) / "augmented.onnx"),
                                           calibrate_method=CalibrationMethod.Entropy,
                                           extra_options={"num_bins": 2048, "num_quantized_bins": 128,
                                                          "max_intermediate_outputs": 16})
            calibrator.collect_data(Reader())
            save_tensors_data(calibrator.compute_data(), cache)
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], nodes_to_exclude=exclude, op_types_to_quantize=op_types,
                        calibration_cache_path=cache,
                        extra_options={"CalibMaxIntermediateOutputs": 16} if method == "percentile" else None)
    return {"tool": "onnxruntime.quantization.quantize_static (QDQ, per-channel S8 weights, U8 activations)",
            "method": method, "plan": plan, "kept_fp32": {"nodes": exclude,
                                                          "op_types": list(KEEP_FP32) if plan == "selective" else []}}


def quantize_openvino(fp32_xml: Path, dst: Path, data: dict[str, np.ndarray], plan: str, onnx_file: Path,
                      keep: Sequence[str] = ()) -> dict:
    import onnx
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_xml))
    heads = (kept_convs(onnx.load(str(onnx_file))) if plan == "selective" else []) + list(keep)
    types = ["Softmax", "MatMul"] if plan == "selective" else []
    # the converter names a Conv node's convolution "<node>/WithoutBiases" and its bias "<node>"
    names = [op.get_friendly_name() for op in model.get_ops()
             if op.get_friendly_name().removesuffix("/WithoutBiases") in heads]
    ignored = nncf.IgnoredScope(names=names, types=types, validate=False) if names or types else None
    kept = {"nodes": heads, "op_types": types}
    items = _one_at_a_time(data)
    with quiet("nncf"):
        quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), ignored_scope=ignored)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(dst))
    return {"tool": f"nncf {nncf.__version__} quantize (default preset)", "method": "nncf", "plan": plan,
            "kept_fp32": kept}
