"""Tabulate the bundles under an artifacts folder (markdown), from their manifests.

    for v in $(python -c "import models; print(*models.list_variants())"); do
        python -m export build --variant $v; done
    python benchmarks/zoo_table.py artifacts
"""

from __future__ import annotations

import sys
from pathlib import Path

import models
from runtime.bundle import Bundle


def main(root: str = "artifacts") -> None:
    print("| variant | params | mult-adds | PyTorch eager ms | ONNX Runtime fp32 ms | OpenVINO fp32 ms "
          "| OpenVINO fp16 ms | best vs eager | worst FP32 rel err / bound |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in models.list_variants():
        path = Path(root) / name
        if not (path / "manifest.json").is_file():
            continue
        m = Bundle.open(path).manifest
        lat = m["latency"]
        cells = {k: f"{v['p50_ms']:.1f}" for k, v in lat.items()}
        eager = lat["pytorch/eager"]["p50_ms"]
        best = min(v["p50_ms"] for k, v in lat.items() if k != "pytorch/eager")
        worst = max((o for a in m["artifacts"] if a["precision"] == "fp32" for o in a["parity"]["outputs"].values()),
                    key=lambda o: o["max_rel"] / o["bound"])
        fp16 = cells.get("openvino/fp16", "not shipped")
        print(f"| {name} | {m['model']['params']:,} | {m['model']['mult_adds'] / 1e6:,.0f} M | {cells['pytorch/eager']} "
              f"| {cells['onnxruntime/fp32']} | {cells['openvino/fp32']} | {fp16} | {eager / best:.2f}x "
              f"| {worst['max_rel']:.1e} / {worst['bound']:.0e} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
