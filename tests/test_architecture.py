"""The layering the code promises: no import cycle among the project's modules (lazy
imports inside functions count too), the device runtime imports nothing of the build
side, the models nothing of export, the build nothing of the research bench; and
every runner, the PyTorch ones included, is a `runtime.Runner`."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import runtime
from tests.test_cli import REPO

PACKAGES = ("runtime", "models", "export")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its code (`from . import x` resolved)."""
    modules = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and ast.unparse(block.test) == "TYPE_CHECKING" for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # for type checkers only: never run
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` imports pkg.mod (and runs pkg, which the graph already says)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_no_import_cycle_among_the_projects_modules():
    assert cycles(imports()) == []


def test_each_layer_imports_only_the_layers_below_it():
    graph = imports()
    for name, targets in graph.items():
        top = name.split(".")[0]
        if top == "runtime":
            assert not {t for t in targets if not t.startswith("runtime")}, name
        if top == "models":
            assert not {t for t in targets if t.startswith("export")}, name


def test_the_build_never_reaches_the_research_bench():
    graph = imports()
    product = [m for m in graph if m.startswith("export") and not m.startswith(("export.lab", "export.cli",
                                                                                 "export.__main__"))]
    for name in product:
        assert not {m for m in reaches(graph, name) if m.startswith("export.lab")}, name


def test_every_runner_is_a_runtime_runner(built):
    from export.benchmark import TorchRunner
    from export.contract import Exportable
    from export.lab.harness import CompiledRunner, ExecuTorchRunner
    import models

    bundle = runtime.Bundle.open(built("dsc").bundle)
    model = Exportable(models.create("dsc"), bundle.spec).eval()
    x = bundle.golden()[0]
    for backend in ("onnxruntime", "openvino"):
        with runtime.load(bundle, backend) as runner:
            assert isinstance(runner, runtime.Runner)
    eager, compiled = TorchRunner(model, 2), CompiledRunner(model, 2)
    for runner in (eager, compiled):
        assert isinstance(runner, runtime.Runner)
        with pytest.raises(ValueError, match="input 'image': expected"):  # the same input checks as the artifacts
            runner.infer(np.zeros((1, 3, 8, 8), np.float32))
    assert eager.infer(x)["value"].shape == (2, 10, 2)
    profile = eager.profile(x, 2)  # torch.profiler's CPU time per ATen op, like the backends' per-op tables
    assert "convolution" in profile[0]["op_type"] and sum(r["share"] for r in profile) == pytest.approx(1.0)
    calls, seconds = eager.run_for({k: v[:1] for k, v in x.items()}, 0.2)
    assert calls >= 1 and seconds >= 0.2
    # ExecuTorch is an optional extra: its runner has every member of the protocol all the same
    members = {"infer", "run_for", "profile", "close", "__enter__", "__exit__", "check"}
    assert members <= set(dir(ExecuTorchRunner)) and issubclass(ExecuTorchRunner, runtime.backends.base.BaseRunner)
    assert torch.get_num_threads() == 2


def test_a_backend_is_named_only_in_its_own_plugin_files():
    """Everything else asks the registry: a third backend is never silently treated as one of the others.
    No string of the code (docstrings aside) holds a backend's name outside runtime/backends/<name>.py and
    export/backends/<name>.py."""
    from runtime.backends import REGISTRY

    found = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if path.parent.name == "backends" and path.stem in REGISTRY:
                continue
            tree = ast.parse(path.read_text())
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                          and node.body and isinstance(node.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                    words = set(node.value.replace("/", " ").replace(",", " ").split())
                    found += [f"{path.relative_to(REPO)}:{node.lineno} {name!r}" for name in words & set(REGISTRY)]
    assert found == []


def test_each_backend_is_one_plugin_on_each_side_of_the_torch_line():
    from export.backends import REGISTRY as BUILD
    from runtime.backends import BACKENDS, REGISTRY

    assert list(BUILD) == list(BACKENDS) == [b.name for b in sorted(REGISTRY.values(), key=lambda b: b.rank)]
    for name, backend in REGISTRY.items():
        assert BUILD[name].runtime is backend
        assert "fp32" in backend.files and set(backend.bounds) == set(backend.files), name
        assert issubclass(backend.runner, runtime.backends.base.BaseRunner), name
        assert backend.candidates()[0] == backend.candidates(memory=True)[0], name  # the defaults come first
    assert len({b.files["fp32"] for b in REGISTRY.values()}) == len(REGISTRY)  # no two share a file
