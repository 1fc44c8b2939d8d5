"""Pictures of the timings and memory the runtime measures, as a PNG: each artifact's latency
distribution, its peak resident set by phase, and a sustained run's p50 over time.

matplotlib is not part of the device install (a board seldom needs it): the build's
environment has it, and on a device `runtime bench --plot` asks for it in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .errors import UserError


def require(flag: str = "--plot") -> None:
    """Refuse before anything is measured when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(f"{flag} draws with matplotlib, which is not installed here: pip install matplotlib, "
                        "or drop it (--json keeps every figure)") from None


def latency_memory(title: str, times: Mapping[str, list[float]], path: str | Path,
                   memory: Mapping[str, Mapping[str, Any]] | None = None,
                   sustained: Mapping[str, Any] | None = None) -> Path:
    """One figure, a panel each: the timed calls per row (box: p25-p75, line: p50, whiskers: p5-p95);
    where given, each artifact's peak resident set by phase (`runtime.memory.measure`'s records);
    where given, a sustained run's p50 and p90 per window (`runtime.bench.sustained`'s record)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = {k: v for k, v in (memory or {}).items() if "phases" in v}
    panels = 1 + bool(measured) + bool(sustained)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), dpi=110, squeeze=False)
    axes = list(axes[0])
    left = axes.pop(0)
    names = list(times)
    left.boxplot([times[k] for k in names], vert=False, whis=(5, 95), showfliers=False)
    left.set_yticks(range(1, len(names) + 1), [k.replace("/", " ") for k in names], fontsize=8)
    left.set_xlabel("ms per call (box: p25-p75, line: p50, whiskers: p5-p95)")
    left.set_title(title, fontsize=9)
    if measured:
        ax = axes.pop(0)
        phases = list(next(iter(measured.values()))["phases"])
        for key, found in measured.items():
            ax.plot(phases, [found["phases"][p]["peak_mb"] for p in phases], marker="o", label=key.replace("/", " "))
        ax.set_ylabel("peak resident set, MB")
        ax.set_title("memory by phase, each artifact in a fresh process", fontsize=9)
        ax.legend(fontsize=7)
    if sustained:
        ax = axes.pop(0)
        windows = sustained["windows"]
        minutes = [(w["start_s"] + sustained["window_s"] / 2) / 60 for w in windows]
        ax.plot(minutes, [w["p50_ms"] for w in windows], marker="o", label="p50")
        ax.plot(minutes, [w["p90_ms"] for w in windows], marker=".", linestyle="--", label="p90")
        ax.set_xlabel("minutes into the run (middle of each window)")
        ax.set_ylabel("ms per call")
        ax.set_ylim(bottom=0)
        ax.set_title(f"sustained {sustained['seconds']:g} s: drift {100 * sustained['drift']:+.1f}%", fontsize=9)
        temps = [w["temperature_c"] for w in windows]
        if all(t is not None for t in temps):
            twin = ax.twinx()
            twin.plot(minutes, temps, color="tab:red", linewidth=1, label="CPU temperature")
            twin.set_ylabel("C", color="tab:red")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
