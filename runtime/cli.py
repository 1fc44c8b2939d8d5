"""`python -m runtime`: verify, benchmark and run a bundle on the device (no torch)."""

from __future__ import annotations

import argparse
import json
import sys

from .bundle import BACKENDS, PRECISIONS
from .compare import describe_task
from .errors import UserError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see python -m runtime --help)\n")


def format_table(columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def cmd_verify(args) -> int:
    from .verify import verify

    result = verify(args.bundle, threads=args.threads)
    for problem in result.file_problems:
        print(f"FAIL  {problem}")
    if not result.file_problems:
        print(f"ok    sha256 of all {len(result.bundle_files)} files matches the manifest")
    rows = []
    for c in result.checks:
        a = c.artifact
        if c.skipped:
            rows.append([a["file"], a["backend"], a["precision"], "skipped", c.skipped, "", ""])
            continue
        worst = c.parity.worst
        rows.append([a["file"], a["backend"], a["precision"], "pass" if c.passed else "FAIL",
                     f"{worst.max_rel:.1e} ({worst.name})", f"{worst.bound:.1e}", describe_task(c.parity.task)])
    print(format_table(["artifact", "backend", "precision", "parity", "max rel err", "bound", "task vs PyTorch"], rows))
    for c in result.checks:
        for failure in c.parity.failures() if c.parity else []:
            print(f"FAIL  {c.artifact['file']} ({c.artifact['backend']} {c.artifact['precision']}): {failure}")
    print("verify: " + ("passed" if result.passed else "FAILED"))
    return 0 if result.passed else 1


def cmd_bench(args) -> int:
    from .bench import bench
    from .bundle import Bundle
    from .runners import load

    bundle = Bundle.open(args.bundle)
    inputs, _ = bundle.golden()
    feeds = {k: v[: args.batch] for k, v in inputs.items()}
    with load(bundle, args.backend, args.precision, args.threads) as runner:
        stats = bench(runner, feeds, warmup=args.warmup, runs=args.runs)
    stats = {"bundle": str(bundle.path), "backend": args.backend, "precision": args.precision, **stats}
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"{bundle.manifest['variant']} {args.backend} {args.precision}, batch {stats['batch']}, "
              f"threads {stats['settings']['threads']}: first inference {stats['first_ms']:.2f} ms; "
              f"latency over {stats['runs']} runs after {stats['warmup']} warm-up: p50 {stats['p50_ms']:.2f} ms, "
              f"p90 {stats['p90_ms']:.2f} ms, p99 {stats['p99_ms']:.2f} ms, mean {stats['mean_ms']:.2f} "
              f"± {stats['std_ms']:.2f} ms")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m runtime", description="Verify, benchmark and run an edge-export bundle.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    v = sub.add_parser("verify", help="check hashes and replay the golden vectors on every installed backend")
    v.add_argument("bundle")
    v.add_argument("--threads", type=int)
    b = sub.add_parser("bench", help="latency of one artifact")
    b.add_argument("bundle")
    b.add_argument("--backend", default="onnxruntime", help=f"one of {', '.join(BACKENDS)}")
    b.add_argument("--precision", default="fp32", help=f"one of {', '.join(PRECISIONS)} (those the bundle has)")
    b.add_argument("--threads", type=int)
    b.add_argument("--runs", type=int, default=100)
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"verify": cmd_verify, "bench": cmd_bench}[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
