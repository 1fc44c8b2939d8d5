"""`export.build(module, spec_or_example_inputs, ...)`: the build from Python, for notebooks and scripts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from runtime.errors import UserError
from runtime.machine import usable_cores
from runtime.spec import ModelSpec, Preprocess

from .contract import infer_spec
from .artifacts import Stage, silent
from .pipeline import BuildResult, build_model
from .report import results_text, spec_line
from .settings import BuildSettings, check_options


def build(module: nn.Module, spec_or_example_inputs: ModelSpec | torch.Tensor | Sequence[torch.Tensor]
          | Mapping[str, torch.Tensor], out: str | Path = "artifacts", *, name: str | None = None,
          checkpoint: str | Path | None = None, task: Mapping[str, Any] | None = None,
          preprocess: Preprocess | None = None, dynamic: Mapping[str, Sequence[int]] | None = None,
          outputs: Sequence[str] = (), multiple: int = 1, stage: Stage = silent, verbose: bool = True,
          **options: Any) -> BuildResult:
    """Build, prove and benchmark a bundle of `module` at `out/<name>`.

    Give a `ModelSpec`, or example inputs (a tensor, a tuple of tensors in
    forward's order, or a dict by forward's parameter names): the spec is then
    inferred from them (names, shapes with the batch axis dynamic plus the axes
    of `dynamic`, outputs from one call), printed when `verbose`, and stored in
    the manifest. `task` is e.g. {"kind": "segmentation"}; `preprocess` how an
    image file becomes the first input (default: RGB scaled by 1/255).
    `checkpoint` is a state_dict file loaded into `module` first. `options` are
    the other build settings: backends, opset, threads, quantize, calib_dir,
    calib_samples, calib_method, keep_fp32, int8_budget, int8_anyway, qat, rewrites,
    tune_budget, warmup, runs."""
    if not isinstance(module, nn.Module):
        raise UserError(f"export.build takes a torch.nn.Module, not a {type(module).__name__}")
    valid = {"backends", "opset", "threads", "quantize", "calib_dir", "calib_samples", "calib_method", "keep_fp32",
             "int8_budget", "int8_anyway", "qat", "rewrites", "tune_budget", "warmup", "runs", "seed", "golden_batch"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise UserError(f"export.build has no option {unknown[0]!r}; valid: {', '.join(sorted(valid))}")
    for key in ("backends", "keep_fp32"):
        if key in options:
            options[key] = tuple(options[key])
    options.setdefault("threads", usable_cores())
    settings = BuildSettings(name=name, out=Path(out), checkpoint=Path(checkpoint) if checkpoint else None,
                             **options)
    check_options(settings)
    module = module.eval()
    read = None
    if checkpoint is not None:
        from models.checkpoint import load_into

        read = load_into(module, checkpoint)
    if isinstance(spec_or_example_inputs, ModelSpec):
        spec = spec_or_example_inputs
        if name is not None:
            spec = dataclasses.replace(spec, name=name)
    else:
        spec = infer_spec(module, spec_or_example_inputs, name or type(module).__name__, dynamic=dynamic,
                          task=task, preprocess=preprocess or _image_default(spec_or_example_inputs), output_names=outputs,
                          multiple=multiple, summary=f"{type(module).__name__}, passed to export.build")
        if verbose:
            print(f"export.build: inferred the model contract: {spec_line(spec.to_dict())}")
    if settings.keep_fp32:
        spec = dataclasses.replace(spec, keep_fp32=tuple(dict.fromkeys(spec.keep_fp32 + settings.keep_fp32)))
    result = build_model(module, spec, settings, stage, read)
    if verbose:
        print(results_text(result.manifest, result.passed))
        for failure in result.failures:
            print(f"failed: {failure}")
    return result


def _image_default(example) -> Preprocess | None:
    """An RGB (or grey) image scaled by 1/255 where the first input looks like one: (N, 3 or 1, H, W) floats."""
    first = example if isinstance(example, torch.Tensor) else next(iter(
        example.values() if isinstance(example, Mapping) else example))
    if isinstance(first, torch.Tensor) and first.dim() == 4 and first.shape[1] in (1, 3) and first.is_floating_point():
        channels = first.shape[1]
        return Preprocess(None, mean=(0.0,) * channels, std=(1.0,) * channels)
    return None
