"""`python -m runtime`: verify, benchmark and run a bundle on the device (no torch)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from .backends import BACKENDS, REGISTRY
from .bundle import PRECISIONS
from .errors import BackendError, Parser, UserError, check_folder

# Outputs up to this many numbers go into infer's JSON as lists; all of them go into its .npz.
RAW_JSON_LIMIT = 100_000


def _positive(convert, what: str):
    """argparse type: a number above 0 (`convert` is int or float)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive {what}")
        return value
    return parse


positive = _positive(int, "whole number")
positive_seconds = _positive(float, "number of seconds")


def png_file(text: str) -> Path:
    """A path for a picture: a .png name in a folder that exists (nothing is created before the measurement)."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"{text!r} is not a .png file name (the picture is a PNG)")
    if not path.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: its folder {str(path.absolute().parent)!r} does not exist")
    return path


def format_table(columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def cmd_verify(args) -> int:
    from .bundle import Bundle
    from .compare import truth_text
    from .tasks import task_of
    from .verify import verify

    bundle = Bundle.open(args.bundle)
    signer = None
    if args.trust is not None:  # nothing of a bundle its key did not sign is run
        from .signing import check_signature

        signer = check_signature(bundle.path, bundle.manifest, args.trust)
    task = task_of(bundle.spec)
    result = verify(bundle, threads=args.threads)
    if args.json:
        print(json.dumps({**result.to_dict(task), **({"signed_by": signer} if signer else {})}, indent=2))
        return 0 if result.passed else 1
    if signer:
        print(f"ok    manifest signed by {signer}, the trusted key of {args.trust}")
    for problem in result.file_problems:
        print(f"FAIL  {problem}")
    if not result.file_problems:
        print(f"ok    sha256 of all {len(result.bundle_files)} files matches the manifest")
    evaluation = bundle.manifest.get("evaluation")
    if evaluation and not result.file_problems:
        print(f"ok    {evaluation['images']} labelled images in the bundle; PyTorch FP32 on them: "
              + ", ".join(f"{k} {v:.4f}" for k, v in evaluation["reference"].items() if isinstance(v, float))
              + "; allowed drop " + ", ".join(f"{k} {v:g}" for k, v in evaluation["max_drop"].items()))
    labels = ["on the labels"] if evaluation else []
    rows = []
    for c in result.checks:
        a = c.artifact
        if c.skipped or c.error:
            rows.append([a.file, a.backend, a.precision, "FAIL" if c.error else "skipped",
                         "cannot run here" if c.error else "", "", "" if c.error else c.skipped, *[""] * len(labels)])
            continue
        worst = c.parity.worst
        rows.append([a.file, a.backend, a.precision, "pass" if c.passed else "FAIL",
                     f"{worst.max_rel:.1e} ({worst.name})", f"{worst.bound:.1e}", task.describe(c.parity.task),
                     *([truth_text(c.parity.truth, c.parity.max_drop)] if labels else [])])
    print(format_table(["artifact", "backend", "precision", "parity", "max rel err", "bound", "task vs PyTorch",
                        *labels], rows))
    for c in result.checks:
        for failure in c.parity.failures() if c.parity else [c.error] if c.error else []:
            print(f"FAIL  {c.artifact.file} ({c.artifact.backend} {c.artifact.precision}): {failure}")
    print("verify: " + ("passed" if result.passed else "FAILED"))
    return 0 if result.passed else 1


def cmd_bench(args) -> int:
    from .bench import bench_interleaved, single_stream, sustained, throughput
    from .bundle import Bundle
    from .memory import measure, phases_line
    from .plots import latency_memory, require as require_plotting
    from .runners import choose, load

    bundle = Bundle.open(args.bundle)
    if args.choose:
        return _bench_choose(bundle, args)
    if args.tune or args.memory_budget:
        raise UserError(f"--{'tune' if args.tune else 'memory-budget'} is for --choose (what this device runs): "
                        "add --choose")
    if args.plot:
        require_plotting()
    args.backend, args.precision = choose(bundle, args.backend, args.precision)
    inputs, _ = bundle.golden()
    # the golden inputs, repeated to the batch asked for
    feeds = {k: np.resize(v, (args.batch, *v.shape[1:])) for k, v in inputs.items()}
    start = time.perf_counter()
    with load(bundle, args.backend, args.precision, args.threads) as runner:
        load_ms = (time.perf_counter() - start) * 1e3
        if args.protocol == "single-stream":
            stats, times = single_stream({"runner": runner}, feeds, args.warmup, args.min_queries,
                                         args.min_duration)
        else:
            times = {}
            stats = bench_interleaved({"runner": runner}, feeds, args.warmup, args.runs, rounds=1, times=times)
        stats = stats["runner"]
        if args.sustained:
            stats["sustained"] = sustained(runner, feeds, args.sustained, args.window, args.warmup)
    stats = {"bundle": str(bundle.path), "backend": args.backend, "precision": args.precision,
             "recommended": bundle.manifest.get("recommended"), "load_ms": load_ms, **stats}
    if args.throughput:
        with load(bundle, args.backend, args.precision, args.threads, mode="throughput") as runner:
            stats["throughput"] = throughput(runner, feeds, seconds=args.throughput, warmup=args.warmup)
    if args.profile:
        with load(bundle, args.backend, args.precision, args.threads, profile=True) as runner:
            stats["profile"] = runner.profile(feeds, runs=args.profile)
    stats["memory"] = measure(bundle.path, args.backend, args.precision, args.threads)
    key = f"{args.backend} {args.precision}"
    if args.plot:
        stats["plot"] = str(latency_memory(f"{bundle.name} {key}: latency, batch {stats['batch']}", {key: times["runner"]},
                                           args.plot, memory={key: stats["memory"]}, sustained=stats.get("sustained")))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    recommended = stats["recommended"] or {}
    mark = (" (the build's recommendation)" if (recommended.get("backend"), recommended.get("precision"))
            == (args.backend, args.precision) else "")
    print(f"{bundle.name} {args.backend} {args.precision}{mark}, batch {stats['batch']}, "
          f"threads {stats['settings']['threads']}: load {load_ms:.0f} ms, first inference {stats['first_ms']:.2f} ms; "
          f"latency over {stats['runs']} runs after {stats['warmup']} warm-up: p50 {stats['p50_ms']:.2f} ms, "
          f"p90 {stats['p90_ms']:.2f} ms, p99 {stats['p99_ms']:.2f} ms, mean {stats['mean_ms']:.2f} "
          f"± {stats['std_ms']:.2f} ms")
    if args.protocol == "single-stream":
        print(single_stream_line(stats))
    if args.sustained:
        print(sustained_line(stats["sustained"]))
    print(f"memory, in a fresh process (MB, peak resident by phase): {phases_line(stats['memory'])}")
    if args.throughput:
        t = stats["throughput"]
        how = REGISTRY[args.backend].throughput(t["parallel"])
        print(f"throughput (not latency: calls overlap): {t['images_per_s']:.1f} images/s "
              f"({t['inferences']} inferences in {t['seconds']:.1f} s, {how})")
    if args.plot:
        print(f"plot: {stats['plot']}")
    if args.profile:
        print(f"\nwhere the time goes, per op type ({args.profile} runs, "
              f"{REGISTRY[args.backend].profiler}):")
        print(format_table(["op type", "ms / inference", "share", "kernels"],
                           [[r["op_type"], f"{r['ms']:.3f}", f"{100 * r['share']:.1f}%", str(r["count"])]
                            for r in stats["profile"]]))
    return 0


def _bench_choose(bundle, args) -> int:
    """Replay the golden vectors through every artifact that runs here; time those that pass,
    interleaved; keep the fastest as this device's choice."""
    from .bench import bench_interleaved, difference, single_stream
    from .doctor import doctor
    from .plots import latency_memory, require as require_plotting
    from .memory import measure_all
    from .runners import load
    from .verify import verify

    if args.backend or args.precision or args.throughput or args.profile or args.sustained or args.batch != 1:
        raise UserError("--choose times every artifact at batch 1 and chooses among them; "
                        "drop --backend, --precision, --batch, --throughput, --profile and --sustained")
    report = doctor(bundle)
    statuses = {(s["backend"], s["precision"]): s for s in report["artifacts"]}
    checked = verify(bundle, threads=args.threads)
    if checked.file_problems:
        raise UserError(f"bundle {str(bundle.path)!r} does not match its manifest "
                        f"({'; '.join(checked.file_problems)}); copy it again before choosing")
    passed = [(c.artifact.backend, c.artifact.precision) for c in checked.checks if c.passed]
    refused = {(c.artifact.backend, c.artifact.precision): c.skipped or c.error or "; ".join(c.parity.failures())
               for c in checked.checks if not c.passed}
    if not passed:
        raise UserError(f"no artifact of {bundle.name} runs within its bounds here: "
                        + "; ".join(f"{b} {p}: {why}" for (b, p), why in refused.items()))
    if args.plot:
        require_plotting()
    inputs, _ = bundle.golden()
    signature = report["cpu_signature"]
    settings = (bundle.choice_record(signature) or {}).get("settings", {})
    tuning = None
    if args.tune:  # this device's own settings, used by the runs below and by runtime.load from now on
        from .tune import tune

        tuned = [a for a in bundle.artifacts if (a.backend, a.precision) in passed and a.precision != "int8"]
        one = {k: v[:1] for k, v in inputs.items()}
        tuning = tune(tuned, bundle.path, bundle.spec, bundle.manifest["outputs"], one, args.threads, args.tune,
                      args.memory_budget)
        settings = {key: record["chosen"] for key, record in tuning.items()}
        bundle.record_device_choice(signature, {**(bundle.choice_record(signature) or {}), "settings": settings})
    with contextlib.ExitStack() as stack:
        runners = {f"{b} {p}": stack.enter_context(load(bundle, b, p, args.threads)) for b, p in passed}
        if args.protocol == "single-stream":
            stats, times = single_stream(runners, inputs, args.warmup, args.min_queries, args.min_duration)
        else:
            times = {}
            stats = bench_interleaved(runners, inputs, warmup=args.warmup, runs=args.runs, times=times)
    memory = measure_all(bundle.path, passed, args.threads)
    for key, found in memory.items():
        stats[key]["memory"] = found
    fits = [k for k in stats if args.memory_budget is None or memory[k].get("peak_mb", float("inf")) <= args.memory_budget]
    if not fits:
        smallest = min(stats, key=lambda k: memory[k].get("peak_mb", float("inf")))
        raise UserError(f"no artifact of {bundle.name} fits --memory-budget {args.memory_budget:g} MB here: the "
                        f"smallest peak is {smallest}'s, {peak_text(memory[smallest])} MB")
    for key in stats:
        if key not in fits:
            refused[tuple(key.split())] = (f"its peak resident set, {memory[key]['peak_mb']:.0f} MB, is over "
                                           f"--memory-budget {args.memory_budget:g} MB")
    fastest = min(fits, key=lambda k: stats[k]["p50_ms"])
    backend, precision = fastest.split()
    runner_up = min((k for k in fits if k != fastest), key=lambda k: stats[k]["p50_ms"], default=None)
    versus = (difference(times[fastest], times[runner_up], stats[fastest]["others_cores"]) | {"fastest": fastest, "runner_up": runner_up}
              if args.protocol == "single-stream" and runner_up else None)
    recommended = bundle.manifest.get("recommended") or {}
    if versus and not versus["real"] and f"{recommended.get('backend')} {recommended.get('precision')}" == runner_up:
        backend, precision = runner_up.split()  # undecided: the measurement does not overturn the build's choice
        versus["kept"] = f"{runner_up} (the build's recommendation; the difference is not real)"
    machine = report["machine"]
    choice = {"backend": backend, "precision": precision, "cpu": machine["cpu"], "machine": machine["machine"],
              "emulated": machine["emulated"], "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "p50_ms": {k: round(v["p50_ms"], 3) for k, v in stats.items()}, "protocol": args.protocol,
              **({"versus_runner_up": versus} if versus else {}), "settings": settings,
              **({"tuning": tuning} if tuning else {}),
              "not_chosen": {f"{b} {p}": why for (b, p), why in refused.items()}}
    path = bundle.record_device_choice(signature, choice)
    plot = (latency_memory(f"{bundle.name} on {report['machine']['cpu']}: latency, batch 1, interleaved", times,
                           args.plot, memory=memory) if args.plot else None)
    if args.json:
        print(json.dumps({"bundle": str(bundle.path), "cpu_signature": report["cpu_signature"], "machine": machine,
                          "choice": {"backend": backend, "precision": precision}, "choice_file": str(path),
                          "artifacts": {k: {**statuses[tuple(k.split())], **v} for k, v in stats.items()},
                          **({"versus_runner_up": versus} if versus else {}),
                          "not_chosen": choice["not_chosen"], **({"plot": str(plot)} if plot else {})}, indent=2))
        return 0
    emulated = " (emulated CPU: these times say nothing about a real board)" if machine["emulated"] else ""
    print(f"{bundle.name} on {machine['cpu']} ({machine['machine']}, {machine['logical_cores']} cores){emulated}, "
          f"batch 1, {stats[fastest]['runs']} runs each after {args.warmup} warm-up, interleaved:")
    def quantile(v: dict, q: str) -> str:  # with its 95% interval under the single-stream protocol
        iv = v.get("intervals", {}).get(q)
        return f"{v[q]:.2f}" + (f" [{iv[0]:.2f}, {iv[1]:.2f}]" if iv else "")

    rows = [[k, quantile(v, "p50_ms"), quantile(v, "p90_ms"), peak_text(v["memory"]),
             statuses[tuple(k.split())]["status"]] for k, v in stats.items()]
    rows += [[f"{b} {p}", "", "", "", f"not timed: {why}"] for (b, p), why in refused.items()
             if f"{b} {p}" not in stats]
    rows = [[*r[:4], r[4] + (f"; not chosen: {refused[tuple(r[0].split())]}" if tuple(r[0].split()) in refused
                             and r[0] in stats else "")] for r in rows]
    print(format_table(["artifact", "p50 ms", "p90 ms", "peak MB", "here"], rows))
    if args.protocol == "single-stream":
        print(f"[low, high]: the bootstrap 95% interval; {conditions_text(stats[fastest])}")
    if versus:
        print(versus_line(versus))
    if tuning:
        print("settings measured here: " + "; ".join(
            f"{k.replace('/', ' ')}: " + (", ".join(f"{n} {v}" for n, v in r["chosen"].items()
                                                   if r["defaults"].get(n) != v) or "the defaults")
            + (" (a faster candidate was undecided)" if r["undecided"] else "") for k, r in tuning.items()))
    if plot:
        print(f"plot: {plot}")
    print(f"chosen for this device: {backend} {precision} (kept in {path}; runtime.load uses it by default)")
    return 0


def conditions_text(stats: dict) -> str:
    """The machine's state before and after a single-stream run, and what other processes held during it."""
    def state(c: dict) -> str:
        return (f"load {c['loadavg'][0]:.2f}" + (f", {c['governor']}" if c["governor"] else "")
                + (f", {c['mhz']} MHz" if c["mhz"] else "") + (f", {c['temperature_c']:.0f} C" if c["temperature_c"]
                                                               is not None else ""))
    held = stats.get("others_cores")
    return (f"before: {state(stats['conditions']['before'])}; after: {state(stats['conditions']['after'])}"
            + (f"; other processes held {held:.2f} cores on average" if held is not None else ""))


def single_stream_line(stats: dict) -> str:
    """The single-stream figures with their intervals and the conditions they were measured in."""
    iv = stats["intervals"]
    return (f"single-stream: {stats['runs']} queries over {stats['seconds']:.1f} s; 95% intervals: "
            + ", ".join(f"{q.removesuffix('_ms')} {stats[q]:.2f} ms [{iv[q][0]:.2f}, {iv[q][1]:.2f}]" for q in iv)
            + f"; {conditions_text(stats)}")


def sustained_line(found: dict) -> str:
    temps = [w["temperature_c"] for w in found["windows"] if w["temperature_c"] is not None]
    return (f"sustained {found['seconds']:g} s: p50 per {found['window_s']:g} s window "
            + ", ".join(f"{w['p50_ms']:.2f}" for w in found["windows"])
            + f" ms; drift of the last window from the first {100 * found['drift']:+.1f}%"
            + ("; other processes held " + ", ".join(f"{w['others_cores']:.2f}" for w in found["windows"])
               + " cores" if all(w.get("others_cores") is not None for w in found["windows"]) else "")
            + (f"; temperature {temps[0]:.0f} -> {temps[-1]:.0f} C" if temps else "; no temperature sensor here"))


def versus_line(v: dict) -> str:
    low, high = v["interval"]
    return (f"{v['fastest']} against {v['runner_up']}: the runner-up's p50 is {v['ratio_p50']:.3f}x "
            f"(95% interval {low:.3f} to {high:.3f}): "
            + ("a real difference" if v["real"] else ("undecided: other processes held "
               f"{v['others_cores']:.2f} cores on average while they were timed" if v["busy"] else
               "undecided at this length") + ", so " + (f"kept {v['kept']}" if "kept" in v else "either serves")))


def peak_text(found: dict) -> str:
    """An artifact's peak resident set in MB (measured in a fresh process), or why it was not measured."""
    return f"{found['peak_mb']:.0f}" if "peak_mb" in found else "not measured"


def cmd_doctor(args) -> int:
    from .bundle import Bundle
    from .doctor import doctor, feature_names

    bundle = Bundle.open(args.bundle) if args.bundle else None
    report = doctor(bundle)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    m = report["machine"]
    rows = [["CPU", f"{m['cpu']} ({m['machine']}, {m['logical_cores']} logical cores)"
             + ("; emulated: the CPU described is the host's" if m["emulated"] else "")],
            ["features", feature_names(m["flags"]) if m["flags_known"] else
             "unknown (" + ("emulated" if m["emulated"] else "no /proc/cpuinfo") + ")"],
            ["C library", f"glibc {m['glibc']}" if m["glibc"] else "not glibc"],
            ["Python", m["python"]],
            ["memory available", f"{report['available_mb']:.0f} MB" if report["available_mb"] else "unknown"],
            *[[name, version or "not installed"] for name, version in report["versions"].items()],
            ["CPU signature", report["cpu_signature"]]]
    print(format_table(["", "this device"], rows))
    if bundle is not None:
        print()
        print(format_table(["artifact", "backend", "precision", "peak MB at build", "here", "why"],
                           [[a["file"], a["backend"], a["precision"],
                             f"{a['peak_mb']:.0f}" if a["peak_mb"] is not None else "not measured", a["status"],
                             a["why"]] for a in report["artifacts"]]))
    return 0


def cmd_infer(args) -> int:
    from .bundle import Bundle
    from .images import caption, open_image, preprocess
    from .runners import load
    from .tasks import task_of

    bundle = Bundle.open(args.bundle)
    spec = bundle.spec
    task = task_of(spec)
    images = {path: open_image(path) for path in args.images}  # every file checked before any work
    if len(spec.inputs) > 1:
        raise UserError(f"model {bundle.name!r} takes {len(spec.inputs)} inputs ({', '.join(spec.input_names)}); "
                        "infer feeds one image: run it from Python with runtime.load(bundle).infer({name: array})")
    if spec.preprocess is None:
        raise UserError(f"model {spec.name!r} takes no image (its spec has no preprocessing); "
                        "feed it arrays through runtime.load(bundle).infer")
    out = check_folder(args.out)
    out.mkdir(parents=True, exist_ok=True)
    untrained = bundle.manifest.get("checkpoint") is None
    pictures = 0
    with load(bundle, args.backend, args.precision, args.threads) as runner:
        for path, image in images.items():
            x = preprocess(image, spec)
            outputs = runner.infer(x)
            picture, found = task.render(image, outputs)
            stem = out / Path(path).stem
            written = []
            if picture is not None:
                if untrained:
                    picture = caption(picture, "random weights (built without a checkpoint): this shows noise")
                picture.save(stem.with_suffix(".png"))
                written.append(stem.with_suffix(".png"))
                pictures += 1
            raw = {name: {"shape": list(v.shape), "data": v.tolist()} for name, v in outputs.items()
                   if v.size <= RAW_JSON_LIMIT}
            stem.with_suffix(".json").write_text(json.dumps(
                {"image": str(path), "size": list(image.size), "input_size": list(x.shape[:1:-1]),
                 "model": bundle.name, "task": task.kind, "backend": runner.backend, "precision": runner.precision,
                 "weights": "random" if untrained else "checkpoint", **found, "outputs": raw}))
            np.savez_compressed(stem.with_suffix(".npz"), **outputs)
            written += [stem.with_suffix(".json"), stem.with_suffix(".npz")]
            print(f"{path} -> {', '.join(map(str, written))}")
    if not pictures:
        print(f"note: {bundle.name} has no task edge-export draws (its task is {task.kind}), so infer draws no "
              "picture; the outputs are in the .json (up to 100,000 numbers each) and all of them in the .npz")
    if untrained:
        source = spec.source
        if "variant" in source:
            variant = source["variant"]
            print(f"note: {variant} was built with random weights (no --checkpoint), so its pictures show noise. "
                  f"For a meaningful one, build from trained weights: python -m models train --variant {variant} "
                  f"--steps 200 --out {variant}.pt (the detectors and the pet segmenters train on generated tasks; "
                  f"about 3 min for dsc on 2 cores), then python -m export build --variant {variant} "
                  f"--checkpoint {variant}.pt (or your own checkpoint)")
        else:
            print(f"note: {bundle.name} was built with random weights (no --checkpoint); build it with "
                  "--checkpoint YOUR_WEIGHTS.pt for meaningful outputs")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m runtime", description="Verify, benchmark and run an edge-export bundle.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    v = sub.add_parser("verify", help="check hashes and replay the golden vectors on every installed backend")
    v.add_argument("bundle")
    v.add_argument("--threads", type=positive)
    v.add_argument("--json", action="store_true", help="print the checks as JSON")
    v.add_argument("--trust", type=Path, metavar="KEY.pub",
                   help="run nothing unless the bundle is signed by this public key (python -m export sign) "
                        "and unchanged since")
    b = sub.add_parser("bench", help="latency of one artifact")
    b.add_argument("bundle")
    b.add_argument("--backend", help=f"one of {', '.join(BACKENDS)} (default: the build's recommendation)")
    b.add_argument("--precision", help=f"one of {', '.join(PRECISIONS)} (those the bundle has; default: the recommended one)")
    b.add_argument("--threads", type=positive, help="inference threads (default: the backend's choice)")
    b.add_argument("--runs", type=positive, default=100, help="timed runs (default 100)")
    b.add_argument("--warmup", type=positive, default=10, help="untimed runs first (default 10)")
    b.add_argument("--batch", type=positive, default=1, help="batch size (default 1)")
    b.add_argument("--throughput", type=positive_seconds, metavar="SECONDS", nargs="?", const=5.0,
                   help="also measure throughput for SECONDS (default 5) with concurrent calls")
    b.add_argument("--profile", type=positive, metavar="RUNS", nargs="?", const=20,
                   help="also show the time per op type over RUNS runs (default 20)")
    b.add_argument("--protocol", choices=("quick", "single-stream"), default="quick",
                   help="quick: --runs timed calls; single-stream: at least --min-queries calls and "
                        "--min-duration seconds per artifact, p50/p90/p99 with 95%% intervals (MLPerf's rule)")
    b.add_argument("--min-queries", type=positive, default=1024, help="single-stream: timed calls (default 1024)")
    b.add_argument("--min-duration", type=positive_seconds, default=60.0, metavar="SECONDS",
                   help="single-stream: seconds of timed calls per artifact (default 60)")
    b.add_argument("--sustained", type=positive_seconds, metavar="SECONDS",
                   help="also run back to back for SECONDS: p50 per window, drift, temperature")
    b.add_argument("--window", type=positive_seconds, default=60.0, metavar="SECONDS",
                   help="--sustained: the window each p50 covers (default 60)")
    b.add_argument("--choose", action="store_true",
                   help="time every artifact that runs here, interleaved, and keep the fastest as this device's "
                        "choice (device-choice.json beside the hashed files; runtime.load uses it)")
    b.add_argument("--memory-budget", type=positive_seconds, metavar="MB",
                   help="with --choose: choose only among artifacts whose peak resident set, measured here, fits")
    b.add_argument("--tune", type=positive_seconds, nargs="?", const=2.0, metavar="SECONDS",
                   help="with --choose: first measure each artifact's backend settings here, SECONDS of timed "
                        "calls each (default 2), kept with the choice; runtime.load uses them on this kind of CPU")
    b.add_argument("--plot", type=png_file, metavar="FILE.png",
                   help="also draw the latency distribution, memory by phase and (with --sustained) p50 over "
                        "time into FILE.png (needs matplotlib)")
    b.add_argument("--json", action="store_true", help="print the figures as JSON")
    d = sub.add_parser("doctor", help="this device: CPU, C library, Python, backends; what of a bundle runs here")
    d.add_argument("bundle", nargs="?", help="a bundle folder: which of its artifacts run here, emulated or not at all")
    d.add_argument("--json", action="store_true", help="print the report as JSON")
    i = sub.add_parser("infer", help="run images through the bundle; write pictures and outputs")
    i.add_argument("bundle")
    i.add_argument("images", nargs="+", metavar="IMAGE")
    i.add_argument("--out", default="predictions", help="folder for the results (default: predictions/)")
    i.add_argument("--backend", help=f"one of {', '.join(BACKENDS)} (default: the build's recommendation)")
    i.add_argument("--precision", help=f"one of {', '.join(PRECISIONS)} (those the bundle has; default: the recommended one)")
    i.add_argument("--threads", type=positive)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"verify": cmd_verify, "bench": cmd_bench, "doctor": cmd_doctor,
                "infer": cmd_infer}[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BackendError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
