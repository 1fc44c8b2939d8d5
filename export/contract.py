"""A module and its `ModelSpec`, fitted together for export.

`Exportable` calls the user's module with the spec's inputs (by the forward
parameters' own names where they match, else in order) and returns the
outputs in the spec's order, whatever the module returns: one tensor, a tuple
or list, or a dict. `infer_spec` writes the spec for a module from example
inputs; `check_signature` refuses inputs that do not fit forward's parameters
in one line.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from runtime.errors import UserError
from runtime.spec import ModelSpec, Preprocess, TensorSpec
from runtime.tasks import task_class

NUMPY_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64", torch.int32: "int32",
                torch.uint8: "uint8", torch.bool: "bool"}


def forward_parameters(module: nn.Module) -> list[inspect.Parameter]:
    """forward's parameters that take a positional value (no *args, **kwargs or keyword-only)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_signature(module: nn.Module, names: Sequence[str],
                    shapes: Mapping[str, Sequence[int]] | None = None) -> None:
    """A UserError unless forward can take inputs named `names`, in that order (`shapes`: those
    given, shown in the hint; a parameter not given is shown with no shape, as only its code knows it)."""
    params = forward_parameters(module)
    try:
        varargs = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    names = list(names)
    shown = f"{type(module).__name__}.forward({', '.join(p.name for p in params)})"
    if len(names) < len(required) or (len(names) > len(params) and not varargs):
        raise UserError(f"{shown} takes {len(required)}" + (f" to {len(params)}" if len(params) > len(required) else "")
                        + f" inputs; {len(names)} given ({', '.join(names)}); pass one --input per parameter, "
                        "in order: --input " + " --input ".join(_shape_hint(p, shapes, i) for i, p in enumerate(
                            required if len(names) < len(required) else [p.name for p in params]))
                        + (" (SHAPE: that input's own channels and size)" if len(names) < len(required) else ""))


def _shape_hint(name: str, shapes: Mapping[str, Sequence[int]] | None, i: int) -> str:
    shape = list((shapes or {}).values())[i] if i < len(shapes or {}) else None
    return f"{name}:{'x'.join(map(str, shape))}" if shape is not None else f"{name}:SHAPE"


def check_modules(module: nn.Module, paths: Sequence[str]) -> None:
    """A UserError unless every path names a submodule of `module` (as named_modules names it)."""
    from runtime.errors import unknown

    have = [name for name, _ in module.named_modules() if name]
    for path in paths:
        if path not in have:
            raise UserError(unknown(f"module of {type(module).__name__} in --keep-fp32:", path, have))


def _scopes(node) -> list[str]:
    """The module paths (the export wrapper's `module.` prefixed, outermost first) an ONNX node was made in."""
    import ast

    meta = {p.key: p.value for p in node.metadata_props}
    return ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))


def _load(exported: Any):
    import onnx

    return onnx.load(str(exported)) if not hasattr(exported, "graph") else exported


def module_nodes(exported: Any, paths: Sequence[str]) -> list[str]:
    """Names of the nodes of an exported ONNX graph (with the exporter's scope metadata)
    computed inside any module of `paths` (paths of the user's module)."""
    wanted = [f"module.{p}" for p in paths]
    return [node.name for node in _load(exported).graph.node
            if any(s == w or s.startswith(w + ".") for s in _scopes(node) for w in wanted)]


def node_modules(exported: Any) -> dict[str, str]:
    """Node name -> the path in the user's module of the innermost module it was made in."""
    found = {}
    for node in _load(exported).graph.node:
        inside = [s.removeprefix("module.") for s in _scopes(node)[:-1] if s.startswith("module.")]
        if inside:
            found[node.name] = inside[-1]
    return found


class Exportable(nn.Module):
    """`module` with the spec's calling convention: inputs in spec order, outputs a tuple in spec order."""

    def __init__(self, module: nn.Module, spec: ModelSpec):
        super().__init__()
        self.module = module
        self.spec = spec
        params = [p.name for p in forward_parameters(module)]
        self.by_name = set(spec.input_names) <= set(params) and spec.input_names != params[:len(spec.input_names)]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.by_name:
            value = self.module(**dict(zip(self.spec.input_names, inputs)))
        else:
            value = self.module(*inputs)
        return tuple(named_outputs(value, self.spec).values())


def named_outputs(value: Any, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """forward's return value as the spec's named outputs (a UserError if it does not fit)."""
    if spec.returns == "tensor":
        if not isinstance(value, torch.Tensor):
            raise UserError(f"model {spec.name!r} was described as returning one tensor but returned "
                            f"{type(value).__name__}")
        return {spec.outputs[0]: value}
    if spec.returns == "tuple":
        if not isinstance(value, (tuple, list)) or len(value) != len(spec.outputs):
            raise UserError(f"model {spec.name!r} was described as returning {len(spec.outputs)} tensors in a tuple "
                            f"but returned {describe_value(value)}")
        return dict(zip(spec.outputs, value))
    if not isinstance(value, Mapping) or any(k not in value for k in spec.outputs):
        raise UserError(f"model {spec.name!r} was described as returning a dict with {', '.join(spec.outputs)} "
                        f"but returned {describe_value(value)}")
    return {k: value[k] for k in spec.outputs}


def describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a dict with keys {', '.join(map(str, value))}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: " + ", ".join(describe_value(v) for v in value)
    return f"a {type(value).__name__}"


def output_layout(value: Any, names: Sequence[str] = ()) -> tuple[str, tuple[str, ...]]:
    """(returns, output names) of a forward's return value: a tensor, a flat tuple/list
    or a dict of tensors; names given by the user win over the defaults."""
    if isinstance(value, torch.Tensor):
        found: tuple[str, tuple[str, ...]] = ("tensor", ("output",))
    elif isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        found = ("tuple", tuple(f"output{i}" for i in range(len(value))))
    elif isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        found = ("dict", tuple(str(k) for k in value))
        if any(not k.isidentifier() for k in found[1]):
            raise UserError(f"the model returns a dict whose keys are not names ({', '.join(found[1])}); "
                            "return keys made of letters, digits and _")
    else:
        raise UserError(f"the model returned {describe_value(value)}; edge-export takes a tensor, a tuple or list "
                        "of tensors, or a dict of tensors")
    if names and found[0] != "dict":
        if len(names) != len(found[1]):
            raise UserError(f"--output names {len(names)} outputs ({', '.join(names)}) but the model returns "
                            f"{len(found[1])}")
        return found[0], tuple(names)
    return found


def infer_spec(module: nn.Module, example: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor,
               name: str, *, dynamic: Mapping[str, Sequence[int]] | None = None, task: Mapping[str, Any] | None = None,
               preprocess: Preprocess | None = None, output_names: Sequence[str] = (), multiple: int = 1,
               source: Mapping[str, Any] | None = None, summary: str = "") -> ModelSpec:
    """The spec of `module` from example inputs: names from forward's parameters
    (or the mapping's keys), shapes from the examples with the batch axis dynamic
    (and the axes of `dynamic`), outputs from one call on the examples."""
    if isinstance(example, torch.Tensor):
        example = (example,)
    if not isinstance(example, Mapping):
        params = [p.name for p in forward_parameters(module)]
        example = {(params[i] if i < len(params) else f"input{i}"): x for i, x in enumerate(example)}
    for key, x in example.items():
        if not isinstance(x, torch.Tensor):
            raise UserError(f"example input {key!r} is a {type(x).__name__}; pass torch tensors")
        if x.dtype not in NUMPY_DTYPES:
            raise UserError(f"example input {key!r} has dtype {x.dtype}; supported: "
                            f"{', '.join(map(str, NUMPY_DTYPES))}")
    dynamic = {k: tuple(v) for k, v in (dynamic or {}).items()}
    for key in dynamic:
        if key not in example:
            raise UserError(f"--dynamic names input {key!r}; the inputs are {', '.join(example)}")
    first = next(iter(example.values()))
    if preprocess is not None and not (first.dim() == 4 and first.dtype.is_floating_point):
        preprocess = None  # no image goes in first: there is nothing to preprocess
    inputs = []
    for key, x in example.items():
        axes = set(dynamic.get(key, (0,))) | {0}
        bad = [a for a in axes if a >= x.dim()]
        if bad:
            raise UserError(f"--dynamic {key}: axis {bad[0]} does not exist; {key} has {x.dim()} axes "
                            f"{tuple(x.shape)}")
        image_like = x.dim() == 4
        shape = tuple(_axis_name(key, a, image_like, len(example) > 1) if a in axes else int(d)
                      for a, d in enumerate(x.shape))
        floating = x.dtype.is_floating_point
        value_range = preprocess.value_range() if preprocess is not None and not inputs and floating else None
        inputs.append(TensorSpec(key, shape, NUMPY_DTYPES[x.dtype], value_range,
                                 multiple if image_like else 1, tuple(int(d) for d in x.shape)))
    check_signature(module, list(example), {k: tuple(x.shape) for k, x in example.items()})
    try:
        with torch.no_grad():
            value = module(*example.values())
    except Exception as err:  # the user's forward: its own message, in one line
        shapes = ", ".join(f"{k} {tuple(x.shape)}" for k, x in example.items())
        first = str(err).strip().splitlines()
        raise UserError(f"{type(module).__name__}.forward on {shapes} raised {type(err).__name__}"
                        + (f": {first[0]}" if first else "")) from None
    returns, outputs = output_layout(value, output_names)
    named = dict(zip(outputs, value.values() if isinstance(value, Mapping) else
                     (value,) if isinstance(value, torch.Tensor) else value))
    first = inputs[0]
    if preprocess is not None and len(first.shape) == 4:
        fixed = not any(a in first.dynamic_axes for a in (2, 3))
        preprocess = dataclasses.replace(preprocess, size=tuple(first.example[2:]) if fixed else None)
    task = task_class(dict(task or {"kind": "none"})).complete(dict(task or {"kind": "none"}),
                                                             {k: tuple(v.shape) for k, v in named.items()}, first)
    source = dict(source or {})
    params = [p.name for p in forward_parameters(module)]
    renamed = {k: p for k, p in zip(example, params) if k != p}
    if renamed:  # the bundle's names, not forward's: said in the contract
        source["parameters"] = renamed
    return ModelSpec(name, tuple(inputs), outputs, returns, task, preprocess, summary=summary, source=source)


def _axis_name(input_name: str, axis: int, image_like: bool, several: bool) -> str:
    """batch for axis 0; height and width for an image's axes 2 and 3 (prefixed by the input's name
    when there are several inputs, so that their sizes are not tied together)."""
    if axis == 0:
        return "batch"
    base = {2: "height", 3: "width"}.get(axis, f"dim{axis}") if image_like else f"dim{axis}"
    return f"{input_name}_{base}" if several else base


def example_tensors(spec: ModelSpec, inputs: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in spec.input_names)
