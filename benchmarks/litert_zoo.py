"""Every zoo variant built for the three backends, LiteRT's parity and its latency beside ONNX Runtime's
and OpenVINO's from each build's one interleaved run (markdown, labelled with the CPU).

    python benchmarks/litert_zoo.py [--out litert-zoo] [--variants dsc,unet-dsc] [--threads 2]

Each variant is built as `python -m export build --backends onnxruntime,openvino,litert --quantize int8`
does (random weights, a short INT8 search on the other two backends, the backends' default settings),
into OUT/<variant>; a bundle already there is read, not built again, so a run that stops goes on
where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import models
from export.pipeline import BuildSettings, build
from runtime.bundle import Bundle
from runtime.machine import machine_info

BACKENDS = ("onnxruntime", "openvino", "litert")


def built(variant: str, out: Path, threads: int) -> dict:
    if not (out / variant / "manifest.json").is_file():
        try:
            result = build(BuildSettings(variant=variant, out=out, backends=BACKENDS, quantize="int8", int8_budget=5,
                                         tune_budget=0, memory=False, threads=threads))
        except Exception as err:  # noqa: BLE001 - a row that says why, and the next variant
            return {"name": variant, "failed": f"{type(err).__name__}: {err}"}
        if not result.passed:
            return {"name": variant, "failed": "; ".join(result.failures)}
    return Bundle.open(out / variant).manifest


def parity(m: dict, precision: str) -> str:
    """max rel err / bound of LiteRT's artifact, or why it did not ship."""
    shipped = {a["key"]: a for a in m["artifacts"]}
    a = shipped.get(f"litert/{precision}")
    search = m["quantization"]["search"].get("litert")
    if precision == "int8" and search is None:  # no plan to search from
        why = next(r["reason"] for r in m["rejected"] if r["backend"] == "litert" and r["precision"] == "int8")
        return "not shipped: " + why.split(": ", 1)[-1][:100]
    if precision == "int8":  # judged by the task: the plan that shipped and its figures, or the closest's problem
        attempts = search["attempts"]
        best = next((x for x in attempts if x["shipped"]), None)
        if best is not None:
            return f"{best['plan']} plan, {best['speedup']:.2f}x FP32, " + ", ".join(
                f"{k} {v:.3g}" for k, v in best["task"].items())
        closest = min(attempts, key=lambda x: x["damage"])
        return f"not shipped: {closest['problems'][0][:80]}"
    if a is None:
        why = next((r["reason"] for r in m["rejected"] if r["backend"] == "litert" and r["precision"] == precision),
                   "not made")
        return "not shipped: " + why.split(": ", 1)[-1][:80]
    worst = max(a["parity"]["outputs"].values(), key=lambda o: o["max_rel"] / o["bound"])
    return f"{worst['max_rel']:.1e} / {worst['bound']:.0e}"


def ms(m: dict, key: str) -> str:
    found = m["latency"].get(key)
    return f"{found['p50_ms']:.1f}" if found else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("litert-zoo"))
    parser.add_argument("--variants", help="comma-separated (default: all 21)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    variants = args.variants.split(",") if args.variants else models.list_variants()
    info = machine_info()
    rows = []
    for variant in variants:
        m = built(variant, args.out, args.threads)
        if "failed" in m:
            rows.append(f"| {variant} | build failed: {m['failed'][:120]} |||||||||")
            print(rows[-1], flush=True)
            continue
        shape = m["export"].get("backends", {}).get("litert", {}).get("shape")  # none: not converted
        shape = "-" if shape is None else "dynamic" if shape in ("dynamic", "the spec's") else "fixed " + "x".join(
            map(str, next(iter(shape.values()))[1:]))
        rows.append(f"| {variant} | {shape} | {parity(m, 'fp32')} | {parity(m, 'fp16')} | {parity(m, 'int8')} "
                    f"| {ms(m, 'onnxruntime/fp32')} | {ms(m, 'openvino/fp32')} | {ms(m, 'litert/fp32')} "
                    f"| {ms(m, 'litert/fp16')} | {ms(m, 'litert/int8')} |")
        print(rows[-1], flush=True)
    print(f"\n{info['cpu']} ({info['machine']}, {info['logical_cores']} cores), {args.threads} threads, batch 1; "
          "p50 ms of each build's interleaved run; LiteRT's parity is max relative error / bound (the worst output)\n")
    print("| variant | LiteRT input | FP32 | FP16 | INT8 | ONNX Runtime FP32 ms | OpenVINO FP32 ms | LiteRT FP32 ms "
          "| LiteRT FP16 ms | LiteRT INT8 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
