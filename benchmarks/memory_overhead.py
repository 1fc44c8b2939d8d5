"""What the runtime costs in memory over a bare backend session, each in a fresh process, in one run.

    python benchmarks/memory_overhead.py [--bundle artifacts/dsc] [--runs 10] [--repeat 3]

For every artifact of the bundle: `runtime.memory` (our runtime: the bundle opened,
the runner loaded, the golden inputs run) against a bare Python process that
imports numpy and the backend alone, loads the same file with the same backend
settings the runner applies (the bundle's tuned ones, no model cache on either
side) and runs the same inputs. Both are measured the same way (the kernel's
VmHWM, reset at each phase) and interleaved, `--repeat` times each; the table
gives the median peak resident set of each and our overhead in percent.
Needs no torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import runtime
from runtime.cli import format_table
from runtime.memory import measure
from runtime.backends.onnxruntime import DEFAULTS as ORT_DEFAULTS, GRAPH_LEVELS as ORT_GRAPH_LEVELS
from runtime.backends.openvino import PRECISION_HINT as OV_PRECISION_HINT

BARE = r"""
import sys, json
from pathlib import Path

def now():
    text = Path("/proc/self/status").read_text()
    kb = {l.split(":")[0]: float(l.split()[1]) for l in text.splitlines() if l.startswith(("VmRSS", "VmHWM"))}
    Path("/proc/self/clear_refs").write_text("5")
    return max(kb["VmRSS"], kb["VmHWM"]) / 1024

backend, model, feeds_file, runs, config = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
import numpy as np
feeds = dict(np.load(feeds_file))
peaks = [now()]
if backend == "onnxruntime":
    import onnxruntime as ort
    peaks.append(now())
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, config["level"])
    options.inter_op_num_threads = 1
    if config["parallel"]:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config["spinning"] else "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    infer = lambda: session.run(None, feeds)
else:
    import openvino as ov
    peaks.append(now())
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    infer = lambda: request.infer(feeds)
peaks.append(now())
infer()
peaks.append(now())
for _ in range(runs):
    infer()
peaks.append(now())
print(json.dumps(max(peaks)))
"""


def bare_config(artifact) -> dict:
    """The backend settings `runtime.load` applies to the artifact (runtime/runners.py), as plain values."""
    tuned = dict(artifact.settings or {})
    if artifact.backend == "onnxruntime":
        tuned = {**ORT_DEFAULTS, **tuned}
        return {"level": ORT_GRAPH_LEVELS[tuned["graph_optimization"]], "spinning": tuned["spinning"],
                "parallel": tuned["execution_mode"] == "parallel"}
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OV_PRECISION_HINT[artifact.precision]}
    if "streams" in tuned:
        config["NUM_STREAMS"] = tuned["streams"]
    if "pinning" in tuned:
        config["ENABLE_CPU_PINNING"] = tuned["pinning"]
    return config


def bare_peak(artifact, model: Path, feeds: Path, runs: int) -> float:
    done = subprocess.run([sys.executable, "-c", BARE, artifact.backend, str(model), str(feeds), str(runs),
                           json.dumps(bare_config(artifact))], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="artifacts/dsc")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bundle = runtime.Bundle.open(args.bundle)
    inputs, _ = bundle.golden()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        feeds = Path(tmp) / "feeds.npz"
        np.savez(feeds, **inputs)
        for a in bundle.artifacts:
            ours, bare = [], []
            for _ in range(args.repeat):  # interleaved: ours, bare, ours, bare, ...
                ours.append(measure(bundle.path, a.backend, a.precision, runs=args.runs, cache=False)["peak_mb"])
                bare.append(bare_peak(a, bundle.path / a.file, feeds, args.runs))
            o, b = statistics.median(ours), statistics.median(bare)
            rows.append([a.file, f"{a.backend} {a.precision}", f"{b:.1f}", f"{o:.1f}", f"{o - b:+.1f}",
                         f"{100 * (o - b) / b:+.1f}%"])
    print(f"{bundle.name}: peak resident set in a fresh process, median of {args.repeat} "
          f"(the load, the first inference and {args.runs} more)")
    print(format_table(["artifact", "backend", "bare session MB", "runtime MB", "difference", "overhead"], rows))


if __name__ == "__main__":
    main()
