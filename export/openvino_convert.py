"""Stage: ONNX -> OpenVINO IR, FP32 and FP16-compressed."""

from __future__ import annotations

from pathlib import Path

import openvino as ov

IR_FILES = {"fp32": "openvino/model.xml", "fp16": "openvino/model.fp16.xml"}


def convert(onnx_path: Path, bundle: Path, precisions: tuple[str, ...] = tuple(IR_FILES)) -> dict[str, list[str]]:
    """Write the IRs (both by default) into `bundle`; returns the files written per precision.

    `compress_to_fp16` stores weights in FP16; OpenVINO keeps the subgraphs it
    marks precision-sensitive (such as the softmax and reductions) in FP32.
    """
    model = ov.convert_model(str(onnx_path))
    written = {}
    for precision in precisions:
        name = IR_FILES[precision]
        xml = bundle / name
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(xml), compress_to_fp16=(precision == "fp16"))
        written[precision] = [name, name.removesuffix(".xml") + ".bin"]
    return written
