"""What the build side of a backend plugin is made of (see `export/backends/__init__.py`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from runtime.backends.base import Backend

if TYPE_CHECKING:
    from ..contract import Exportable
    from ..quantize import OnnxRuntimeQuantizer, Quantizer


class ExportBackend:
    """How the build makes, quantizes and diagnoses one backend's artifacts."""

    runtime: Backend  # the device-side half: the files, bounds and runner
    marker: str  # its marker in the lab's plots
    needs: tuple[str, ...] = ()  # the modules its build side imports beyond the build's own
    extra: str | None = None  # the extra of edge-export that installs them
    runs_onnx = True  # whether its runner runs ONNX graphs: the sensitivity pass's QDQ models, which rank the
    # layers, and the graphs `export.winograd` times

    def missing(self) -> list[str]:
        """The modules of `needs` this Python cannot import."""
        return [m for m in self.needs if importlib.util.find_spec(m) is None]

    @property
    def name(self) -> str:
        return self.runtime.name

    def stage(self, precisions: Sequence[str]) -> str | None:
        """The build's stage that converts, in words (None: the exported ONNX graph is the artifact)."""
        return f"{self.runtime.title} ({', '.join(precisions)})"

    def convert(self, model: "Exportable", feeds: Mapping[str, np.ndarray], onnx_file: Path, folder: Path,
                precisions: Sequence[str]) -> tuple[dict[str, Path], dict[str, Any]]:
        """Write the artifacts of `precisions` (not INT8) into `folder`, made from the final ONNX graph
        `onnx_file`, or from the module where the backend's converter starts there (`feeds`: real inputs,
        batch 2 or more); each one's file by precision, and what the manifest should say of the conversion
        (empty: nothing beyond the export's own record)."""
        raise NotImplementedError

    def quantizer(self, folder: Path, calib: Mapping[str, np.ndarray], qdq: "OnnxRuntimeQuantizer",
                  modules: Mapping[str, str]) -> "Quantizer":
        """What makes the full plan's INT8 model: the backend's own tool, or the QDQ model `qdq` makes
        (ONNX Runtime's quantization, calibrated on `calib`; the sensitivity pass runs its models on every
        backend that runs ONNX). `folder`: the bundle being built, its FP32 artifacts in it; `modules`: ONNX
        node -> the module it was made in."""
        return qdq

    def plans(self, qdq: "OnnxRuntimeQuantizer", quantizer: "Quantizer") -> "Quantizer":
        """What makes the plans past the full one, which keep chosen nodes in FP32 (`quantizer`: the full
        plan's)."""
        return quantizer

    def fallback(self, qdq: "OnnxRuntimeQuantizer", err: Exception) -> "tuple[Quantizer, str] | None":
        """Where the full plan's tool failed with `err`: another quantizer and why it was taken, or None."""
        return None

    def expose(self, model_file: Path, names: list[str], folder: Path) -> tuple[Path, list[str]] | None:
        """The FP32 artifact `model_file` with the tensors `names` (those it still holds) as extra outputs,
        written to `folder`, and those names (None: its tensors are not named after the ONNX graph's)."""
        return None

    def activations(self, model_file: Path, spec, feeds: Mapping[str, np.ndarray], tensors: Mapping[str, str],
                    outputs: Sequence[str], folder: Path,
                    threads: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """What `diagnose` compares with PyTorch: the FP32 artifact's value of each module's output
        (`tensors`: module path -> the ONNX tensor that holds it) and of each model output, on `feeds`,
        as (by module, by output); None where its tensors cannot be matched to modules. By default, the
        graph `expose` writes, run through the device runtime's own runner."""
        exposed = self.expose(model_file, sorted({*tensors.values(), *outputs}), folder)
        if exposed is None:
            return None
        path, wanted = exposed
        with self.runtime.runner(path, spec.inputs, [{"name": n} for n in wanted], "fp32", threads,
                                 cache=False) as runner:
            got = runner.infer(feeds)
        return {m: got[t] for m, t in tensors.items() if t in got}, {o: got[o] for o in outputs}
