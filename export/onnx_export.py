"""Stage: PyTorch -> ONNX with the dynamo exporter, then `onnx.checker`."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from .settings import check_opset

INPUT_NAME = "image"


@contextlib.contextmanager
def quiet_exporter():
    """The exporter logs about optional packages (torchvision), its IR library
    about empty attribute lists (SegNet's max-unpool), and prints its progress;
    none of it helps the user of a build."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(model: nn.Module, example: torch.Tensor, output_names: tuple[str, ...], path: Path,
                opset: int, optimize: bool = True) -> dict:
    """Export with a dynamic batch axis; returns the export options for the manifest.
    `optimize=False` keeps the graph as traced, one node per PyTorch op (for diagnosis)."""
    check_opset(opset)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, opset_version=opset, external_data=False,
            input_names=[INPUT_NAME], output_names=list(output_names),
            dynamic_shapes={"x": {0: batch}}, verbose=False, optimize=optimize,
        )
    onnx.checker.check_model(str(path), full_check=True)
    return {"exporter": "torch.onnx.export(dynamo=True)", "opset": opset, "dynamic_axes": {INPUT_NAME: {"0": "batch"}},
            "checker": "onnx.checker.check_model(full_check=True)"}
