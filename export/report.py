"""Stage: the build's table, as rows shared by the terminal and report.md."""

from __future__ import annotations

from typing import Any

from runtime.backends import REGISTRY
from runtime.bench import BUSY_CORES
from runtime.cli import peak_text
from runtime.compare import truth_text
from runtime.tasks import task_of

from .benchmark import EAGER

COLUMNS = ("artifact", "runtime", "parity", "max rel err", "bound", "min cosine", "task vs PyTorch",
           "size", "peak MB", "p50 ms", "p90 ms", "runs", "vs eager", "vs FP32")
# p90 this far above p50 on any contender: the machine was busy while it was timed
BUSY_SPREAD = 1.3
LABELS_COLUMN = "on the labels"  # with labelled images (`build --data`), after "task vs PyTorch"


def columns(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The build table's columns: `COLUMNS`, and the figures on the labelled images where the build had them."""
    if not manifest.get("evaluation"):
        return COLUMNS
    at = COLUMNS.index("task vs PyTorch") + 1
    return (*COLUMNS[:at], LABELS_COLUMN, *COLUMNS[at:])


def rows(manifest: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row for PyTorch eager, then one per artifact; the worst output of
    each artifact (largest error relative to its bound) stands for it."""
    eager = manifest["latency"][EAGER]
    describe = task_of(manifest["spec"]).describe
    memory = (manifest.get("memory") or {}).get("artifacts", {})
    evaluation = manifest.get("evaluation")
    labels = [", ".join(f"{name} {evaluation['reference'][name]:.4f}" for name in evaluation["max_drop"])
              ] if evaluation else []
    table = [("PyTorch eager", "pytorch fp32", "reference", "-", "-", "-", "-", *labels, "-", "-",
              f"{eager['p50_ms']:.2f}", f"{eager['p90_ms']:.2f}", str(eager["runs"]), "1.00x", "-")]
    for art in manifest["artifacts"]:
        parity, lat = art["parity"], manifest["latency"][art["key"]]
        twin = manifest["latency"].get(f"{art['backend']}/fp32")
        outs = parity["outputs"].values()
        worst = max(outs, key=lambda o: o["max_rel"] / o["bound"])
        table.append((art["file"], f"{art['backend']} {art['precision']}", "pass" if parity["passed"] else "FAIL",
                      f"{worst['max_rel']:.1e} ({worst['name']})", f"{worst['bound']:.1e}",
                      f"{min(o['cosine'] for o in outs):.6f}", describe(parity["task"]),
                      *([truth_text(parity.get("truth"), evaluation["max_drop"])] if evaluation else []),
                      size_text(art["bytes"]), peak_text(memory[art["key"]]) if art["key"] in memory else "-",
                      f"{lat['p50_ms']:.2f}", f"{lat['p90_ms']:.2f}", str(lat["runs"]),
                      f"{eager['p50_ms'] / lat['p50_ms']:.2f}x",
                      f"{twin['p50_ms'] / lat['p50_ms']:.2f}x" if twin else "-"))
    return table


def evaluation_lines(manifest: dict[str, Any]) -> list[str]:
    """report.md's section on the labelled images: where they came from, the judge, every figure per artifact."""
    e = manifest.get("evaluation")
    if not e:
        return []
    names = list(task_of(manifest["spec"]).truth_metrics)
    table = [("PyTorch FP32", *(f"{e['reference'][n]:.4f}" for n in names), "-", "reference")]
    for a in manifest["artifacts"] + manifest["rejected"]:
        truth = (a.get("parity") or {}).get("truth")
        if not truth:
            continue
        verdict = ("judged here, shipped" if a.get("judged_on") == "truth" else "reported") if a in manifest[
            "artifacts"] else "not shipped"
        table.append((f"{a['backend']} {a['precision']}", *(f"{truth['figures'][n]:.4f}" for n in names),
                      ", ".join(f"{n} {truth['drop'][n]:+.4f}" for n in e["max_drop"]), verdict))
    skipped = e["skipped"]
    return ["## Accuracy on the labelled images", "",
            f"{e['images']} labelled images of {e['data']} ({e['available']} pairs there"
            + (f"; {len(skipped)} files skipped: " + "; ".join(f"{s['file']} {s['why']}" for s in skipped[:5])
               + (" ..." if len(skipped) > 5 else "") if skipped else "") + f"), at the model's input size "
            f"{'x'.join(map(str, e['size']))}, ride in the bundle (golden.npz, set `truth`); ignore index "
            f"{e['ignore_index']}{', label ids mapped' if e['label_map'] else ''}. {e['judge']}: allowed drop "
            + ", ".join(f"{n} {d:g}" for n, d in e["max_drop"].items())
            + ". `python -m runtime verify` checks the same figures on a device.", "",
            markdown_table(("artifact", *names, "drop", "verdict"), table), "",
            f"![each class's IoU, or each keypoint's error and their histogram, on the labelled images]({LABELS_PLOT})", ""]


LABELS_PLOT = "labels.png"


def _save(fig, path) -> bool:
    """Write a figure as a PNG at `path` and let it go."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _grouped_bars(ax, groups: list[str], rows: dict[str, list[float | None]]) -> None:
    """One bar per row in each group, side by side (None: no bar), with a legend."""
    import numpy as np

    width = 0.8 / len(rows)
    for i, (row, values) in enumerate(rows.items()):
        ax.bar(np.arange(len(groups)) + (i - (len(rows) - 1) / 2) * width,
               [np.nan if v is None else v for v in values], width, label=row)
    ax.set_xticks(range(len(groups)), groups, fontsize=8, rotation=30 if len(groups) > 5 else 0)
    ax.legend(fontsize=7)


def plot_labels(manifest: dict[str, Any], path) -> bool:
    """The labelled images' figures per class (a segmenter: IoU) or per keypoint (a detector: mean error in
    pixels of the input, beside a histogram of the keypoints' errors), PyTorch FP32 and every artifact side
    by side, as a PNG at `path`; False where the build had no labels."""
    e = manifest.get("evaluation")
    if not e:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"PyTorch FP32": e["reference"]} | {
        f"{a['backend']} {a['precision']}" + ("" if a in manifest["artifacts"] else " (not shipped)"):
        a["parity"]["truth"]["figures"] for a in manifest["artifacts"] + manifest["rejected"]
        if (a.get("parity") or {}).get("truth")}
    task = manifest["spec"]["task"]
    key, what = (("iou", "IoU") if "iou" in e["reference"] else ("error_px_per_keypoint", "mean error, px"))
    names = task.get("names") or [str(i) for i in range(len(e["reference"][key]))]
    histogram = "error_px_histogram" in e["reference"]
    fig, axes = plt.subplots(1, 2 if histogram else 1, figsize=(max(6.0, 0.9 * len(names) + 2) + 5 * histogram, 4),
                             dpi=110, squeeze=False)
    _grouped_bars(axes[0][0], names, {row: figures[key] for row, figures in rows.items()})
    axes[0][0].set_ylabel(f"{what} on {e['images']} labelled images")
    axes[0][0].set_title(f"{manifest['name']}: {what} per {'class' if key == 'iou' else 'keypoint'}, at the model's "
                         "input size", fontsize=9)
    if histogram:  # how the keypoints' errors spread: a mean hides a few far misses
        edges = task_of(manifest["spec"]).ERROR_BINS_PX
        bins = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges, edges[1:])] + [f"{edges[-1]:g}+"]
        _grouped_bars(axes[0][1], bins, {row: figures["error_px_histogram"] for row, figures in rows.items()})
        axes[0][1].set_xlabel("error, px of the input")
        axes[0][1].set_ylabel("labelled keypoints")
        axes[0][1].set_title("histogram of the keypoints' errors", fontsize=9)
    return _save(fig, path)


def memory_lines(manifest: dict[str, Any]) -> list[str]:
    """report.md's memory section: each artifact's resident set by phase, in a fresh process."""
    memory = manifest.get("memory")
    if not memory:
        return []
    names = {"python": "python + numpy", "import": "backend imported", "load": "loading", "first": "first inference",
             "runs": f"over {memory['runs']} runs"}
    table = []
    for key, found in memory["artifacts"].items():
        if "phases" not in found:
            table.append((key.replace("/", " "), *["-"] * len(names), found.get("error", "")))
            continue
        table.append((key.replace("/", " "), *(f"{found['phases'][p]['peak_mb']:.0f}" for p in names),
                      f"{found['phases']['runs']['pss_mb']:.0f}" if found["phases"]["runs"].get("pss_mb") else "-"))
    return ["## Memory", "",
            "Peak resident set (MB) in each phase, each artifact in a fresh Python process on the build machine, "
            "as the kernel counts it (VmHWM, reset at each phase); the last column is the proportional set size "
            "after the runs (shared libraries counted by share). `python -m runtime bench` measures it on a device.",
            "", markdown_table(("artifact", *names.values(), "PSS after"), table), ""]


def size_text(n: int) -> str:
    """Bytes on disk in two or three figures: 41 kB, 1.3 MB, 24 MB."""
    for unit, step in (("MB", 1e6), ("kB", 1e3)):
        if n >= step:
            return f"{n / step:.1f} {unit}" if n < 10 * step else f"{n / step:.0f} {unit}"
    return f"{n} B"


def threads(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def table_title(manifest: dict[str, Any]) -> str:
    """The results table's title: what was compared, and on how many threads every row ran."""
    return (f"{manifest['name']}: parity against PyTorch and latency (batch 1, every row on "
            f"{threads(manifest['benchmark']['threads'])}, PyTorch eager too)")


def results_text(manifest: dict[str, Any], passed: bool) -> str:
    """The build's results in plain text, as `export.build` prints them: the table, then the
    busy-machine warning, what was not shipped and the recommendation."""
    from runtime.cli import format_table

    busy = busy_line(manifest)
    lines = [table_title(manifest), format_table(list(columns(manifest)), rows(manifest)),
             *([f"warning: {busy}"] if busy else []),
             *(f"not shipped: {r['reason']}" for r in manifest.get("rejected", [])),
             *([recommended_line(manifest)] if passed else [])]
    return "\n".join(lines)


def busy_line(manifest: dict[str, Any]) -> str:
    """A warning when the timings spread so widely that the machine was busy, else ''."""
    spread = {key: lat["p90_ms"] / lat["p50_ms"] for key, lat in manifest["latency"].items()}
    worst = max(spread, key=spread.get)
    held = next(iter(manifest["latency"].values())).get("others_cores")
    if held is not None and held >= BUSY_CORES:
        return (f"other processes held {held:.2f} cores on average while the timings ran: the machine was busy, "
                "so the speed ratios are less certain (INT8 ships no speed-up measured so, and tuning keeps the "
                "defaults); build again on an idle machine to confirm them")
    if spread[worst] < BUSY_SPREAD:
        return ""
    return (f"the timings spread widely (p90 is {spread[worst]:.2f}x p50 for {worst}): the machine was busy "
            "while they ran, so the speed ratios are less certain; build again on an idle machine to confirm them")


def bundle_summary(manifest: dict[str, Any]) -> dict[str, str]:
    """What a bundle holds and was built with, in a few words per item (to tell two bundles apart)."""
    checkpoint = manifest.get("checkpoint")
    quantization = manifest.get("quantization")
    return {
        "artifacts": ", ".join(a["key"] for a in manifest["artifacts"]) or "none",
        "checkpoint": f"{checkpoint['path']} (sha256 {checkpoint['sha256'][:12]})" if checkpoint else "none (random weights)",
        "model": source_line(manifest["spec"]["source"]),
        "quantization": f"{quantization['precision']} ({quantization['calibration']['method']})" if quantization else "none",
        "opset": str(manifest["export"]["opset"]),
        "threads": str(manifest["benchmark"]["threads"]),
    }


def rewrite_lines(rewrites: dict[str, Any] | None) -> list[str]:
    """One line per graph rewrite the build applied, and the timed choice's (bundles built before rewrites
    have none)."""
    if not rewrites:
        return []
    if rewrites["applied"]:
        worst = max(o["max_rel"] for o in rewrites["check"]["outputs"].values())
        checked = f"rewritten vs simplified max rel err {worst:.1e} on {rewrites['check']['inputs']} input sets"
        lines = [f"- Graph rewrite {a['rewrite']} at {a['module'] or a['where']}: {_rewrite_change(a)}; {checked}"
                 for a in rewrites["applied"]]
    else:
        lines = [f"- Graph rewrites: {'none applied' if rewrites['enabled'] else 'off (--no-rewrites)'}"]
    return lines + winograd_lines(rewrites)


def winograd_lines(rewrites: dict[str, Any]) -> list[str]:
    """The build's timed choice of Winograd's F(2x2, 3x3) (`export.winograd`), where a convolution matched."""
    w = rewrites.get("winograd")
    if not w or not w["convolutions"]:
        return []
    what = f"- Winograd F(2x2, 3x3) on {w['convolutions']} convolutions of {w['min_channels']} channels or more"
    if "not_timed" in w:
        return [f"{what}: not timed ({w['not_timed']}), not applied"]
    speed = ", ".join(f"{REGISTRY[b].title} {m['speedup']:.2f}x ({'faster' if m['faster'] else 'not faster'})"
                      for b, m in w["backends"].items())
    verdict = "kept" if w["kept"] else f"not kept (it must be {w['margin']:.0%} faster on each backend, confirmed)"
    return [f"{what}: {verdict}; rewritten graph's speed-up at p50 on this machine: {speed}"]


def _rewrite_change(a: dict[str, Any]) -> str:
    if a.get("change"):
        return a["change"]
    return f"{a['mult_adds_before'] / 1e6:.1f} M -> {a['mult_adds_after'] / 1e6:.1f} M mult-adds"


def tuning_line(manifest: dict[str, Any]) -> str:
    """The backend settings the build measured per artifact, in one line ('' where it did not tune)."""
    tuning = manifest.get("tuning")
    if not tuning:
        return ""
    parts = []
    for key, t in tuning["artifacts"].items():
        changed = {k: v for k, v in t["chosen"].items() if t["defaults"].get(k) != v}
        what = ", ".join(f"{k} {v}" for k, v in changed.items())
        parts.append(f"{key.replace('/', ' ')}: " + (f"{what} ({t['speedup']:.2f}x the defaults' p50)" if changed
                                                     else "the defaults"))
    return (f"Backend settings, chosen by timing each backend's candidates interleaved ({tuning['budget_s']:g} s "
            f"per artifact; a change must win by {tuning['margin']:.0%}): " + "; ".join(parts) + ".")


def source_line(source: dict[str, Any]) -> str:
    """Where a bundle's module came from: a zoo variant and its overrides, or a user's code and its arguments."""
    if "variant" in source:
        extra = ", ".join(f"{k}={v}" for k, v in source.get("overrides", {}).items())
        return f"zoo variant {source['variant']}" + (f" ({extra})" if extra else "")
    if "model" in source:
        extra = ", ".join(f"{k}={v!r}" for k, v in source.get("args", {}).items())
        return f"{source['model']}" + (f"({extra})" if extra else "")
    return "a module passed to export.build"


def spec_line(spec: dict[str, Any]) -> str:
    """The model contract in one line: inputs, outputs, task, preprocessing."""
    params = spec.get("source", {}).get("parameters", {})  # inputs named otherwise than forward's parameters

    def named(i: dict) -> str:
        return f"{i['name']} [forward's {params[i['name']]}]" if i["name"] in params else i["name"]

    inputs = ", ".join(f"{named(i)} ({', '.join(map(str, i['shape']))}) {i['dtype']}"
                       + (f" multiple of {i['multiple']}" if i["multiple"] > 1 else "") for i in spec["inputs"])
    task = {k: v for k, v in spec["task"].items() if k != "names"}
    pre = spec.get("preprocess")
    image = spec["inputs"][0]
    grey = len(image["example"]) == 4 and image["example"][1] == 1  # infer converts the photo to grey
    prep = (f"; image {'at its own size' if pre['size'] is None else 'resized to ' + 'x'.join(map(str, pre['size']))}"
            f", {'grey' if grey else pre['channels']}, x{pre['scale']:.6g}, mean {list(pre['mean'])}, std {list(pre['std'])}") if pre else ""
    return (f"inputs {inputs}; outputs {', '.join(spec['outputs'])} (forward returns a {spec['returns']}); "
            f"task {', '.join(f'{k}={v}' for k, v in task.items())}{prep}")


def markdown_table(columns: tuple[str, ...], table: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


def rejected_lines(manifest: dict[str, Any]) -> list[str]:
    lines = [f"Not shipped: {r['file']} ({r['backend']} {r['precision']}): {r['reason']}" for r in manifest["rejected"]]
    raised = {k: v for k, v in manifest["reference_noise"]["outputs"].items() if 2 * v > 1e-4}
    if raised:
        lines.append("PyTorch's own float32 outputs move (float64, one-ulp input changes) by " + ", ".join(
            f"{k}: {v:.1e}" for k, v in raised.items()) + " (max rel err); bounds below twice that were raised to it.")
    return [*lines, ""] if lines else []


FRONTIER_PLOT = "int8_frontier.png"


def _figure(attempt: dict[str, Any]) -> tuple[str, float]:
    """The figure an attempt is plotted by: its first allowed drop on the labelled images, or its first
    bounded task figure, else its worst tensor error."""
    bounds, drops = attempt["parity"]["task_bounds"], attempt["parity"].get("max_drop")
    if drops:
        name = next(iter(drops))
        return f"{name} drop on the labels", attempt["parity"]["truth"]["drop"][name]
    if bounds:
        name = next(iter(bounds))
        return name, attempt["task"].get(name, float("nan"))
    return "max rel err", max(o["max_rel"] for o in attempt["parity"]["outputs"].values())


def quantization_lines(manifest: dict[str, Any]) -> list[str]:
    q = manifest.get("quantization")
    if not q:
        return []
    c = q["calibration"]
    describe = task_of(manifest["spec"]).describe
    cpu = manifest["machine"]["cpu"]
    has = q.get("int8_instructions") or []
    lines = [f"INT8 on {cpu}: " + (f"INT8 dot-product instructions {', '.join(has)}" if has else
                                   "no INT8 dot-product instructions (INT8 runs about as fast as FP32 here)")
             + "; every figure below was measured on this machine.", "",
             f"Calibrated on {c['source']} ({c['method']} for ONNX Runtime; sha256 {c['sha256'][:12]}), "
             f"judged on {manifest['golden']['sets'].get('task', 0) or manifest['golden']['batch']} "
             f"{'held-out task' if 'task' in manifest['golden']['sets'] else 'golden'} images; "
             "each plan timed against its FP32 twin in the same run:", ""]
    for backend, found in q["search"].items():
        lines += [f"**{backend}**: {found['stopped']} ({found['spent_s']:.0f} s of a {found['budget_s']:.0f} s budget)."
                  , "", markdown_table(
                      ("plan", "nodes in FP32", "calibration", "INT8 p50 ms", "FP32 p50 ms", "speed-up",
                       "task vs PyTorch", "verdict"),
                      [(a["plan"], str(a["kept_fp32"]), a["method"], f"{a['p50_ms']:.2f}", f"{a['fp32_p50_ms']:.2f}",
                        f"{a['speedup']:.2f}x", describe(a["task"]) + (
                            f"; labels {truth_text(a['parity']['truth'], a['parity']['max_drop'])}"
                            if a["parity"].get("truth") else ""),
                        "shipped" if a["shipped"] else "passes, slower than another" if a["passed"]
                        else "; ".join(a["problems"])) for a in found["attempts"]]), ""]
        if found["sensitivity"]:
            ranked = sorted(found["sensitivity"], key=lambda x: -x["per_ms"])
            lines += [f"Per-layer sensitivity on {backend} ({len(ranked)} layers measured"
                      + (f", {len(found['unmeasured'])} left unmeasured by the budget" if found["unmeasured"] else "")
                      + "; damage when only that layer is INT8, as a share of the bound; its FP32 time from the "
                      "profiler, which shares out the full plan's saving; the frontier keeps layers in FP32 in "
                      "this order):", "", markdown_table(
                          ("layer", "ops", "damage alone in INT8", "FP32 ms", "ms INT8 saves", "damage per ms",
                           "task"),
                          [(x["module"], ", ".join(x["op_types"]), f"{x['damage']:.2f}", f"{x['fp32_ms']:.3f}",
                            f"{x['ms_saved']:.3f}", f"{x['per_ms']:.2f}", describe(x["task"])) for x in ranked[:12]]),
                      ""]
    if any(len(found["attempts"]) > 1 for found in q["search"].values()):
        lines += [f"![INT8 plans: task figure against speed-up over FP32]({FRONTIER_PLOT})", ""]
    return lines


def plot_frontier(manifest: dict[str, Any], path) -> bool:
    """Every INT8 plan tried, task figure against speed-up over FP32, per backend, with
    the bound and the shipped plan marked, as a PNG at `path`. False if only the full plan was tried."""
    q = manifest.get("quantization") or {}
    searches = {b: f for b, f in q.get("search", {}).items() if len(f["attempts"]) > 1}
    if not searches:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    name = "task figure"
    for (backend, found), color in zip(searches.items(), ("tab:blue", "tab:orange")):
        points = [(a["speedup"], _figure(a)[1], a) for a in found["attempts"]]
        name = _figure(found["attempts"][0])[0]
        ax.scatter([x for x, _, _ in points], [y for _, y, _ in points], color=color, label=backend, zorder=3)
        for x, y, a in points:
            label = a["plan"].replace(" layers in FP32", "").replace(" layer in FP32", "")  # "QAT 24", "selective"
            ax.annotate(label, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
            if a["shipped"]:
                ax.scatter([x], [y], s=220, facecolors="none", edgecolors=color, linewidths=2, zorder=4)
        bounds = found["attempts"][0]["parity"]["task_bounds"]
        drops = found["attempts"][0]["parity"].get("max_drop")
        if drops or bounds:
            limit = next(iter(drops.values())) if drops else next(iter(bounds.values()))[1]
            ax.axhline(limit, color="gray", linestyle="--", linewidth=1)
    ax.axvline(1.0, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("speed-up over the FP32 twin (interleaved, p50)")
    ax.set_ylabel(f"{name} against PyTorch FP32")
    ax.set_title(f"{manifest['name']}: INT8 plans (numbers: layers kept in FP32; dashed: the bound; ringed: "
                 "shipped)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


LATENCY_PLOT = "latency_memory.png"


def plot_latency_memory(manifest: dict[str, Any], times: dict[str, list[float]], path) -> None:
    """Each row's distribution of timed calls (the latency stage; an INT8 artifact whose search shipped
    another plan than the full one is left out, its calls being the full plan's) and, where measured, each
    artifact's peak resident set by phase, as a PNG at `path`."""
    from runtime.plots import latency_memory

    shipped = {a["key"]: a for a in manifest["artifacts"]}
    rows = {k: t for k, t in times.items() if k == EAGER or (k in shipped and shipped[k].get("plan") in (None, "full"))}
    latency_memory(f"{manifest['name']}: latency, batch 1, {threads(manifest['benchmark']['threads'])}", rows, path,
                   memory=(manifest.get("memory") or {}).get("artifacts", {}))


def recommended_line(manifest: dict[str, Any]) -> str:
    r = manifest["recommended"]
    if r is None:
        return "Recommended: none; no shipped artifact fits the memory budget (see the failure)."
    return (f"Recommended: {r['backend']} {r['precision']}, p50 {r['p50_ms']:.2f} ms ({r['why']}); "
            "`runtime.load` runs it when no backend is named.")


def report_markdown(manifest: dict[str, Any]) -> str:
    m, bench = manifest["model"], manifest["benchmark"]
    busy = busy_line(manifest)
    machine = manifest["machine"]
    sizes = [k.removeprefix("size.") for k in manifest["golden"]["sets"] if k.startswith("size.")]
    lines = [
        f"# edge-export bundle: `{manifest['name']}`",
        "",
        f"{m['summary']}.",
        "",
        f"- Model: {source_line(manifest['spec']['source'])}",
        f"- Parameters: {m['params']:,}; mult-adds at batch 1: {m['mult_adds']:,} (torchinfo)",
        f"- Contract: {spec_line(manifest['spec'])}",
        f"- Outputs at the example size: {', '.join(o['name'] + ' ' + str(o['shape']) for o in manifest['outputs'])}",
        f"- Checkpoint: {manifest['checkpoint']['path'] + ' (sha256 ' + manifest['checkpoint']['sha256'][:12] + ')' if manifest['checkpoint'] else 'none (random initialisation)'}",
        f"- Export: {manifest['export']['exporter']}, opset {manifest['export']['opset']}; onnxsim "
        f"{manifest['simplify']['nodes_before']} -> {manifest['simplify']['nodes_after']} nodes, simplified vs original "
        f"max rel err {max(o['max_rel'] for o in manifest['simplify']['check']['outputs'].values()):.1e}",
        *rewrite_lines(manifest.get("rewrites")),
        "",
        "## Parity and latency",
        "",
        f"Parity on {manifest['golden']['batch']} golden inputs (seed {manifest['golden']['seed']})"
        + (f" and at {', '.join(sizes)} (dynamic height and width)" if sizes else "") + " against PyTorch; "
        "max rel err is the max abs error over the reference output's scale (the larger of its range and "
        "its RMS, or the extent its task gives it). "
        f"Latency at batch {bench['batch']}, every row on {threads(bench['threads'])} (PyTorch eager too), {bench['warmup']} warm-up runs, "
        "then the same number of timed runs for every row (`runs`), interleaved across them.",
        "",
        markdown_table(columns(manifest), rows(manifest)),
        "",
        f"![latency distribution per row and memory by phase per artifact]({LATENCY_PLOT})",
        "",
        *([f"Warning: {busy}.", ""] if busy else []),
        recommended_line(manifest),
        "",
        *([tuning_line(manifest), ""] if manifest.get("tuning") else []),
        *rejected_lines(manifest),
        *evaluation_lines(manifest),
        *memory_lines(manifest),
        *quantization_lines(manifest),
        *([f"Where the artifacts part ways with PyTorch (first module output past the bound): "
           f"{'; '.join(manifest['diagnosis'])}.", ""] if manifest.get("diagnosis") else []),
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, flags {', '.join(machine['flags'])}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()) + ".",
        "",
    ]
    return "\n".join(lines)
