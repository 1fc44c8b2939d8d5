"""`python -m export study`: the articles' experiments, measured on this machine.

Six tables, each with the articles' figures beside ours: convolution kinds,
normalisations, upsampling, lightweight encoder-decoders, pet segmentation,
and where the time of the fastest detector goes; then each built bundle
against torch.compile and ExecuTorch (`compete`). Every module is exported and
converted the way a build does (dynamo ONNX export, onnxsim, OpenVINO FP32 IR)
and timed in PyTorch eager, ONNX Runtime and OpenVINO by the build's timing
code: warm-up, fixed threads, medians, all contenders of a table interleaved
in one run. Writes `report.md`, `study.json` and plots to one folder, which
appears only when complete.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import onnx
import torch
from torch import nn

import models
from models import layers
from models.train import evaluate, train
from runtime import runners as rt
from runtime.bundle import Bundle
from runtime.errors import UserError, check_folder
from runtime.files import atomic_folder

from ..settings import check_threads
from ..stats import model_stats
from .compete import SUMMARY_COLUMNS, built_variants, compete_variants, summary_row
from . import roofline
from .harness import (BACKEND_NAMES, Part, Section, Study, StudySettings, executorch_available, flops, of,
                      transposed_overcount)
from .report import write_report

# The articles' and papers' figures, shown beside ours.
ARTICLE_HOURGLASS = {"baseline": ("14.13 M", "989.31 M", 13.0184), "dsc": ("1.62 M", "120.30 M", 6.9928)}
ARTICLE_NORMS = {"batch": (2048, 0.0407, 0.6520), "layer": (8192, 0.0366, 0.6376),
                 "instance": (2048, 0.0665, 1.0005), "group": (2048, 0.0461, 0.9654)}
ARTICLE_UPSAMPLE = {"interp": 0.16, "transpose": 0.23}  # ms; both 4,719,104 params, 75.51 M mult-adds
ARTICLE_ENCDEC = {"erfnet": ("2.06 M", 26.60), "edanet": ("0.68 M", 8.83), "esnet": ("1.66 M", 24.05),
                  "lednet": ("0.94 M", 11.21)}  # published params; computed GMACs at 512x1024
ARTICLE_PET = {"segnet": ("15.27 M", "88.28%"), "segnet-dsc": ("1.75 M", "86.96%"),
               "unet": ("-", "91.3% (100 epochs)"), "unet-dsc": ("-", "-")}


def ms(stats: dict, key: tuple) -> str:
    return f"{stats[key]['p50_ms']:.2f}" if key in stats else "-"


def ms_small(stats: dict, key: tuple) -> str:
    return f"{stats[key]['p50_ms']:.4f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def _int8_runners(s: StudySettings, variant: str) -> dict[tuple, Any]:
    """The shipped INT8 artifacts of `<artifacts>/<variant>`, if a bundle with them was built."""
    path = s.artifacts / variant
    if not (path / "manifest.json").is_file():
        return {}
    bundle = Bundle.open(path)
    return {(variant, f"{a.backend} int8"): rt.load(bundle, a.backend, "int8", s.threads, cache=False)
            for a in bundle.artifacts if a.precision == "int8"}


def convolution(st: Study) -> list[Section]:
    hourglasses = st.quick_or_full(("baseline", "dsc"), ("baseline", "dsc", "asym", "dsc-deep"))
    return [_hourglass_table(st, hourglasses), _detector_table(st, st.quick_or_full(("baseline", "dsc"), hourglasses))]


def _hourglass_table(st: Study, hourglass_rows: tuple[str, ...]) -> Section:
    runners, feeds, counts = {}, {}, {}
    for name in hourglass_rows:
        st.say(f"convolution: hourglass of {name}")
        module = models.create(name).predictor
        counts[name] = model_stats(module, (3, 64, 64))
        runners.update(st.runners(name, of(module), (3, 64, 64)))
        feeds[name] = st.feeds((3, 64, 64))
    stats = st.time(runners, feeds, runs=st.quick_or_full(30, 200))
    base = {b: stats[("baseline", b)]["p50_ms"] for b in st.backends}
    rows = []
    for name in hourglass_rows:
        article = ARTICLE_HOURGLASS.get(name)
        rows.append((name, f"{counts[name]['params']:,}", f"{counts[name]['mult_adds'] / 1e6:.2f} M",
                     f"{article[0]} / {article[1]} / {article[2]:.2f} ms" if article else "-",
                     *(ms(stats, (name, b)) for b in st.backends),
                     *(ratio(base[b], stats[(name, b)]["p50_ms"]) for b in st.backends)))
    hourglass = Section(
        "hourglass", "1a. Convolution: the hourglass alone, input (1, 3, 64, 64)",
        ("variant", "params", "mult-adds", "article (params / mult-adds / ms)",
         *(f"{BACKEND_NAMES[b]} ms" for b in st.backends), *(f"vs standard, {BACKEND_NAMES[b]}" for b in st.backends)),
        rows,
        ["The article's speed-up of depthwise separable over standard: 1.86x (PyTorch, its machine).",
         "Mult-adds: the standard hourglass matches the reference exactly (989,312,832). The separable one gives "
         "121.95 M by torchinfo's count against the article's 120.30 M: the parameters agree (1,616,958), and no "
         "layout tried reproduces 120.30 M (without biases it is 120.06 M), so the article's figure is taken to come "
         "from another counting of the depthwise and bias terms."],
        {"stats": _plain(stats), "params": {k: c["params"] for k, c in counts.items()}})
    return hourglass


def _detector_table(st: Study, detector_rows: tuple[str, ...]) -> Section:
    runners, feeds, counts = {}, {}, {}
    for name in detector_rows:
        st.say(f"convolution: detector {name}")
        model = models.create(name)
        counts[name] = model_stats(model, (3, 256, 256))
        runners.update(st.runners(name, model, (3, 256, 256)))
        runners.update(_int8_runners(st.s, name))
        feeds[name] = st.feeds((3, 256, 256))
    stats = st.time(runners, feeds, runs=st.quick_or_full(10, 50))
    eager_base = stats[("baseline", "pytorch")]["p50_ms"]
    rows = []
    for name in detector_rows:
        own = {k: v["p50_ms"] for k, v in stats.items() if k[0] == name}
        best = min((k for k in own if k[1] != "pytorch"), key=own.get)
        int8 = ", ".join(f"{k[1].split()[0]} {v:.2f}" for k, v in own.items() if k[1].endswith("int8")) or "not built"
        rows.append((name, f"{counts[name]['params']:,}", f"{counts[name]['mult_adds'] / 1e6:.1f} M",
                     *(ms(stats, (name, b)) for b in st.backends), int8,
                     f"{best[1]} {ratio(eager_base, own[best])}"))
    detector = Section(
        "detector", "1b. Convolution in the whole detector, input (1, 3, 256, 256)",
        ("variant", "params", "mult-adds", *(f"{BACKEND_NAMES[b]} ms" for b in st.backends), "INT8 ms (bundle)",
         "best vs eager baseline"),
        rows,
        ["INT8: the shipped INT8 artifacts of `<artifacts>/<variant>` when a bundle was built with "
         "`--quantize int8`, timed in this same run; a build ships INT8 only where it beats FP32."],
        {"stats": _plain(stats), "params": {k: c["params"] for k, c in counts.items()}})
    return detector


def normalisation(st: Study) -> list[Section]:
    if st.s.quick:
        return [_norm_layers_table(st), Section("norm-swap", "2b. The same swap in the whole detector", (), [],
                                                ["Measured in the full study (without `--quick`)."])]
    return [_norm_layers_table(st), _norm_swap_table(st)]


def _norm_layers_table(st: Study) -> Section:
    runners, feeds, params = {}, {}, {}
    for kind in ARTICLE_NORMS:
        st.say(f"normalisation: {kind}")
        layer = layers.norm(kind, 1024, (2, 2))
        params[kind] = sum(p.numel() for p in layer.parameters())
        runners.update(st.runners(kind, of(layer), (1024, 2, 2)))
    for batch in (1, 32):
        feeds[batch] = st.feeds((1024, 2, 2), batch, normal=True)
    reps = st.quick_or_full(200, 1000)
    stats = {batch: st.time(runners, dict.fromkeys(ARTICLE_NORMS, feeds[batch]), runs=reps, warmup=20)
             for batch in (1, 32)}
    rows = []
    for kind, (article_params, *article_ms) in ARTICLE_NORMS.items():
        for batch, article in zip((1, 32), article_ms):
            rows.append((kind, f"{params[kind]:,} ({article_params:,})", str(batch), f"{article:.4f}",
                         *(ms_small(stats[batch], (kind, b)) for b in st.backends)))
    micro = Section(
        "norms", "2a. Normalisation layers on (batch, 1024, 2, 2)",
        ("norm", "params (article)", "batch", "article ms (PyTorch)", *(f"{BACKEND_NAMES[b]} ms" for b in st.backends)),
        rows,
        [f"{reps} timed calls per cell, as the article's 1,000 repetitions (median). GroupNorm has channels // 2 = "
         "512 groups; LayerNorm normalises over (C, H, W) with an elementwise affine, hence 8,192 parameters.",
         "At this size a call is mostly the runtime's fixed cost per inference, not the arithmetic."],
        {"stats": {b: _plain(v) for b, v in stats.items()}, "params": params})
    return micro


def _norm_swap_table(st: Study) -> Section:
    swap = ("baseline", "layernorm", "instancenorm", "groupnorm")
    runners, feeds, counts = {}, {}, {}
    for name in swap:
        st.say(f"normalisation: detector {name}")
        model = models.create(name)
        counts[name] = sum(p.numel() for p in model.parameters())
        runners.update(st.runners(name, model, (3, 256, 256)))
        feeds[name] = st.feeds((3, 256, 256))
    stats = st.time(runners, feeds, runs=50)
    base = {b: stats[("baseline", b)]["p50_ms"] for b in st.backends}
    rows = [(name, f"{counts[name]:,}", *(f"{ms(stats, (name, b))} ({ratio(stats[(name, b)]['p50_ms'], base[b])})"
                                          for b in st.backends)) for name in swap]
    whole = Section("norm-swap", "2b. The same swap in the whole detector, input (1, 3, 256, 256)",
                    ("variant", "params", *(f"{BACKEND_NAMES[b]} ms (vs BatchNorm)" for b in st.backends)), rows,
                    ["BatchNorm folds into the conv before it on both backends; the others are computed at run time."],
                    {"stats": _plain(stats), "params": counts})
    return whole


def upsampling(st: Study) -> list[Section]:
    runners, feeds, counts = {}, {}, {}
    for kind in ARTICLE_UPSAMPLE:
        st.say(f"upsampling: {kind}")
        module = nn.Sequential(*layers.upsample(kind, 1024, 512))
        counts[kind] = {**model_stats(module, (1024, 2, 2)), "transposed_overcount": transposed_overcount(module, (1024, 2, 2))}
        runners.update(st.runners(kind, of(module), (1024, 2, 2)))
        feeds[kind] = st.feeds((1024, 2, 2), normal=True)
    stats = st.time(runners, feeds, runs=st.quick_or_full(200, 1000), warmup=20)
    names = {"interp": "nearest x2 + conv 3x3", "transpose": "ConvTranspose2d 3x3 stride 2"}
    rows = [(names[kind], f"{counts[kind]['params']:,}", f"{counts[kind]['mult_adds'] / 1e6:.2f} M",
             f"{ARTICLE_UPSAMPLE[kind]:.2f}", *(ms_small(stats, (kind, b)) for b in st.backends)) for kind in ARTICLE_UPSAMPLE]
    real = counts["transpose"]["mult_adds"] - counts["transpose"]["transposed_overcount"]
    return [Section(
        "upsample", "3. Upsampling (1, 1024, 2, 2) -> (1, 512, 4, 4)",
        ("layer", "params", "mult-adds", "article ms (PyTorch)", *(f"{BACKEND_NAMES[b]} ms" for b in st.backends)),
        rows,
        ["The article: 4,719,104 params and 75.51 M mult-adds for both, as here. torchinfo (and the article) count "
         "the transposed conv as weights x output pixels; it really does weights x input pixels, "
         f"{real / 1e6:.2f} M."],
        {"stats": _plain(stats), "params": {k: c["params"] for k, c in counts.items()}})]


def encoder_decoders(st: Study) -> list[Section]:
    archs = st.quick_or_full(("erfnet", "edanet"), tuple(ARTICLE_ENCDEC))
    groups = [("", (3, 256, 512))] if not st.s.quick else []
    groups.append(("kp-", (3, 256, 256)))
    sections = []
    for prefix, shape in groups:
        runners, feeds, counts = {}, {}, {}
        for arch in archs:
            name = prefix + arch
            st.say(f"encoder-decoders: {name}")
            model = models.create(name)
            stats_ = model_stats(model, shape)
            counts[name] = {**stats_, "transposed_overcount": transposed_overcount(model, shape)}
            runners.update(st.runners(name, model, shape))
            feeds[name] = st.feeds(shape)
        stats = st.time(runners, feeds, runs=st.quick_or_full(10, 30), warmup=3)
        scale = shape[1] * shape[2] / (512 * 1024)
        rows = []
        for arch in archs:
            name = prefix + arch
            c = counts[name]
            published, gmacs = ARTICLE_ENCDEC[arch]
            rows.append((name, f"{c['params']:,}", published if not prefix else "-",
                         f"{c['mult_adds'] / 1e9:.2f} G", f"{(c['mult_adds'] - c['transposed_overcount']) / 1e9:.2f} G",
                         f"{gmacs * scale:.2f} G" if not prefix else "-",
                         *(ms(stats, (name, b)) for b in st.backends)))
        what = "19-class segmenters" if not prefix else "keypoint detectors with the encoder-decoder as predictor"
        sections.append(Section(
            prefix + "encdec", f"4{'ab'[bool(prefix)] if not st.s.quick else ''}. Lightweight encoder-decoders: {what}, "
            f"input (1, {', '.join(map(str, shape))})",
            ("network", "params", "published params", "mult-adds (torchinfo)", "mult-adds (transposed per input px)",
             "reference, scaled to this input", *(f"{BACKEND_NAMES[b]} ms" for b in st.backends)),
            rows,
            ["Published figures are for Cityscapes at 512x1024; the reference's computed GMACs are scaled by pixel "
             "count. torchinfo counts each ConvTranspose2d at its output pixels (4x its work at stride 2), which is "
             "why ERFNet and ESNet read high in that column; the next column counts them per input pixel, as the "
             "reference does. LEDNet's reference code gives 922,821 params, short of the published 0.94 M."]
            if not prefix else ["The same encoder-decoders feeding the detector's 7x7 heads, at the detector's input."],
            {"stats": _plain(stats), "params": {k: c["params"] for k, c in counts.items()}, "counts": counts}))
    return sections


def pet(st: Study) -> list[Section]:
    names = st.quick_or_full(("segnet", "segnet-dsc"), tuple(ARTICLE_PET))
    runners, feeds, counts, scores = {}, {}, {}, {}
    for name in names:
        model = models.create(name)
        if st.s.train_steps:
            st.say(f"pet segmentation: training {name} for {st.s.train_steps} steps")
            model = train(name, steps=st.s.train_steps, seed=st.s.seed)["model"]
            scores[name] = evaluate(name, model=model)
        st.say(f"pet segmentation: {name}")
        counts[name] = model_stats(model, (3, 128, 128))
        runners.update(st.runners(name, model, (3, 128, 128)))
        feeds[name] = st.feeds((3, 128, 128))
    stats = st.time(runners, feeds, runs=st.quick_or_full(5, 20), warmup=2)
    rows = []
    for name in names:
        score = (f"{scores[name]['pixel_accuracy']:.2%} / {scores[name]['miou']:.2%}" if name in scores
                 else "use --train-steps")
        rows.append((name, f"{counts[name]['params']:,}", ARTICLE_PET[name][0], f"{counts[name]['mult_adds'] / 1e9:.2f} G",
                     *(ms(stats, (name, b)) for b in st.backends), score, ARTICLE_PET[name][1]))
    notes = ["Accuracy: pixel accuracy / mIoU on 64 held-out images of the generated pet task, after the same "
             f"training budget ({st.s.train_steps} steps of batch 8) for every network; the article trained 20 epochs "
             "on Oxford-IIIT Pet, which cannot be downloaded here." if st.s.train_steps else
             "Accuracy columns need `--train-steps N` (the same budget for every network).",
             "SegNet's max-unpool routes values by the pooling indices: OpenVINO runs it as a scatter, slower than "
             "ONNX Runtime."]
    return [Section("pet", "5. Pet segmentation, input (1, 3, 128, 128)",
                    ("network", "params", "article params", "mult-adds", *(f"{BACKEND_NAMES[b]} ms" for b in st.backends),
                     "pixel acc. / mIoU", "article pixel acc."), rows, notes,
                    {"stats": _plain(stats), "params": {k: c["params"] for k, c in counts.items()}, "scores": scores})]


def breakdown(st: Study, fastest: str, roofs: roofline.Roofs) -> list[Section]:
    model = models.create(fastest)
    k = model.config.num_kp
    side = model.config.hourglass_size
    heat = model.config.heatmap_size
    width = model.predictor.out_filters
    parts = {
        "resize (stride-4 blur)": (of(model.down), (3, 256, 256)),
        "hourglass": (of(model.predictor), (3, side, side)),
        "heads (7x7 keypoint + Jacobian)": (Part(lambda f: {"kp": model.kp(f), "jacobian": model.jacobian(f)},
                                                 model.kp, model.jacobian), (width, side, side)),
        "keypoint extraction": (Part(lambda x: model.extract(x[:, :k], x[:, k:]), model), (5 * k, heat, heat)),
        "whole detector": (model, (3, 256, 256)),
    }
    runners, feeds, work, places = {}, {}, {}, {}
    for label, (module, shape) in parts.items():
        st.say(f"where the time goes: {label}")
        runners.update(st.runners(label, module, shape))
        feeds[label] = st.feeds(shape)
        work[label] = flops(module, shape)
        places[label] = roofline.place(roofline.graph_work(onnx.load(str(st.graphs[label]))).values(), roofs)
    stats = st.time(runners, feeds, runs=st.quick_or_full(30, 200))
    pieces = [label for label in parts if label != "whole detector"]
    rows = []
    for label in parts:
        cells = []
        for b in st.backends:
            t = stats[(label, b)]["p50_ms"]
            share = t / sum(stats[(p, b)]["p50_ms"] for p in pieces)
            cells.append(f"{t:.2f} ({share:.0%})" if label in pieces else f"{t:.2f}")
        p = places[label]
        best = min((b for b in st.backends if b != "pytorch"), key=lambda b: stats[(label, b)]["p50_ms"])
        t = stats[(label, best)]["p50_ms"]
        rows.append((label, f"{work[label] / 1e9:.3f}", *cells, p.bound, f"{p.bound_ms:.3f}",
                     f"{p.share(t):.0%} ({BACKEND_NAMES[best]})", f"{p.gap_ms(t):.2f}"))
    copies = ", ".join(f"{size / 2**20:g} MiB {rate:.0f}" for size, rate in sorted(roofs.bandwidth.items()))
    peak = roofs.peak
    return [Section(
        "breakdown", f"6. Where the time goes: {fastest} (the fastest detector of table 1b), batch 1",
        ("part", "GFLOP", *(f"{BACKEND_NAMES[b]} ms (share)" for b in st.backends), "bound", "bound ms",
         "fastest's share of bound", "gap ms"),
        rows,
        [f"Roofs measured in this run: FP32 matrix multiply {peak['gflops']:.1f} GFLOP/s ({peak['method']}, "
         f"{peak['threads']} threads, best: {peak['library']} at n = {peak['size']}); copy bandwidth, GB/s: {copies}.",
         "Each part is exported and timed on its own, so the shares add the fixed cost of one call per part; "
         "the keypoint extraction takes the two heads' outputs as one concatenated input. GFLOP by PyTorch's "
         "flop counter on the module (2 per multiply-add); the bound counts work and bytes on the graph each "
         "backend runs, after the rewrites (`export/lab/roofline.py`): compute- or memory-bound, the time the "
         "roofs allow, the fastest backend's share of it and its gap in ms."],
        {"stats": _plain(stats), "flops": work, "peak": peak, "roofs": roofs.to_dict(),
         "roofline": {label: places[label].to_dict(min(stats[(label, b)]["p50_ms"] for b in st.backends
                                                       if b != "pytorch")) for label in parts}})]


def against_peers(st: Study, roofs: roofline.Roofs) -> list[Section]:
    """Every bundle under --artifacts against PyTorch eager, torch.compile and ExecuTorch
    (`python -m export compete`); a full run builds dsc here if there is none."""

    root = st.s.artifacts
    names = built_variants(root)
    if names:
        source = f"Every bundle under {root}"
    elif st.s.quick:
        return [Section("peers", "7. Against torch.compile and ExecuTorch", SUMMARY_COLUMNS, [],
                        [f"No bundles under {root}: build some (`python -m export build --variant dsc`) and rerun, "
                         "or run `python -m export compete`."], {"variants": []})]
    else:
        root, names = st.work / "bundles", ["dsc"]
        source = f"No bundles under {st.s.artifacts}, so dsc was built here with random weights"
    results = compete_variants(names, root, st.s.threads, st.quick_or_full(10, 50), roofs, st.say)
    notes = [f"{source}; each timed in one interleaved run with PyTorch eager, torch.compile and ExecuTorch "
             "(XNNPACK) on the same weights and inputs; the speed-ups are the best artifact's p50 over each peer's. "
             "`python -m export compete` gives every contender, the spread and the cold starts.",
             f"ExecuTorch: {executorch_available() or 'installed'}.",
             "Of FP32 peak: achieved GFLOP/s over the matrix-multiply peak above; bf16 artifacts (OpenVINO's "
             "FP16 IR on a CPU with AVX512_BF16) and Winograd convolutions can exceed it."]
    return [Section("peers", "7. Against torch.compile and ExecuTorch: each bundle's best artifact",
                    SUMMARY_COLUMNS, [summary_row(r) for r in results], notes, {"variants": results})]


def _plain(stats: dict[tuple, dict]) -> dict[str, dict]:
    return {" | ".join(k): {m: v for m, v in s.items() if m != "settings"} for k, s in stats.items()}


def _fastest(section: Section) -> str:
    per = {}
    for key, s in section.data["stats"].items():
        name, backend = key.split(" | ")
        if backend != "pytorch":
            per[name] = min(per.get(name, float("inf")), s["p50_ms"])
    return min(per, key=per.get)


def run(s: StudySettings, say: Callable[[str], None] = lambda _: None) -> Path:
    """Run the study into `s.out` (written to a temporary folder first); returns the folder."""
    check_threads(s.threads)
    if s.train_steps < 0:
        raise UserError(f"--train-steps {s.train_steps} must be 0 (no training) or more")
    check_folder(s.out, "--out", "expected a folder for the study (replaced if it exists)")
    s.out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(s.seed)
    with atomic_folder(s.out) as folder, tempfile.TemporaryDirectory(prefix="edge-export-study-") as work:
        study = Study(s, Path(work), say)
        say("the roofs: FP32 matrix-multiply peak and copy bandwidth")
        roofs = roofline.measure(s.threads)
        peak = roofs.peak
        sections = convolution(study)
        sections += normalisation(study)
        sections += upsampling(study)
        sections += encoder_decoders(study)
        sections += pet(study)
        sections += breakdown(study, _fastest(sections[1]), roofs)
        sections += against_peers(study, roofs)
        say("report and plots")
        write_report(folder, s, sections, peak)
    return s.out


