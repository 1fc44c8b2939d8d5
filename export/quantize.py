"""Stage: INT8 post-training quantization, and the policy that decides what ships.

The tools:
- ONNX Runtime: `quant_pre_process`, then static QDQ quantization with
  per-channel S8 weights, U8 activations and the chosen calibration method
  -> `model.int8.onnx`. One calibration gives the ranges of every plan.
- each backend's own tool where it has one (`export/backends/<name>.py`): OpenVINO's is NNCF's
  post-training quantization of the FP32 IR -> `openvino/model.int8.xml|bin`.

A `Plan` says what stays in FP32 (ONNX node names and op types). The full
plan quantizes everything the tools quantize by default (but the contract's
`keep_fp32` modules); the selective plan also keeps the depthwise convolutions,
the heads (convolutions whose outputs are returned or reshaped: a keypoint
heatmap goes through a softmax at temperature 0.1, which magnifies any rounding
of its logits) and the keypoint extraction (softmax and the contractions after it).

The policy (`search`), per backend, within a time budget:
1. the full plan, measured: shipped if it is within the bounds and faster than FP32;
2. sensitivity: for every quantized layer (the quantized nodes made in one PyTorch
   module), the damage when only that layer is INT8, run on the backend, and its
   share of the FP32 twin's time (the backend's profiler), which shares out the
   milliseconds the full plan saves;
3. the frontier: layers kept in FP32 in order of damage per millisecond saved,
   plans of 1, 2, 4, ... layers until one is within the bounds,
   then bisection to the fewest that are; the selective plan is one more point.
Every plan is timed interleaved with the FP32 twin; the attempt within the
bounds with the largest speed-up over its twin ships (the ratio, measured in
one run, holds when the machine's load changes between attempts; a p50 alone does not).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from runtime.bench import bench_interleaved, difference
from runtime.bundle import Artifact
from runtime.compare import Parity, Truth, check_artifact, judged_parity
from runtime.backends import REGISTRY
from runtime.backends.base import Backend, Runner
from runtime.backends.onnxruntime import BACKEND as ONNX_RUNTIME
from runtime.tasks import Task

from .calibration import CALIB_METHODS
from .quiet import quiet

ONNX_INT8 = "model.int8.onnx"  # a QDQ model's file name
RESHAPING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose")  # move quantized values, compute nothing
KEEP_FP32 = ("Softmax", "MatMul", "Div")  # op types the selective plan keeps in FP32, besides its convolutions
MIN_MS = 0.01  # a layer that costs less than this to keep in FP32 is counted as costing this
NORMS = ("LayerNormalization", "InstanceNormalization", "BatchNormalization")


@dataclass(frozen=True)
class Plan:
    """What an INT8 model leaves in FP32 (or, with `only`, the few nodes it quantizes)."""

    name: str
    keep_nodes: tuple[str, ...] = ()
    keep_types: tuple[str, ...] = ()
    only: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kept_fp32": {"nodes": list(self.keep_nodes), "op_types": list(self.keep_types)},
                **({"only": list(self.only)} if self.only else {})}


def full_plan(keep: Sequence[str] = ()) -> Plan:
    return Plan("full", tuple(keep))


def selective_plan(model, keep: Sequence[str] = ()) -> Plan:
    """`model`: the `onnx.ModelProto` being quantized."""
    return Plan("selective", tuple(dict.fromkeys([*kept_convs(model), *keep])), KEEP_FP32)


def layers_plan(keep: Sequence[str], nodes: Sequence[str], layers: int = 1) -> Plan:
    """The full plan with `nodes` (those of `layers` layers) kept in FP32 too."""
    return Plan(f"{layers} layer{'s' * (layers != 1)} in FP32", tuple(dict.fromkeys([*keep, *nodes])))


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


def one_at_a_time(feeds: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(len(next(iter(feeds.values()))))]


class Quantizer(Protocol):
    backend: str
    method: str

    def quantize(self, plan: Plan, dst: Path) -> dict[str, Any]: ...


class OnnxRuntimeQuantizer:
    """QDQ models of one ONNX model, every plan quantized with the ranges of one calibration: ONNX Runtime's
    INT8 artifacts, and the models every other backend's plans are made from."""

    backend = ONNX_RUNTIME.name

    def __init__(self, fp32: Path, data: Mapping[str, np.ndarray], method: str, work: Path, tag: str = ""):
        """`tag` tells this quantizer's attempts apart (e.g. "after QAT")."""
        from onnxruntime.quantization import CalibrationMethod
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if method not in CALIB_METHODS:
            raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(CALIB_METHODS)}")
        self.method = f"{method}, {tag}" if tag else method
        self.calibration = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                            "percentile": CalibrationMethod.Percentile}[method]
        work.mkdir(parents=True, exist_ok=True)
        self.pre, self.ranges = work / "pre.onnx", work / f"ranges.{method}.json"
        # quantize_static builds its entropy calibrator with as many histogram bins as quantized
        # bins (128/128), which leaves one threshold to try: the min-max one. Calibrate entropy
        # with 2048 bins here; every method's ranges are computed once and handed to each plan.
        # (histograms are merged every 16 samples to bound memory; min-max needs no such bound)
        options = {"minmax": {}, "entropy": {"num_bins": 2048, "num_quantized_bins": 128,
                                             "max_intermediate_outputs": 16},
                   "percentile": {"max_intermediate_outputs": 16}}[method]
        with quiet(""):  # ONNX Runtime's quantization tools log their progress on the root logger
            quant_pre_process(str(fp32), str(self.pre), skip_symbolic_shape=True)
            self.model = onnx.load(str(self.pre))
            if not self.ranges.is_file():
                op_types = sorted({n.op_type for n in self.model.graph.node})
                calibrator = create_calibrator(self.pre, op_types, augmented_model_path=str(work / f"aug.{method}.onnx"),
                                               calibrate_method=self.calibration,
                                               extra_options=options)
                calibrator.collect_data(_Reader(data))
                save_tensors_data(calibrator.compute_data(), self.ranges)
        self.kept_by_tool = _norms_with_shaped_bias(self.model)

    def layers(self, quantized, modules: Mapping[str, str]) -> list[tuple[str, tuple[str, ...]]]:
        """The layers of the sensitivity pass, in graph order: (name, its nodes). A layer is
        the nodes the full plan's QDQ model `quantized` (an `onnx.ModelProto`) feeds from a
        DequantizeLinear, but for reshaping ops, grouped by the PyTorch module they were made
        in (`modules`: node -> module path); a node outside any module is a layer alone."""
        dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        fed = {n.name for n in quantized.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
               and any(i in dequantized for i in n.input)}
        groups: dict[str, list[str]] = {}
        for node in self.model.graph.node:
            if node.name in fed and node.op_type not in RESHAPING:
                groups.setdefault(modules.get(node.name, f"{node.op_type} {node.name}"), []).append(node.name)
        return [(name, tuple(nodes)) for name, nodes in groups.items()]

    def quantize(self, plan: Plan, dst: Path) -> dict[str, Any]:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        present = {n.name for n in self.model.graph.node}
        op_types = sorted({n.op_type for n in self.model.graph.node} - set(plan.keep_types))
        dst.parent.mkdir(parents=True, exist_ok=True)
        with quiet(""):
            quantize_static(str(self.pre), str(dst), None, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=self.calibration, calibration_cache_path=self.ranges,
                            nodes_to_exclude=[n for n in (*plan.keep_nodes, *self.kept_by_tool) if n in present],
                            nodes_to_quantize=list(plan.only) or None, op_types_to_quantize=op_types)
        done = {"tool": "onnxruntime.quantization.quantize_static (QDQ, per-channel S8 weights, U8 activations)",
                "method": self.method, **plan.to_dict()}
        if self.kept_by_tool:
            done["kept_fp32_by_tool"] = {"nodes": list(self.kept_by_tool), "why": KEPT_BY_TOOL}
        return done


KEPT_BY_TOOL = ("a normalization whose scale and bias span more than the channels (LayerNorm over C, H, W): "
                "quantize_static's per-channel pass cannot fit their int32 bias, and ONNX Runtime has no "
                "INT8 kernel for it, so it runs in FP32 between its quantized neighbours")


def _norms_with_shaped_bias(model) -> tuple[str, ...]:
    """The normalization nodes whose bias is an initializer of more than one dimension: ONNX Runtime
    1.2x's quantize_static quantizes their scale per channel along axis 1 and then fails to adjust the
    weight scale for the int32 bias (it compares a whole row of the bias as if it were one number)."""
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    return tuple(n.name for n in model.graph.node
                 if n.op_type in NORMS and len(n.input) > 2 and ranks.get(n.input[2], 1) > 1)


class _Reader(CalibrationDataReader):
    """Calibration feeds one sample at a time, as ONNX Runtime's calibrators read them."""

    def __init__(self, data: Mapping[str, np.ndarray]):
        self.items = iter(one_at_a_time(data))

    def get_next(self):
        return next(self.items, None)


def quantize_onnxruntime(fp32: Path, dst: Path, data: Mapping[str, np.ndarray], method: str, plan: str,
                         keep: Sequence[str] = ()) -> dict[str, Any]:
    """`fp32` quantized for ONNX Runtime into `dst` by the plan named `plan` ("full" or "selective")."""
    with tempfile.TemporaryDirectory(prefix="edge-export-quant-") as work:
        quantizer = OnnxRuntimeQuantizer(fp32, data, method, Path(work))
        chosen = full_plan(keep) if plan == "full" else selective_plan(quantizer.model, keep)
        return quantizer.quantize(chosen, dst)


# ---------------------------------------------------------------- the policy


def damage(parity: Parity) -> float:
    """How far an INT8 model's figures have gone towards their bounds: 1.0 is at the
    bound. The task figures where the artifact has task bounds, and its drops on the
    labelled images where it has an allowed drop; else the tensors'."""
    figures = []
    for name, (kind, limit) in parity.task_bounds.items():
        value = parity.task.get(name)
        figures.append(float("inf") if value is None else value / limit if kind == "max"
                       else (1 - value) / (1 - limit))
    for name, limit in parity.max_drop.items():
        drop = parity.truth.get("drop", {}).get(name)
        figures.append(drop / limit if drop is not None and drop == drop else float("inf"))
    return max(figures or [o.max_rel / o.bound for o in parity.outputs])


@dataclass
class Judge:
    """How a candidate INT8 model is measured on one backend: against PyTorch on the
    artifact's sets, and timed interleaved against another runner."""

    artifact: Artifact  # its bounds, task bounds and the set it is judged on
    sets: Mapping[str, tuple[dict, dict]]
    task: Task
    open: Callable[..., Runner]  # (a model file, profile=False) -> a runner on the backend
    fp32: Path  # the FP32 twin's file
    warmup: int
    runs: int
    own: Path | None = None  # the INT8 artifact's own file (the full plan's model)
    truth: Truth | None = None  # the labelled images, where the build has them (`--data`)

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return {k: v[:1] for k, v in self.sets["golden"][0].items()}

    def parity(self, runner: Runner, every_set: bool = True) -> Parity:
        """On every set (the judged one and every other size), or on the judged set alone."""
        if every_set:
            return check_artifact(runner, self.artifact, self.sets, self.task, self.truth)
        return judged_parity(runner, self.artifact, self.sets, self.task, self.truth)

    def race(self, runner: Runner, fp32: Runner) -> tuple[dict, dict, dict]:
        """The INT8 runner against its FP32 twin, interleaved: their latencies, and the difference of
        their p50s (INT8 over FP32; undecided when the machine was busy)."""
        times: dict[str, list[float]] = {}
        lat = bench_interleaved({"int8": runner, "fp32": fp32}, self.feeds, self.warmup, self.runs, times=times)
        return lat["int8"], lat["fp32"], difference(times["fp32"], times["int8"], lat["fp32"]["others_cores"])

    def versus_fp32(self, attempt: "Attempt", fp32: Runner) -> dict[str, Any]:
        """The attempt raced again against its FP32 twin, and the bootstrap interval of the ratio of
        their p50s (INT8 over FP32): whether it is really slower, really faster, or undecided."""
        with self.open(attempt.file or self.own) as runner:
            return self.race(runner, fp32)[2]


@dataclass
class Attempt:
    """One plan measured on one backend."""

    plan: Plan
    method: str
    parity: Parity
    latency: dict[str, Any]
    fp32_p50_ms: float
    file: Path | None = None  # where the candidate's model is (None: the artifact's own file)
    made: dict[str, Any] = field(default_factory=dict)  # how the quantizer made it
    versus: dict[str, Any] | None = None  # `runtime.bench.difference` of its p50 over FP32's, as it was raced
    shipped: bool = False

    @property
    def p50_ms(self) -> float:
        return self.latency["p50_ms"]

    @property
    def speedup(self) -> float:
        return self.fp32_p50_ms / self.p50_ms

    @property
    def damage(self) -> float:
        return damage(self.parity)

    @property
    def problems(self) -> list[str]:
        if self.versus and self.versus["busy"]:  # a speed-up measured on a busy machine decides nothing
            speed = [f"its speed against FP32 is undecided: other processes held {self.versus['others_cores']:.2f} "
                     "cores on average while it was timed (build on a quiet machine to decide)"]
        elif self.p50_ms > self.fp32_p50_ms:
            speed = [f"slower than FP32 ({self.p50_ms:.2f} vs {self.fp32_p50_ms:.2f} ms p50)"]
        elif self.versus is not None and not self.versus["real"]:  # a p50 a hair below FP32's is no speed-up
            low, high = self.versus["interval"]
            speed = [f"not surely faster than FP32 ({self.p50_ms:.2f} vs {self.fp32_p50_ms:.2f} ms p50; the 95% "
                     f"interval of their ratio, {low:.2f} to {high:.2f}, holds 1)"]
        else:
            speed = []
        return self.parity.failures() + speed

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.name, "kept_fp32": len(self.plan.keep_nodes), "method": self.method,
                "p50_ms": self.p50_ms, "fp32_p50_ms": self.fp32_p50_ms, "speedup": self.speedup,
                "task": self.parity.task, "damage": self.damage, "passed": self.passed, "problems": self.problems,
                "shipped": self.shipped, "parity": self.parity.to_dict(), "latency": dict(self.latency),
                "versus_fp32": self.versus}


@dataclass
class Layer:
    """One quantized layer: the damage when only it is INT8, and its share of the FP32 time."""

    module: str
    nodes: tuple[str, ...]
    op_types: tuple[str, ...]
    damage: float  # only this layer in INT8 (1.0 = at the bound)
    fp32_ms: float  # its nodes' kernel time in the FP32 twin, profiled
    ms_saved: float  # the full plan's saving over FP32, shared out by FP32 time
    task: dict[str, float]

    @property
    def per_ms(self) -> float:
        return self.damage / max(self.ms_saved, MIN_MS)

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "nodes": list(self.nodes), "op_types": list(self.op_types),
                "damage": self.damage, "fp32_ms": self.fp32_ms, "ms_saved": self.ms_saved, "per_ms": self.per_ms,
                "task": self.task}


@dataclass
class Search:
    """What the INT8 policy tried on one backend and what it ships."""

    backend: str
    method: str
    budget_s: float
    attempts: list[Attempt] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)  # layers the budget left no time to measure
    stopped: str = ""
    spent_s: float = 0.0
    full_vs_fp32: dict[str, Any] | None = None  # the full plan raced again where it first measured slower

    @property
    def shipped(self) -> Attempt | None:
        return next((a for a in self.attempts if a.shipped), None)

    def add(self, other: "Search", prefix: str) -> None:
        """Put `other`'s attempts (plan names prefixed) and time on this search's record; the
        attempt within the bounds with the largest speed-up over FP32, of both, is the one shipped."""
        for a in other.attempts:
            a.plan = replace(a.plan, name=f"{prefix} {a.plan.name}")
        self.attempts += other.attempts
        self.spent_s += other.spent_s
        self.budget_s += other.budget_s
        self.stopped += f"; {prefix}: {other.stopped}"
        self.ship_best()

    def ship_best(self) -> None:
        """Mark the attempt within the bounds with the largest speed-up over FP32 as shipped (and only it)."""
        passing = [a for a in self.attempts if a.passed]
        for a in self.attempts:
            a.shipped = False
        if passing:
            max(passing, key=lambda a: a.speedup).shipped = True

    def reason(self) -> str:
        """Why nothing ships, in one line: the closest plan's problems (the report lists every plan's)."""
        closest = min(self.attempts, key=lambda a: (a.damage, -a.speedup))
        return (f"{len(self.attempts)} INT8 plan{'s' * (len(self.attempts) != 1)} tried ({self.stopped}), none "
                f"within the bounds and faster than FP32; the closest, {closest.plan.name} plan ({closest.method}, "
                f"{closest.speedup:.2f}x): {', '.join(closest.problems)}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "budget_s": self.budget_s, "spent_s": round(self.spent_s, 1),
                "stopped": self.stopped, "attempts": [a.to_dict() for a in self.attempts],
                "sensitivity": [x.to_dict() for x in sorted(self.layers, key=lambda x: -x.per_ms)],  # as ranked
                "unmeasured": self.unmeasured, "full_vs_fp32": self.full_vs_fp32}


def known_plans(full: Attempt, fp32: Runner, quantizer: Quantizer, layer_source: OnnxRuntimeQuantizer,
                judge: Judge, keep: Sequence[str], borrowed: Sequence[Plan], work: Path, budget_s: float) -> Search:
    """The policy on a backend that keeps layers in float but cannot measure the sensitivity pass's QDQ
    models: the full plan; past it, the selective plan and `borrowed` (the plans other backends' searches
    shipped: the same layers kept in float), each made by the backend's tool and measured on it. The
    attempt within the bounds with the largest speed-up over FP32 ships."""
    run = _Searcher(Search(quantizer.backend, quantizer.method, budget_s, [full]), quantizer, layer_source, judge,
                    fp32, tuple(keep), work)
    if full.passed:
        return run.finish("the full plan is within the bounds and faster than FP32")
    for plan in [selective_plan(layer_source.model, keep), *borrowed]:
        if run.left() <= 0:
            return run.finish(f"the budget of {budget_s:.0f} s ran out")
        run.attempt(plan)
    return run.finish("the selective plan and the plans the other backends shipped were tried (no sensitivity "
                      f"pass: {quantizer.backend} runs no ONNX)")


def search(full: Attempt, fp32: Runner, quantizer: Quantizer, layer_source: OnnxRuntimeQuantizer,
           judge: Judge, modules: Mapping[str, str], keep: Sequence[str], work: Path, budget_s: float) -> Search:
    """The INT8 policy on one backend (see the module's docstring). `full`: the full plan,
    already measured; `fp32`: its FP32 twin's runner; `quantizer` makes the backend's
    plans; `layer_source` the QDQ models of the sensitivity pass (every backend runs
    them); `modules`: ONNX node -> the PyTorch module it came from; `keep`: nodes no
    plan quantizes. Candidates are written under `work`; the shipped one is the
    attempt marked `shipped` (its `file` is None when it is the full plan itself)."""
    run = _Searcher(Search(quantizer.backend, quantizer.method, budget_s, [full]), quantizer, layer_source, judge,
                    fp32, tuple(keep), work)
    if full.passed:
        return run.finish("the full plan is within the bounds and faster than FP32")
    if not full.speedup > 1:  # slower at first: raced again, and judged on the interval of the ratio
        versus = run.found.full_vs_fp32 = judge.versus_fp32(full, fp32) if full.file or judge.own else None
        if versus is None or (versus["real"] and versus["ratio_p50"] > 1):
            # keeping layers in FP32 would only slow it further, but for the selective plan's depthwise convs
            run.attempt(selective_plan(layer_source.model, keep))
            return run.finish("the full plan is slower than FP32" + (
                f" (its p50 {versus['ratio_p50']:.2f}x, 95% interval {versus['interval'][0]:.2f} to "
                f"{versus['interval'][1]:.2f})" if versus else "") + "; the selective plan was tried")
        # undecided, or faster when raced again: not acted on as slower; the search goes on
    layers = run.sensitivity(full, modules)
    return run.finish(run.frontier(layers))


@dataclass
class _Searcher:
    """One backend's search under way: its record, its clock, and how its plans are made and measured."""

    found: Search
    quantizer: Quantizer
    layer_source: OnnxRuntimeQuantizer
    judge: Judge
    fp32: Runner
    keep: tuple[str, ...]
    work: Path
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.found.budget_s - (time.monotonic() - self.start)

    def attempt(self, plan: Plan) -> Attempt:
        """Make `plan`'s model, judge it against PyTorch and time it against the FP32 twin."""
        name = Path(REGISTRY[self.quantizer.backend].files["int8"]).name
        dst = self.work / self.quantizer.backend / plan.name.replace(" ", "-") / name
        made = self.quantizer.quantize(plan, dst)
        with self.judge.open(dst) as runner:
            parity = self.judge.parity(runner)
            lat, twin, versus = self.judge.race(runner, self.fp32)
        tried = Attempt(plan, self.quantizer.method, parity, lat, twin["p50_ms"], dst, made, versus)
        self.found.attempts.append(tried)
        return tried

    def finish(self, why: str) -> Search:
        self.found.stopped, self.found.spent_s = why, time.monotonic() - self.start
        self.found.ship_best()
        return self.found

    def sensitivity(self, full: Attempt, modules: Mapping[str, str]) -> list[tuple[str, tuple[str, ...]]]:
        """Each layer alone in INT8 on this backend, and its share of the FP32 time; the layers
        (module, nodes) ranked by damage per ms saved, those the budget left unmeasured last."""
        source, judge = self.layer_source, self.judge
        reference = self.work / "sensitivity" / "full.onnx"  # the QDQ models are the same for every backend
        if not reference.is_file():
            source.quantize(full_plan(self.keep), reference)
        layers = source.layers(onnx.load(str(reference)), modules)
        with judge.open(judge.fp32, profile=True) as profiled:
            node_ms = graph_times(profiled.node_times(judge.feeds, max(10, judge.runs // 5)), source.model)
        layer_ms = layer_times(node_ms, layers, source.model)
        saving = max(full.fp32_p50_ms - full.p50_ms, 0.0)
        op_type = {n.name: n.op_type for n in source.model.graph.node}
        for i, (module, nodes) in enumerate(layers):
            if self.left() < 0.5 * self.found.budget_s:  # the frontier gets at least half the budget
                self.found.unmeasured = [m for m, _ in layers[i:]]
                break
            dst = self.work / "sensitivity" / f"layer-{i}.onnx"
            if not dst.is_file():
                source.quantize(Plan(f"only {module}", only=nodes), dst)
            with judge.open(dst) as runner:
                parity = judge.parity(runner, every_set=False)
            self.found.layers.append(Layer(module, nodes, tuple(dict.fromkeys(op_type[n] for n in nodes)),
                                           damage(parity), layer_ms[module],
                                           saving * layer_ms[module] / (sum(layer_ms.values()) or 1.0), parity.task))
        by_module = dict(layers)
        ranked = [x.module for x in sorted(self.found.layers, key=lambda x: -x.per_ms)] + self.found.unmeasured
        return [(m, by_module[m]) for m in ranked]

    def frontier(self, ranked: list[tuple[str, tuple[str, ...]]]) -> str:
        """The fewest layers kept in FP32, in ranked order, that bring the plan within the
        bounds: 1, 2, 4, ... (all but one at most) then bisection; the selective plan as one
        more point. Why it stopped."""
        def keeping(k: int) -> Attempt:
            return self.attempt(layers_plan(self.keep, [n for _, nodes in ranked[:k] for n in nodes], k))

        most = len(ranked) - 1  # every layer in FP32 is not an INT8 model
        k, failing, fewest = 1, 0, None
        while k <= most and self.left() > 0:
            if keeping(k).damage <= 1:
                fewest = k
                break
            failing = k
            if k == most:
                break
            k = min(2 * k, most)
        while fewest is not None and fewest - failing > 1 and self.left() > 0:
            middle = (failing + fewest) // 2
            if keeping(middle).damage <= 1:
                fewest = middle
            else:
                failing = middle
        if self.left() > 0:
            self.attempt(selective_plan(self.layer_source.model, self.keep))
        if self.left() <= 0:
            return f"the budget of {self.found.budget_s:.0f} s ran out"
        if fewest is None:
            return "no plan on the frontier is within the bounds"
        return f"the fewest layers in FP32 within the bounds: {fewest} of {len(ranked)}"


def graph_times(times: Mapping[str, float], model) -> dict[str, float]:
    """A backend profiler's kernel times keyed by the ONNX nodes of `model` they ran: a
    node's own name, or its output's with ONNX Runtime's `_nchwc` suffix (its layout rewrite)."""
    names = {n.name for n in model.graph.node}
    by_output = {o: n.name for n in model.graph.node for o in n.output}
    found: dict[str, float] = {}
    for name, ms in times.items():
        node = name if name in names else by_output.get(name.removesuffix("_nchwc"))
        if node is not None:
            found[node] = found.get(node, 0.0) + ms
    return found


def layer_times(node_ms: Mapping[str, float], layers: Sequence[tuple[str, Sequence[str]]], model) -> dict[str, float]:
    """Each layer's kernel time: its nodes', and that of a node outside every layer that consumes
    a layer's output (a fused kernel is timed under its last node: Conv + Relu under the Relu)."""
    layer_of = {n: module for module, nodes in layers for n in nodes}
    producer = {o: n.name for n in model.graph.node for o in n.output}
    inputs = {n.name: list(n.input) for n in model.graph.node}
    times = dict.fromkeys((module for module, _ in layers), 0.0)
    for node, ms in node_ms.items():
        module = layer_of.get(node) or next((layer_of[producer[i]] for i in inputs.get(node, [])
                                             if producer.get(i) in layer_of), None)
        if module is not None:
            times[module] += ms
    return times


def install(attempt: Attempt, artifact: Path, backend: Backend) -> None:
    """Put a candidate's model where the artifact's file is (every file it is made of: an IR's weights too)."""
    if attempt.file is None:
        return
    parts = zip(backend.parts(attempt.file.name), backend.parts(artifact.name))
    for src, dst in parts:  # a rename: a runner that maps the old file keeps its own copy
        os.replace(attempt.file.with_name(src), artifact.with_name(dst))
