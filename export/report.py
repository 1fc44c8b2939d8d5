"""Stage: the build's table, as rows shared by the terminal and report.md."""

from __future__ import annotations

from typing import Any

from .benchmark import EAGER

COLUMNS = ("artifact", "runtime", "parity", "max rel err", "bound", "min cosine", "kp err px",
           "p50 ms", "p90 ms", "vs eager")


def rows(manifest: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row for PyTorch eager, then one per artifact; the worst output of
    each artifact (largest error relative to its bound) stands for it."""
    eager = manifest["latency"][EAGER]
    table = [("PyTorch eager", "pytorch fp32", "reference", "-", "-", "-", "-",
              f"{eager['p50_ms']:.2f}", f"{eager['p90_ms']:.2f}", "1.00x")]
    for art in manifest["artifacts"]:
        parity, lat = art["parity"], manifest["latency"][art["key"]]
        outs = parity["outputs"].values()
        worst = max(outs, key=lambda o: o["max_rel"] / o["bound"])
        kp = parity["task"].get("keypoint_error_px")
        table.append((art["file"], f"{art['backend']} {art['precision']}", "pass" if parity["passed"] else "FAIL",
                      f"{worst['max_rel']:.1e} ({worst['name']})", f"{art['bound']:.0e}",
                      f"{min(o['cosine'] for o in outs):.6f}", "-" if kp is None else f"{kp:.4f}",
                      f"{lat['p50_ms']:.2f}", f"{lat['p90_ms']:.2f}", f"{eager['p50_ms'] / lat['p50_ms']:.2f}x"))
    return table


def markdown_table(columns: tuple[str, ...], table: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


def report_markdown(manifest: dict[str, Any]) -> str:
    m, bench = manifest["model"], manifest["benchmark"]
    machine = manifest["machine"]
    settings = ", ".join(f"{k}={v}" for k, v in manifest["settings"].items())
    lines = [
        f"# edge-export bundle: `{manifest['variant']}`",
        "",
        f"{m['summary']}.",
        "",
        f"- Parameters: {m['params']:,}; mult-adds at batch 1: {m['mult_adds']:,} (torchinfo)",
        f"- Input `{manifest['inputs'][0]['name']}` {manifest['inputs'][0]['shape']} {manifest['inputs'][0]['dtype']}; "
        f"outputs: {', '.join(o['name'] + ' ' + str(o['shape']) for o in manifest['outputs'])}",
        f"- Settings: {settings}",
        f"- Checkpoint: {manifest['checkpoint']['path'] + ' (sha256 ' + manifest['checkpoint']['sha256'][:12] + ')' if manifest['checkpoint'] else 'none (random initialisation)'}",
        f"- Export: {manifest['export']['exporter']}, opset {manifest['export']['opset']}; onnxsim "
        f"{manifest['simplify']['nodes_before']} -> {manifest['simplify']['nodes_after']} nodes, simplified vs original "
        f"max rel err {max(o['max_rel'] for o in manifest['simplify']['check']['outputs'].values()):.1e}",
        "",
        "## Parity and latency",
        "",
        f"Parity on {manifest['golden']['batch']} golden inputs (seed {manifest['golden']['seed']}) against PyTorch; "
        "max rel err is the max abs error over the reference output's range. "
        f"Latency at batch {bench['batch']}, {bench['threads']} threads, {bench['warmup']} warm-up runs, "
        "timed runs interleaved across artifacts.",
        "",
        markdown_table(COLUMNS, rows(manifest)),
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, flags {', '.join(machine['flags'])}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()) + ".",
        "",
    ]
    return "\n".join(lines)
