"""The research bench's harness: how the study and the peers race export, convert and time
modules, and the peers themselves (torch.compile, ExecuTorch). The product's build imports none of it."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from runtime.backends import DEFAULT_BACKENDS
from runtime.backends.base import BaseRunner, Runner
from runtime.backends.onnxruntime import BACKEND as _ORT
from runtime.bench import bench_interleaved, latency_stats
from runtime.machine import machine_info, usable_cores
from runtime.spec import TensorSpec

from ..artifacts import fp32_of, make_fp32_artifacts
from ..backends import REGISTRY
from ..benchmark import TorchRunner
from ..contract import Exportable, infer_spec
from ..manifest import tool_versions
from ..quiet import quiet
from ..settings import DEFAULT_OPSET

BACKEND_NAMES = {"pytorch": "PyTorch eager", **{b.name: b.runtime.title for b in REGISTRY.values()}}

@dataclass(frozen=True)
class StudySettings:
    out: Path = Path("artifacts/study")
    quick: bool = False
    threads: int = field(default_factory=usable_cores)
    train_steps: int = 0
    artifacts: Path = Path("artifacts")  # INT8 artifacts of built bundles are timed too
    backends: tuple[str, ...] = DEFAULT_BACKENDS  # each table's columns: PyTorch eager, then these
    opset: int = DEFAULT_OPSET
    seed: int = 0


@dataclass
class Section:
    key: str  # what the plots look it up by
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # raw figures, for study.json and the plots


class Part(nn.Module):
    """Any computation of one input behind `forward(x) -> dict`, the shape the
    exporter and the timing code expect; `modules` carry its weights."""

    def __init__(self, fn: Callable[[torch.Tensor], Any], *modules: nn.Module):
        super().__init__()
        self.fn = fn
        self.parts = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.fn(x)
        return out if isinstance(out, dict) else {"y": out}


def of(module: nn.Module) -> Part:
    return Part(module, module)


def flops(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Floating-point operations of one call at batch 1, as PyTorch's flop counter
    counts them (2 per multiply-add of convs, transposed convs and matmuls)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(1, *shape))
    return counter.get_total_flops()


def transposed_overcount(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Mult-adds that torchinfo adds for ConvTranspose2d: it counts weights x
    output pixels, where a transposed conv does weights x input pixels."""
    extra = []

    def hook(m, inputs, output):
        extra.append(m.weight.numel() * (output.shape[-2] * output.shape[-1] - inputs[0].shape[-2] * inputs[0].shape[-1]))

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.ConvTranspose2d)]
    with torch.no_grad():
        module(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return sum(extra)


INPUT_NAME = "image"


class Study:
    """Exports, converts and times modules; holds the runners of one table at a time."""

    def __init__(self, s: StudySettings, work: Path, say: Callable[[str], None]):
        self.s, self.work, self.say = s, work, say
        self.rng = np.random.default_rng(s.seed)
        self.backends = ("pytorch", *s.backends)  # the columns of every table
        self.graphs: dict[str, Path] = {}  # label -> the ONNX graph its backends run (after the rewrites)

    def runners(self, label: str, module: nn.Module, shape: tuple[int, ...]) -> dict[tuple[str, str], Runner]:
        """`module` in eager PyTorch, and as the build would ship it for every backend (FP32)."""
        module = module.eval()
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        example = {INPUT_NAME: torch.rand(2, *shape)}  # batch 2: the batch axis stays dynamic
        spec = infer_spec(module, example, slug)
        model = Exportable(module, spec)
        feeds = {k: v.numpy() for k, v in example.items()}
        folder = Path(tempfile.mkdtemp(prefix=f"{slug}-", dir=self.work))  # a label may come twice (two tables)
        made = make_fp32_artifacts(model, feeds, folder, self.s.opset, fp32_of(self.s.backends))
        if made.failed:  # every row of a table is timed on every backend asked for
            raise RuntimeError(f"{label}: a converter could not convert it: {made.why_failed()}")
        self.graphs[label] = made.onnx
        threads = self.s.threads
        outputs = [{"name": n} for n in spec.outputs]
        return {(label, "pytorch"): TorchRunner(model, threads),
                **{(label, b): REGISTRY[b].runtime.runner(files["fp32"], spec.inputs, outputs, "fp32", threads)
                   for b, files in made.files.items()}}

    def feeds(self, shape: tuple[int, ...], batch: int = 1, normal: bool = False) -> dict[str, np.ndarray]:
        x = self.rng.standard_normal((batch, *shape)) if normal else self.rng.random((batch, *shape))
        return {INPUT_NAME: x.astype(np.float32)}

    def time(self, runners: dict, feeds_of: dict, runs: int, warmup: int = 5) -> dict[tuple, dict]:
        """One interleaved run of every runner, each with its own inputs; p50 in ms."""
        names = {f"{label} | {backend}": (label, backend) for label, backend in runners}
        stats = bench_interleaved({n: runners[k] for n, k in names.items()}, None, warmup=warmup, runs=runs,
                                  rounds=5, feeds_of={n: feeds_of[k[0]] for n, k in names.items()})
        return {k: stats[n] for n, k in names.items()}

    def quick_or_full(self, quick, full):
        return quick if self.s.quick else full


def settings_dict(s: StudySettings) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s).items()}


def environment(s: StudySettings) -> dict[str, Any]:
    return {"machine": machine_info(), "versions": tool_versions(), "threads": s.threads}


def matmul_peak(threads: int, sizes: tuple[int, ...] = (512, 1024, 2048), seconds: float = 1.0) -> dict[str, Any]:
    """This machine's FP32 matrix-multiply rate: square n x n products on `threads` threads by
    torch.mm and by ONNX Runtime's MatMul, the median of about `seconds` of calls per size and
    library; the fastest is the peak achieved GFLOP/s are held against. One library alone can
    measure it low: on a Zen 4, torch.mm ran 199 GFLOP/s where ONNX Runtime's MLAS ran 226, and
    OpenVINO's convolutions 224."""
    torch.set_num_threads(threads)
    per_library: dict[str, dict[int, float]] = {"torch.mm": {}, _ORT.title: {}}
    with tempfile.TemporaryDirectory(prefix="edge-export-peak-") as work:
        for n in sizes:
            a, b = torch.rand(n, n), torch.rand(n, n)
            per_library["torch.mm"][n] = _rate(lambda: torch.mm(a, b), n, seconds)
            with _onnx_product(n, threads, Path(work)) as runner:
                feeds = {"a": a.numpy()}
                per_library[_ORT.title][n] = _rate(lambda: runner.infer(feeds), n, seconds)
    library, size = max(((lib, n) for lib, rates in per_library.items() for n in rates),
                        key=lambda key: per_library[key[0]][key[1]])
    return {"gflops": per_library[library][size], "size": size, "library": library,
            "per_library": per_library, "threads": threads,
            "method": f"the faster of torch.mm and {_ORT.title}'s MatMul, FP32, square matrices, median per size"}


def _rate(call: Callable[[], Any], n: int, seconds: float) -> float:
    """GFLOP/s of `call`, an n x n by n x n product: 3 warm-up calls, then the median of about `seconds`."""
    flop = 2 * n**3
    times = []
    for i in range(3 + max(5, int(seconds * 100e9 / flop))):
        start = time.perf_counter()
        call()
        if i >= 3:
            times.append((time.perf_counter() - start) * 1e3)
    return flop / latency_stats(times)["p50_ms"] / 1e6


def _onnx_product(n: int, threads: int, work: Path) -> BaseRunner:
    """ONNX Runtime's runner of one MatMul of an n x n input `a` by an n x n constant."""
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "product",
                              [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [n, n])],
                              [numpy_helper.from_array(np.random.default_rng(0).random((n, n), dtype=np.float32), "b")])
    path = work / f"product{n}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)]), str(path))
    return _ORT.runner(path, [TensorSpec("a", (n, n))], [{"name": "y"}], "fp32", threads)


EAGER, COMPILE, EXECUTORCH = "pytorch eager", "torch.compile", "executorch xnnpack"
PEERS = (EAGER, COMPILE, EXECUTORCH)
PEER_BOUND = 1e-3  # max abs difference from eager for a peer's outputs to count as the same model


class CompiledRunner(TorchRunner):
    """torch.compile (inductor, default mode) of the model; compiled on the first call."""

    def __init__(self, model: Exportable, threads: int):
        super().__init__(model, threads)
        self.backend = "torch.compile"
        self.model = torch.compile(model)
        self.settings["mode"] = "torch.compile(inductor, default), inference_mode"


class ExecuTorchRunner(BaseRunner):
    """The model lowered to ExecuTorch with the XNNPACK partitioner, run by ExecuTorch's Python runtime."""

    def __init__(self, model: Exportable, example: torch.Tensor, threads: int):
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        super().__init__(model.spec.inputs, [{"name": n} for n in model.spec.outputs], "executorch", "fp32")
        with torch.no_grad():
            program = to_edge_transform_and_lower(torch.export.export(model, (example,)),
                                                  partitioner=[XnnpackPartitioner()]).to_executorch()
        _unsafe_reset_threadpool(threads)
        # the method reads the program, which reads the buffer: all three are kept alive
        self._buffer = program.buffer
        self._program = Runtime.get().load_program(self._buffer)
        self.method = self._program.load_method("forward")
        import executorch

        self.settings = {"threads": threads, "partitioner": "XNNPACK",
                         "executorch": getattr(executorch, "__version__", "installed")}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.method.execute([torch.from_numpy(feeds[name]) for name in self.input_names])
        return {name: out.numpy() for name, out in zip(self.output_names, outputs)}


def quiet_peers():
    """torch.compile and ExecuTorch's lowering log and warn at length; the table says what matters."""
    return quiet("torch._inductor", "torch._dynamo", "executorch", "torchao")


def executorch_available() -> str | None:
    """None if ExecuTorch can be used, else why not."""
    if importlib.util.find_spec("executorch") is None:
        return "not installed (pip install 'edge-export[executorch]')"
    return None


def peers(model: Exportable, example: torch.Tensor, threads: int) -> tuple[dict[str, Runner], dict[str, dict]]:
    """The peers that could be set up, each checked against eager; and for each, what happened."""
    made, notes = {}, {}
    candidates = {EAGER: lambda: TorchRunner(model, threads), COMPILE: lambda: CompiledRunner(model, threads)}
    missing = executorch_available()
    if missing:
        notes[EXECUTORCH] = {"status": missing}
    else:
        candidates[EXECUTORCH] = lambda: ExecuTorchRunner(model, example, threads)
    feeds = {model.spec.image.name: example.numpy()}
    reference = TorchRunner(model, threads).infer(feeds)
    for name, make in candidates.items():
        start = time.perf_counter()
        try:
            with quiet_peers():
                runner = make()
                out = runner.infer(feeds)  # compiles torch.compile's graph
        except Exception as err:  # a peer that cannot take this model is reported, not fatal
            notes[name] = {"status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"}
            continue
        worst = max(float(np.max(np.abs(out[k] - reference[k]))) for k in reference)
        if worst > PEER_BOUND:
            notes[name] = {"status": f"outputs differ from eager by {worst:.1e} (> {PEER_BOUND:g}); not timed"}
            continue
        made[name] = runner
        notes[name] = {"status": "ok", "setup_s": time.perf_counter() - start, "max_abs_vs_eager": worst}
    return made, notes


