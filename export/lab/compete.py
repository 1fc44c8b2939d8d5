"""`python -m export compete`: each bundle's artifacts against what a user
could run instead: PyTorch eager, torch.compile (inductor) and ExecuTorch
(XNNPACK, when the optional `executorch` extra is installed).

One interleaved run per variant, the same weights and inputs, batch 1, the
same threads; medians and spread, the ratio of every contender to the best
peer, and the achieved GFLOP/s against an FP32 matrix-multiply peak measured
in the same run. Peers are checked against eager PyTorch before they are
timed, so a broken compilation is never a fast one.

The best FP32 artifact is also placed under the machine's roofline
(`roofline`, both roofs measured in the same run), whole and part by part
(each top-level module, its kernels' time from the backend's profiler): how
much of its bound it achieves and the gap in ms, which says what stands
between a figure and a goal.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import onnx
import torch

import models
import runtime
from runtime.bench import bench_interleaved
from runtime.bundle import MANIFEST, Bundle
from runtime.errors import UserError, check_at_least

from ..artifacts import ONNX_FILE
from ..contract import Exportable, node_modules
from ..onnx_export import export_onnx
from ..pipeline import BuildSettings, build
from ..quantize import graph_times
from ..settings import check_threads
from . import roofline
from .harness import COMPILE, EXECUTORCH, PEERS, Study, StudySettings, flops, of, peers

OUTSIDE = "outside any module"  # the part of the nodes no module made (a detector's keypoint extraction)


def compete_variant(bundle: Bundle, threads: int, runs: int, roofs: roofline.Roofs) -> dict[str, Any]:
    spec = bundle.spec
    variant = bundle.name
    checkpoint = (bundle.manifest.get("checkpoint") or {}).get("path")
    model = Exportable(models.from_source(spec.source, checkpoint), spec).eval()
    shape = spec.image.example[1:]
    inputs, _ = bundle.golden()
    feeds = {k: v[:1] for k, v in inputs.items()}
    example = torch.from_numpy(feeds[spec.image.name])
    made, notes = peers(model, example, threads)
    contenders = dict(made)
    with contextlib.ExitStack() as stack:
        for a in bundle.artifacts:
            contenders[f"{a.backend} {a.precision}"] = stack.enter_context(runtime.load(bundle, a.backend,
                                                                                         a.precision, threads))
        stats = bench_interleaved(contenders, feeds, warmup=5, runs=runs, rounds=5, max_seconds=5.0 * len(contenders))
    work = flops(model, shape)
    best_peer = min((n for n in made), key=lambda n: stats[n]["p50_ms"])
    artifacts = [n for n in stats if n not in made]
    best = min(artifacts, key=lambda n: stats[n]["p50_ms"])
    # FP32 apart: an FP16 IR runs in bf16 on CPUs that have it, and not on those that do not
    best_fp32 = min((n for n in artifacts if n.endswith(" fp32")), key=lambda n: stats[n]["p50_ms"])
    peak = roofs.gflops
    rows = {}
    for name, s in stats.items():
        rows[name] = {"p50_ms": s["p50_ms"], "min_ms": s["min_ms"], "p90_ms": s["p90_ms"],
                      "std_ms": s["std_ms"], "runs": s["runs"], "first_ms": s["first_ms"],
                      "vs_best_peer": stats[best_peer]["p50_ms"] / s["p50_ms"],
                      "gflops": work / s["p50_ms"] / 1e6, "of_peak": work / s["p50_ms"] / 1e6 / peak,
                      "peer": name in made}
    return {"variant": variant, "input": list(shape), "gflop": work / 1e9, "contenders": rows, "peers": notes,
            "best_artifact": best, "best_fp32": best_fp32, "best_peer": best_peer,
            "cold_start": cold_start(bundle, feeds, threads),
            "roofline": placed(bundle, model, inputs, best_fp32, stats[best_fp32]["p50_ms"], threads, runs, roofs),
            "speedup": {p: stats[p]["p50_ms"] / stats[best]["p50_ms"] for p in made},
            "fp32_speedup": {p: stats[p]["p50_ms"] / stats[best_fp32]["p50_ms"] for p in made}}


def placed(bundle: Bundle, model: Exportable, inputs: Mapping[str, np.ndarray], contender: str, wall_ms: float,
           threads: int, runs: int, roofs: roofline.Roofs) -> dict[str, Any]:
    """`contender` (an artifact) under the roofline: the bundle's graph as it runs, whole (its
    p50 in the interleaved run) and per part (kernel time from the backend's profiler)."""
    backend, precision = contender.split(" ")
    graph = onnx.load(str(bundle.path / ONNX_FILE))
    feeds = {k: v[:1] for k, v in inputs.items()}
    work = roofline.graph_work(graph, feeds)
    part_of = roofline.parts(node_modules_of(bundle, model, inputs, graph))
    with runtime.load(bundle, backend, precision, threads, profile=True) as runner:
        node_ms = graph_times(runner.node_times(feeds, max(10, runs // 5)), graph)
    kernel: dict[str, float] = {}
    for node, ms in node_ms.items():
        part = part_of.get(node) or OUTSIDE
        kernel[part] = kernel.get(part, 0.0) + ms
    parts = {part or OUTSIDE: p for part, p in roofline.places(work, part_of, roofs).items()}
    return {"contender": contender, "whole": roofline.place(work.values(), roofs).to_dict(wall_ms),
            "parts": {part: p.to_dict(kernel.get(part)) for part, p in parts.items()},
            "kernel_ms": sum(node_ms.values())}


def node_modules_of(bundle: Bundle, model: Exportable, inputs: Mapping[str, np.ndarray],
                    graph: onnx.ModelProto) -> dict[str, str]:
    """Which module made each node of the bundle's graph: the exporter's scopes (exported again, as the
    build did; simplifying keeps node names), and a rewrite's new nodes, named under the node they
    replaced, in the module the manifest records for it."""
    with tempfile.TemporaryDirectory(prefix="edge-export-compete-") as tmp:
        raw = Path(tmp) / "exported.onnx"
        export_onnx(model, inputs, raw, bundle.manifest["export"]["opset"])
        modules = node_modules(raw)
    for a in bundle.manifest["rewrites"]["applied"]:
        if a.get("module"):
            modules.update({n.name: a["module"] for n in graph.graph.node if n.name.startswith(f"{a['where']}/")})
    return modules


def cold_start(bundle: Bundle, feeds: Mapping[str, np.ndarray], threads: int) -> dict[str, dict[str, float]]:
    """Load + first inference of each artifact, in ms: without a cache, and
    with a warm one (OpenVINO's compiled model, ONNX Runtime's optimized
    graph), as on a device's second start."""
    def once(backend: str, precision: str, cache: bool) -> float:
        start = time.perf_counter()
        with runtime.load(bundle, backend, precision, threads, cache=cache) as runner:
            runner.infer(feeds)
        return (time.perf_counter() - start) * 1e3

    result = {}
    previous = os.environ.get("EDGE_EXPORT_CACHE")
    with tempfile.TemporaryDirectory(prefix="edge-export-cache-") as cache:
        os.environ["EDGE_EXPORT_CACHE"] = cache
        try:
            for a in bundle.artifacts:
                b, p = a.backend, a.precision
                row = {"no_cache_ms": once(b, p, cache=False)}
                once(b, p, cache=True)  # writes the cache
                row["warm_cache_ms"] = once(b, p, cache=True)
                result[f"{b} {p}"] = row
        finally:
            if previous is None:
                os.environ.pop("EDGE_EXPORT_CACHE")
            else:
                os.environ["EDGE_EXPORT_CACHE"] = previous
    return result


def hourglass_alone(threads: int, runs: int, peak: float) -> dict[str, Any]:
    """The standard (baseline) hourglass alone at (1, 3, 64, 64): the densest
    convolution work of the zoo, against the matrix-multiply peak."""
    module = models.create("baseline").predictor
    shape = (3, 64, 64)
    work = flops(module, shape)
    with tempfile.TemporaryDirectory(prefix="edge-export-compete-") as tmp:
        study = Study(StudySettings(threads=threads), Path(tmp), lambda _: None)
        runners = study.runners("hourglass", of(module), shape)
        stats = study.time(runners, {"hourglass": study.feeds(shape)}, runs=2 * runs)
    rows = {backend: {"p50_ms": s["p50_ms"], "gflops": work / s["p50_ms"] / 1e6,
                      "of_peak": work / s["p50_ms"] / 1e6 / peak} for (_, backend), s in stats.items()}
    return {"input": list(shape), "gflop": work / 1e9, "backends": rows,
            "best": max(rows, key=lambda b: rows[b]["gflops"])}


def built_variants(root: Path) -> list[str]:
    """The registered variants that have a bundle under `root`."""
    return [v for v in models.list_variants() if (root / v / MANIFEST).is_file()]


def ensure_bundle(variant: str, root: Path, threads: int, say: Callable[[str], None]) -> Bundle:
    """The bundle of `variant` under `root`, built first (random init) if there is none."""
    path = root / variant
    if not (path / MANIFEST).is_file():
        say(f"{variant}: no bundle at {path}; building it")
        result = build(BuildSettings(variant=variant, out=root, threads=threads))
        if not result.passed:
            raise UserError(f"the build of {variant} failed parity; see {result.bundle}/report.md")
    return Bundle.open(path)


def compete(variants: list[str], root: Path, threads: int, runs: int,
            say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    for v in variants:
        models.get_variant(v)  # unknown names fail before any work
    check_threads(threads)
    check_at_least("--runs", runs, 5)
    say("the roofs: FP32 matrix-multiply peak and copy bandwidth")
    roofs = roofline.measure(threads)
    say("the standard hourglass alone")
    hourglass = hourglass_alone(threads, runs, roofs.gflops)
    results = compete_variants(variants, root, threads, runs, roofs, say)
    return {"peak": roofs.peak, "roofs": roofs.to_dict(), "threads": threads, "batch": 1, "runs": runs,
            "hourglass": hourglass, "variants": results}


def compete_variants(variants: list[str], root: Path, threads: int, runs: int, roofs: roofline.Roofs,
                     say: Callable[[str], None]) -> list[dict[str, Any]]:
    """compete_variant for each; one that cannot be built or loaded is reported and the others still run."""
    results = []
    for v in variants:
        try:
            bundle = ensure_bundle(v, root, threads, say)
            say(f"{v}: setting up the peers and timing")
            results.append(compete_variant(bundle, threads, runs, roofs))
        except UserError as err:
            say(f"{v}: {err}")
            results.append({"variant": v, "error": str(err)})
    return results


SUMMARY_COLUMNS = ("variant", "best artifact", "p50 ms", "vs eager", "vs torch.compile", "vs ExecuTorch",
                   "GFLOP/s", "of FP32 peak", "best FP32", "FP32 p50 ms", "FP32 vs torch.compile",
                   "FP32 vs ExecuTorch", "FP32 bound", "FP32 of roofline", "FP32 gap ms")


def summary_row(v: Mapping[str, Any]) -> tuple[str, ...]:
    """One variant's best artifact and its speed-up over each peer ("-" where a peer was not timed)."""
    if "error" in v:
        return (v["variant"], f"error: {v['error']}", *["-"] * (len(SUMMARY_COLUMNS) - 2))
    best, fp32 = v["contenders"][v["best_artifact"]], v["contenders"][v["best_fp32"]]
    whole = v["roofline"]["whole"]
    return (v["variant"], v["best_artifact"], f"{best['p50_ms']:.2f}",
            *(f"{v['speedup'][p]:.2f}x" if p in v["speedup"] else "-" for p in PEERS),
            f"{best['gflops']:.1f}", f"{best['of_peak']:.0%}", v["best_fp32"], f"{fp32['p50_ms']:.2f}",
            *(f"{v['fp32_speedup'][p]:.2f}x" if p in v["fp32_speedup"] else "-" for p in (COMPILE, EXECUTORCH)),
            f"{whole['bound']} {whole['bound_ms']:.2f} ms", f"{whole['share']:.0%}", f"{whole['gap_ms']:.2f}")


PART_COLUMNS = ("part", "bound", "GFLOP", "MB moved", "flop/B", "bound ms", "kernel ms", "of roofline", "gap ms")


def part_rows(v: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The best FP32 artifact's parts under the roofline, the largest gap first."""
    parts = v["roofline"]["parts"]
    rows = []
    for name, p in sorted(parts.items(), key=lambda kv: -(kv[1].get("gap_ms") or 0.0)):
        timed = p.get("measured_ms") is not None
        rows.append((name, p["bound"], f"{p['gflop']:.3f}", f"{p['mbytes']:.2f}", f"{p['intensity']:.1f}",
                     f"{p['bound_ms']:.3f}", f"{p['measured_ms']:.3f}" if timed else "-",
                     f"{p['share']:.0%}" if timed else "-", f"{p['gap_ms']:.2f}" if timed else "-"))
    return rows
