"""What the build side of a backend plugin is made of (see `export/backends/__init__.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from runtime.backends.base import Backend

if TYPE_CHECKING:
    from ..quantize import OnnxRuntimeQuantizer, Quantizer


class ExportBackend:
    """How the build makes, quantizes and diagnoses one backend's artifacts."""

    runtime: Backend  # the device-side half: the files, bounds and runner
    marker: str  # its marker in the lab's plots

    @property
    def name(self) -> str:
        return self.runtime.name

    def stage(self, precisions: Sequence[str]) -> str | None:
        """The build's stage that converts, in words (None: the exported ONNX graph is the artifact)."""
        return f"{self.runtime.title} ({', '.join(precisions)})"

    def convert(self, onnx_file: Path, folder: Path, precisions: Sequence[str]) -> dict[str, Path]:
        """Write the artifacts of `precisions` (not INT8) made from the final ONNX graph into `folder`;
        each one's file by precision."""
        raise NotImplementedError

    def quantizer(self, folder: Path, calib: Mapping[str, np.ndarray], qdq: "OnnxRuntimeQuantizer") -> "Quantizer":
        """What makes the full plan's INT8 model: the backend's own tool, or the QDQ model `qdq` makes
        (ONNX Runtime's quantization, calibrated on `calib`; the sensitivity pass runs its models on every
        backend). `folder`: the bundle being built, its FP32 artifacts in it."""
        return self.plans(qdq)

    def plans(self, qdq: "OnnxRuntimeQuantizer") -> "Quantizer":
        """What makes the plans past the full one, which keep chosen nodes in FP32."""
        raise NotImplementedError

    def fallback(self, qdq: "OnnxRuntimeQuantizer", err: Exception) -> "tuple[Quantizer, str] | None":
        """Where the full plan's tool failed with `err`: another quantizer and why it was taken, or None."""
        return None

    def expose(self, model_file: Path, names: list[str], folder: Path) -> tuple[Path, list[str]]:
        """The FP32 artifact `model_file` with the tensors `names` (those it still holds) as extra outputs,
        written to `folder`, and those names: how `diagnose` reads its intermediate tensors."""
        raise NotImplementedError
