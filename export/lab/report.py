"""The study's `report.md`, `study.json` and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..backends import REGISTRY  # noqa: E402
from ..report import markdown_table, threads  # noqa: E402
from . import roofline  # noqa: E402
from .harness import BACKEND_NAMES, Section, StudySettings, environment, settings_dict  # noqa: E402

MARKERS = {"pytorch": "o", **{name: b.marker for name, b in REGISTRY.items()}}


def _split(stats: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{"name | backend": stats} -> {name: {backend: p50}}."""
    out: dict[str, dict[str, float]] = {}
    for key, s in stats.items():
        name, backend = key.split(" | ")
        out.setdefault(name, {})[backend] = s["p50_ms"]
    return out


def _columns(times: dict[str, dict[str, float]]) -> list[str]:
    """The backends a table was timed on (PyTorch eager first), as its rows hold them."""
    return list(dict.fromkeys(b for row in times.values() for b in row))


def plot_latency_vs_params(sections: list[Section], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    plotted = [s for s in sections if s.key in ("detector", "norm-swap", "encdec", "kp-encdec", "pet")]
    backends = _columns({k: t for s in plotted for k, t in _split(s.data.get("stats", {})).items()})
    for backend in backends:
        xs, ys, names = [], [], []
        for section in plotted:
            for name, times in _split(section.data.get("stats", {})).items():
                if backend in times and (name, section.key) not in names:
                    xs.append(section.data["params"][name] / 1e6)
                    ys.append(times[backend])
                    names.append((name, section.key))
        ax.scatter(xs, ys, marker=MARKERS[backend], label=BACKEND_NAMES[backend], alpha=0.8)
        if backend == backends[-1]:  # the names once, beside the last backend's points
            for x, y, (name, _) in zip(xs, ys, names):
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="parameters (M)", ylabel="p50 latency, batch 1 (ms)",
           title="Latency against parameters, per variant and backend")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax, groups: list[str], values: dict[str, list[float]], ylabel: str, title: str) -> None:
    width = 0.8 / len(values)
    for i, (backend, ys) in enumerate(values.items()):
        ax.bar([g + i * width for g in range(len(groups))], ys, width, label=BACKEND_NAMES.get(backend, backend))
    ax.set_xticks([g + width * (len(values) - 1) / 2 for g in range(len(groups))], groups)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8)


def plot_micro(norms: Section, upsample: Section, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, batch in zip(axes, (1, 32)):
        times = _split(norms.data["stats"][batch])
        kinds = list(times)
        _bars(ax, kinds, {b: [times[k][b] for k in kinds] for b in _columns(times)}, "p50 ms",
              f"norms on ({batch}, 1024, 2, 2)")
    times = _split(upsample.data["stats"])
    kinds = list(times)
    _bars(axes[2], ["interp + conv" if k == "interp" else "ConvTranspose" for k in kinds],
          {b: [times[k][b] for k in kinds] for b in _columns(times)}, "p50 ms", "(1,1024,2,2) -> (1,512,4,4)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_breakdown(section: Section, path: Path) -> None:
    times = _split(section.data["stats"])
    parts = [p for p in times if p != "whole detector"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    backends = _columns(times)
    bottom = [0.0] * len(backends)
    for part in parts:
        ys = [times[part][b] for b in backends]
        ax.bar([BACKEND_NAMES[b] for b in backends], ys, bottom=bottom, label=part)
        bottom = [b + y for b, y in zip(bottom, ys)]
    ax.scatter([BACKEND_NAMES[b] for b in backends], [times["whole detector"][b] for b in backends],
               color="black", marker="_", s=900, label="whole detector, one call", zorder=3)
    ax.set(ylabel="p50 ms, batch 1", title=section.title.split(": ", 1)[1].split(" (")[0] + ": time per part")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roofline(section: Section, path: Path) -> None:
    """The fastest detector's parts on this machine's roofline, each at its fastest backend."""
    roofs = roofline.Roofs.from_dict(section.data["roofs"])
    points = {label: (p["intensity"], p["gflops"]) for label, p in section.data["roofline"].items()}
    roofline.plot(points, roofs, path, section.title.split(": ", 1)[1].split(" (")[0] + ": parts on the roofline")


PLOTS = {
    "latency_vs_params.png": "Latency against parameters, per variant and backend",
    "micro_benchmarks.png": "The normalisation and upsampling micro-benchmarks",
    "breakdown.png": "Where the time of the fastest detector goes",
    "roofline.png": "The fastest detector's parts on this machine's roofline",
}


def write_plots(sections: list[Section], folder: Path) -> None:
    """The plots of `PLOTS` into `folder` (the roofline's where the run measured the roofs: a study.json
    recorded before the roofline has none)."""
    by_key = {section.key: section for section in sections}
    plot_latency_vs_params(sections, folder / "latency_vs_params.png")
    plot_micro(by_key["norms"], by_key["upsample"], folder / "micro_benchmarks.png")
    plot_breakdown(by_key["breakdown"], folder / "breakdown.png")
    if "roofs" in by_key["breakdown"].data:
        plot_roofline(by_key["breakdown"], folder / "roofline.png")


def plots_from_json(study_json: Path, folder: Path) -> None:
    """The plots of a study run kept as its `study.json` (JSON keeps the norms' batch sizes as strings)."""
    sections = [Section(**{**x, "columns": tuple(x["columns"]), "rows": [tuple(r) for r in x["rows"]]})
                for x in json.loads(Path(study_json).read_text())["sections"]]
    for x in sections:
        if x.key == "norms":
            x.data["stats"] = {int(batch): stats for batch, stats in x.data["stats"].items()}
    write_plots(sections, folder)


def write_report(folder: Path, s: StudySettings, sections: list[Section], peak: dict[str, Any]) -> None:
    write_plots(sections, folder)
    env = environment(s)
    m = env["machine"]
    lines = [
        "# The articles' experiments on this machine",
        "",
        f"- Machine: {m['cpu']}, {m['logical_cores']} logical cores, flags: {', '.join(m['flags']) or 'none of note'}; "
        f"{m['system']} {m['machine']}, Python {m['python']}.",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}.",
        f"- {threads(s.threads)} on every backend, batch 1 unless said; FP32 (OpenVINO's precision hint set to f32). "
        "Medians (p50) of timed calls after a warm-up; the contenders of each table are interleaved in one run. "
        "Every module is exported as a build exports it (dynamo ONNX, onnxsim, OpenVINO IR).",
        f"- FP32 matrix-multiply peak measured in this run: {peak['gflops']:.1f} GFLOP/s.",
        f"- {'Quick run (`--quick`): fewer rows and timed calls.' if s.quick else 'Full run.'}",
        "",
    ]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.rows:
            lines += [markdown_table(section.columns, section.rows), ""]
        lines += [f"- {note}" for note in section.notes] + [""]
    lines += ["## Plots", ""] + [f"![{title}]({name})" for name, title in PLOTS.items()] + [""]
    (folder / "report.md").write_text("\n".join(lines))
    (folder / "study.json").write_text(json.dumps(
        {"settings": settings_dict(s), **env, "peak": peak,
         "sections": [{"key": x.key, "title": x.title, "columns": x.columns, "rows": x.rows, "notes": x.notes,
                       "data": x.data} for x in sections]}, indent=1, default=str))
