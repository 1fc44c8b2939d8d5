"""`python -m export`: build a bundle, list the variants."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runtime.backends import BACKENDS, DEFAULT_BACKENDS, REGISTRY
from runtime.bundle import SIGNATURE
from runtime.errors import Parser, UserError
from runtime.machine import usable_cores

from .pack import DEFAULT_GLIBC, TARGETS, archive_member, pack


def _console(stderr: bool) -> Console:
    """Styled output on a terminal; plain text (no ANSI codes, whatever FORCE_COLOR
    says) and 200 columns (rich would assume 80) into a pipe or a file. The stream
    is looked up at each write, so a caller that swaps sys.stdout gets the output."""
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, highlight=False, force_terminal=tty, no_color=not tty, width=None if tty else 200)


console = _console(stderr=False)
errors = _console(stderr=True)


def _threads(args) -> int:
    """--threads as given (0 too: the checks refuse it), else every core this process may use."""
    return args.threads if args.threads is not None else usable_cores()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m export", description="Export compressed vision models to edge CPUs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (_build_command, _pack_command, _deploy_command, _fleet_commands, _signing_commands,
                    _diagnose_command, _int8_command, _study_command, _compete_command, _evaluate_command,
                    _list_command):
        command(sub)
    return parser


def _build_command(sub) -> None:
    from .settings import DEFAULT_OPSET

    b = sub.add_parser("build", help="build, prove and benchmark a bundle: a zoo variant or your own model")
    _model_arguments(b, "the PyTorch weights (a state_dict saved with torch.save; default: random init)")
    b.add_argument("--out", type=Path, default=Path("artifacts"), help="artifacts root (default: artifacts/)")
    b.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    b.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help=f"comma-separated subset of {','.join(BACKENDS)} (default: {','.join(DEFAULT_BACKENDS)}; "
                        "the others when asked for)")
    b.add_argument("--threads", type=int, help="inference threads for every backend (default: every core this process may use)")
    b.add_argument("--pack", action="store_true", help="also write <out>/<name>.tar.gz to copy to a device")
    b.add_argument("--sign", type=Path, metavar="KEY", help="sign the bundle's manifest with this ed25519 private "
                   "key (python -m export keygen); devices check it with runtime verify --trust KEY.pub")
    b.add_argument("--no-rewrites", dest="rewrites", action="store_false",
                   help="leave the simplified graph as it is (default: apply the graph rewrites that do less work)")
    b.add_argument("--tune-budget", type=float, default=2.0, metavar="SECONDS",
                   help="seconds of timed calls per artifact to choose its backend settings, and per backend "
                        "to choose the Winograd rewrite, on --threads threads (default 2; 0: the backends' "
                        "defaults, no Winograd)")
    b.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip measuring each artifact's memory by phase (about a second per artifact)")
    b.add_argument("--memory-budget", type=float, metavar="MB",
                   help="recommend only an artifact whose peak resident set fits in MB (the board's free memory)")
    _int8_arguments(b.add_argument_group("INT8"))
    _data_arguments(b.add_argument_group("labelled data (accuracy against the truth)"))


def _data_arguments(g) -> None:
    g.add_argument("--data", type=Path, metavar="DIR",
                   help="labelled images (masks, or keypoints as COCO JSON, CSV or JSON; as `export evaluate --data` "
                        "reads them): some ride in the bundle, and FP16/INT8 ship only within --max-drop of PyTorch "
                        "FP32 on them")
    g.add_argument("--max-drop", metavar="METRIC=DROP[,...]",
                   help="the drop allowed against PyTorch FP32 on --data: miou=0.01 (one point; a segmenter's "
                        "default), pixel_accuracy, mean_dice; pck=0.01 (a detector's default), keypoint_error_px")
    g.add_argument("--eval-samples", type=int, default=32, metavar="N",
                   help="labelled images the bundle carries and judges on (default 32)")
    g.add_argument("--ignore-index", type=int, default=255, metavar="N",
                   help="the mask value that is not scored (default 255)")
    g.add_argument("--label-map", type=Path, metavar="FILE.json",
                   help='label id -> train id, as Cityscapes gives them ({"7": 0, "8": 1, ...}; other ids are ignored)')


def parse_max_drop(text: str | None) -> dict[str, float]:
    """--max-drop METRIC=DROP[,METRIC=DROP...] -> {metric: drop}, or a UserError naming the form."""
    if not text:
        return {}
    found = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            found[name.strip().lower()] = float(value)
        except ValueError:
            raise UserError(f"--max-drop {text!r}: expected METRIC=DROP[,METRIC=DROP...], e.g. miou=0.01") from None
    return found


def _int8_arguments(g) -> None:
    g.add_argument("--quantize", metavar="int8", help="also build INT8 artifacts (calibrated)")
    g.add_argument("--calib-dir", type=Path, help="calibration images (PNG/JPEG; default: the generated task's)")
    g.add_argument("--calib-samples", type=int, default=32, help="calibration images used (default 32)")
    g.add_argument("--calib-method", default="minmax",
                   help="ONNX Runtime calibration: minmax, entropy, percentile, or all (compare them, go on with "
                        "the best)")
    g.add_argument("--keep-fp32", action="append", default=[], metavar="MODULE",
                   help="a module path (as named_modules names it, e.g. head or decoder.3) that INT8 leaves in float")
    g.add_argument("--int8-budget", type=float, default=120.0, metavar="SECONDS",
                   help="time per backend for INT8's per-layer sensitivity and frontier when the full plan loses "
                        "(default 120)")
    g.add_argument("--qat", type=int, default=0, metavar="STEPS",
                   help="when post-training INT8 loses, also fine-tune this many steps with INT8 rounding simulated "
                        "(distilled from the FP32 model on the calibration images) and search again")
    g.add_argument("--int8-anyway", action="store_true",
                   help="quantize even on a CPU without INT8 dot-product instructions (VNNI, AMX, Arm SDOT)")


def _pack_command(sub) -> None:
    p = sub.add_parser("pack", help="one .tar.gz (and its .sha256) of a bundle, to copy to a device")
    p.add_argument("bundle", type=Path, help="a bundle folder, e.g. artifacts/dsc")
    p.add_argument("--out", type=Path, help="folder for the archive (default: beside the bundle)")
    p.add_argument("--target", help=f"an offline install kit for one of {', '.join(TARGETS)}: the bundle, the runtime "
                                    "and the wheels it needs there, install.sh (default: the bundle alone)")
    p.add_argument("--python", help="the device's Python for the kit's wheels (default: this one's, e.g. 3.11)")
    p.add_argument("--glibc", default=DEFAULT_GLIBC,
                   help=f"the oldest glibc the device may have; no wheel needing newer is taken (default {DEFAULT_GLIBC})")


def _deploy_command(sub) -> None:
    d = sub.add_parser("deploy", help="the bundle on devices over SSH, through Ansible: install its kit offline as "
                                      "a release, verify (and bench) there, make it current once it passes")
    d.add_argument("bundle", type=Path, help="a bundle folder, e.g. artifacts/dsc")
    d.add_argument("--to", action="append", default=[], metavar="USER@HOST[:PORT][/PATH]",
                   help="a device, as a one-line inventory (repeat for several; by default all in one batch, none "
                        "stopping the others); PATH defaults to ~/edge-export")
    d.add_argument("--forget", action="append", default=[], metavar="USER@HOST[:PORT]",
                   help="remove a device's record and its rows in report.md (e.g. a mistyped host); repeatable")
    d.add_argument("--identity", type=Path, help="the SSH private key to log in with (default: ssh's own choice)")
    d.add_argument("--known-hosts", type=Path, help="the known_hosts file to check host keys against "
                                                    "(default: ~/.ssh/known_hosts)")
    d.add_argument("--accept-new-host-key", action="store_true",
                   help="trust a device's host key on first contact (a changed key is still refused)")
    d.add_argument("--bench", action="store_true", help="also time every artifact there and keep the device's choice")
    d.add_argument("--force", action="store_true", help="copy the kit again even where the same kit is installed")
    fleet = d.add_argument_group("a fleet")
    fleet.add_argument("--inventory", type=Path, metavar="HOSTS",
                       help="an Ansible inventory (YAML or INI: groups, ansible_user, ansible_port, "
                            "ansible_ssh_private_key_file, ansible_ssh_common_args; the folder on the device as "
                            "edge_export_path): releases installed in batches, each made current only after its "
                            "gate passes there")
    fleet.add_argument("--limit", help="the inventory's groups or hosts to reach (Ansible's --limit)")
    fleet.add_argument("--serial", help="devices per batch: a number or a percentage (default 1 with --inventory, "
                                        "every device with --to)")
    fleet.add_argument("--max-fail", help="stop once this many devices (or this percentage of all the devices "
                                          "targeted) have failed, and roll back the batch in which it happened "
                                          "(default 1 with --inventory, 100%% with --to)")
    fleet.add_argument("--forks", type=int, help="devices Ansible talks to at once (default Ansible's, 5)")
    fleet.add_argument("--max-p90-ms", type=float, metavar="MS",
                       help="the health gate's latency budget: the recommended artifact's p90 measured there "
                            "(a host's edge_export_max_p90_ms overrides it)")
    d.add_argument("--trust", type=Path, metavar="KEY.pub",
                   help="send only a bundle this key signed, and make each device trust it (PATH/trusted.pub): "
                        "from then on its installer refuses any bundle the key did not sign")
    d.add_argument("--json", action="store_true", help="print every device's results as JSON")


def _signing_commands(sub) -> None:
    k = sub.add_parser("keygen", help="write an ed25519 key pair to sign bundles with: KEY and KEY.pub")
    k.add_argument("--out", type=Path, required=True, metavar="KEY",
                   help="the private key's file (mode 0600; the public key goes to KEY.pub)")
    s = sub.add_parser("sign", help="sign a bundle's manifest (manifest.sig) so devices can check who made it")
    s.add_argument("bundle", type=Path, help="a bundle folder, e.g. artifacts/dsc")
    s.add_argument("key", type=Path, help="the ed25519 private key (python -m export keygen, or ssh-keygen -t "
                                          "ed25519); a passphrase from EDGE_EXPORT_KEY_PASSPHRASE")


def _fleet_commands(sub) -> None:
    r = sub.add_parser("rollback", help="switch each device back to its previous release")
    r.add_argument("bundle", type=Path, help="the bundle whose devices/ records the result")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--inventory", type=Path, metavar="HOSTS", help="an Ansible inventory")
    where.add_argument("--to", action="append", metavar="USER@HOST[:PORT][/PATH]", help="a device (repeatable)")
    r.add_argument("--limit", help="the inventory's groups or hosts to roll back")
    r.add_argument("--forks", type=int, help="devices Ansible talks to at once")
    r.add_argument("--identity", type=Path, help="the SSH private key (default: the inventory's, or ssh's)")
    r.add_argument("--known-hosts", type=Path, help="the known_hosts file to check host keys against")
    r.add_argument("--accept-new-host-key", action="store_true", help="trust a device's host key on first contact")
    r.add_argument("--json", action="store_true", help="print the results as JSON")
    p = sub.add_parser("playbook", help="the rollout as an Ansible playbook, with its kits, for your own "
                                        "ansible-playbook, vault and inventory")
    p.add_argument("bundle", type=Path, help="a bundle folder, e.g. artifacts/dsc")
    p.add_argument("--out", type=Path, required=True, help="a new folder for deploy.yml, rollback.yml and the kits")
    p.add_argument("--target", action="append", choices=list(TARGETS),
                   help="a platform to pack a kit for (repeat; default: every one)")
    p.add_argument("--python", help="the devices' Python (default: this one's)")


def _diagnose_command(sub) -> None:
    from .settings import DEFAULT_OPSET

    d = sub.add_parser("diagnose", help="find the first layer where an artifact departs from PyTorch")
    _model_arguments(d, "the PyTorch weights to compare with (default: random init)")
    d.add_argument("--bundle", type=Path, help="compare with this bundle's artifacts (default: a fresh export)")
    d.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    d.add_argument("--threads", type=int, default=2, help="inference threads (default: 2)")


def _int8_command(sub) -> None:
    q = sub.add_parser("int8", help="what a bundle's INT8 search tried: every plan, the per-layer sensitivity")
    q.add_argument("bundle", type=Path, help="a bundle built with --quantize int8, e.g. artifacts/dsc")
    q.add_argument("--json", action="store_true", help="print the search record (the manifest's) as JSON")


def _study_command(sub) -> None:
    st = sub.add_parser("study", help="the articles' experiments on this machine: report.md with the six tables, the peers and plots")
    st.add_argument("--out", type=Path, default=Path("artifacts/study"), help="folder for the report (default: artifacts/study)")
    st.add_argument("--quick", action="store_true", help="fewer rows and timed calls (a few minutes)")
    st.add_argument("--threads", type=int, help="inference threads for every backend (default: every core this process may use)")
    st.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                    help=f"each table's columns beside PyTorch eager: a subset of {','.join(BACKENDS)} "
                         f"(default: {','.join(DEFAULT_BACKENDS)})")
    st.add_argument("--train-steps", type=int, default=0,
                    help="train the pet networks this many steps first and report their accuracy (default: 0, no training)")
    st.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                    help="time the INT8 artifacts of bundles built here too (default: artifacts/)")


def _compete_command(sub) -> None:
    c = sub.add_parser("compete", help="each bundle's artifacts against PyTorch eager, torch.compile and ExecuTorch")
    c.add_argument("--variants", help="comma-separated names, or 'all' (default: the bundles under --artifacts, "
                                      "else dsc); a missing bundle is built first")
    c.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="bundles root (default: artifacts/)")
    c.add_argument("--threads", type=int, help="threads for every contender (default: every core this process may use)")
    c.add_argument("--runs", type=int, default=50, help="timed calls per contender (default 50)")
    c.add_argument("--json", action="store_true",
                   help="print the figures as JSON instead of tables (the progress goes to standard error)")


def _evaluate_command(sub) -> None:
    ev = sub.add_parser("evaluate", help="a bundle's task metrics against the truth, through the device runtime: "
                                         "on your labelled data (--data), or on the generated held-out split")
    ev.add_argument("bundle", type=Path, help="a bundle folder, e.g. artifacts/dsc")
    ev.add_argument("--data", type=Path, metavar="DIR",
                    help="labelled images: for a segmenter DIR/images and DIR/masks matched by file stem (or Pascal "
                         "VOC's folders); for a keypoint detector DIR/images and DIR/annotations.json (COCO), "
                         "keypoints.csv or keypoints.json; every artifact is scored on them")
    ev.add_argument("--ignore-index", type=int, default=255, metavar="N",
                    help="--data: the mask value that is not scored (default 255)")
    ev.add_argument("--label-map", type=Path, metavar="FILE.json",
                    help='--data: label id -> train id, as Cityscapes gives them ({"7": 0, "8": 1, ...}; other ids '
                         "are ignored)")
    ev.add_argument("--backend", help=f"one of {', '.join(BACKENDS)} (default: the build's recommendation)")
    ev.add_argument("--precision", help="fp32, fp16 or int8 (those the bundle has; default: the recommended one)")
    ev.add_argument("--samples", type=int, default=64, help="held-out samples (default 64)")
    ev.add_argument("--threads", type=int, help="inference threads (default: the backend's choice)")
    ev.add_argument("--json", action="store_true", help="print the figures as JSON")


def _list_command(sub) -> None:
    li = sub.add_parser("list", help="the registered variants with params and mult-adds")
    li.add_argument("--counts", action="store_true",
                    help="count params and mult-adds afresh with torchinfo (builds every model; slower)")


def _model_arguments(p: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """The options that say which model: a zoo variant, or a user's module and its contract."""
    from models.kinds import CONV_KINDS, NORM_KINDS, UPSAMPLE_KINDS
    from runtime.tasks import TASKS

    zoo = p.add_argument_group("a zoo variant")
    zoo.add_argument("--variant", help="a name from `python -m export list`")
    for kind, kinds in (("conv", CONV_KINDS), ("norm", NORM_KINDS), ("upsample", UPSAMPLE_KINDS)):
        zoo.add_argument(f"--{kind}", help=f"override the {kind} kind: {', '.join(kinds)}")
    own = p.add_argument_group("your own model")
    own.add_argument("--model", metavar="FILE.py:NAME", help="a module class, a function returning a module, or a "
                     "module, in a Python file (path/to/file.py:NAME) or an importable package (package.module:NAME)")
    own.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="keyword argument for the class or function (repeat; values read as Python literals)")
    own.add_argument("--input", action="append", default=[], metavar="NAME:SHAPE",
                     help="an input and its example shape, e.g. image:1x3x256x256 (one per forward parameter, in order)")
    own.add_argument("--dynamic", action="append", default=[], metavar="NAME:AXES",
                     help="axes of an input that take any size, e.g. image:0,2,3 (batch, height, width; "
                          "the batch axis always does)")
    own.add_argument("--multiple", type=int, default=1,
                     help="dynamic heights and widths must be multiples of this (the model's total stride; default 1)")
    own.add_argument("--output", action="append", default=[], metavar="NAME",
                     help="names for a tensor or tuple output, in order (default: output, or output0, output1, ...)")
    own.add_argument("--task", help=f"what the outputs mean: {', '.join(TASKS)} (default: none)")
    own.add_argument("--task-output", metavar="NAME", help="the output the task reads (default: logits/value or the first)")
    own.add_argument("--mean", help="per-channel mean subtracted after scaling, e.g. 0.485,0.456,0.406 (default 0)")
    own.add_argument("--std", help="per-channel std divided by, e.g. 0.229,0.224,0.225 (default 1)")
    own.add_argument("--scale", type=float, default=1 / 255, help="pixel values 0..255 times this (default 1/255)")
    own.add_argument("--channels", default="RGB", help="channel order the model expects: RGB or BGR (default RGB)")
    p.add_argument("--classes", type=int, help="segmentation classes (a zoo segmenter's output width; "
                                               "your model's: default its output's channels)")
    p.add_argument("--checkpoint", type=Path, help=checkpoint_help)
    p.add_argument("--name", help="the bundle's name and folder (default: the variant, or your model's class)")


OWN_MODEL_OPTIONS = ("model_arg", "input", "dynamic", "output", "task_output", "mean", "std")


def _model_request(args) -> dict:
    """BuildSettings' model fields from the command line (checked: no torch yet)."""
    from runtime.spec import Preprocess, parse_dynamic, parse_shape

    from .settings import UserModel

    if args.variant is not None and args.model is not None:
        raise UserError("give --variant or --model, not both")
    if args.variant is None and args.model is None:
        raise UserError("name the model: --variant NAME (from `python -m export list`) or --model FILE.py:NAME")
    if args.variant is not None:
        stray = [f"--{o.replace('_', '-')}" for o in OWN_MODEL_OPTIONS if getattr(args, o)] + (
            ["--task"] if args.task is not None else [])
        if stray:
            raise UserError(f"{stray[0]} is for --model; a zoo variant's inputs, outputs and task are its own "
                            "(python -m export list shows them)")
        overrides = {k: getattr(args, k) for k in ("conv", "norm", "upsample") if getattr(args, k) is not None}
        if args.classes is not None:
            overrides["num_classes"] = args.classes
        return {"variant": args.variant, "overrides": overrides, "name": args.name}
    for kind in ("conv", "norm", "upsample"):
        if getattr(args, kind) is not None:
            raise UserError(f"--{kind} overrides a zoo variant's layers; it does not apply to --model")

    def floats(text: str | None, what: str, default: float) -> tuple[float, ...]:
        if text is None:
            return (default,) * 3
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise UserError(f"--{what} {text!r} is not comma-separated numbers; expected e.g. "
                            f"--{what} {'0.485,0.456,0.406' if what == 'mean' else '0.229,0.224,0.225'}") from None

    from models.user import parse_args

    inputs = tuple(parse_shape(t) for t in args.input)
    dynamic = dict(parse_dynamic(t) for t in args.dynamic)
    mean, std = floats(args.mean, "mean", 0.0), floats(args.std, "std", 1.0)
    if inputs and len(inputs[0][1]) == 4 and inputs[0][1][1] == 1 and args.mean is None and args.std is None:
        mean, std = (0.0,), (1.0,)  # one grey channel
    task = {"kind": args.task or "none"}
    if args.task_output:
        task["output"] = args.task_output
    if args.classes is not None:
        task["classes"] = args.classes
    model = UserModel(args.model, parse_args(args.model_arg), inputs, dynamic, tuple(args.output), task,
                      Preprocess(None, args.channels, args.scale, mean, std), args.multiple)
    return {"model": model, "name": args.name}


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    """A spinner on a terminal; into a log, a plain line every 30 s while the stage runs."""
    from runtime.progress import heartbeat, is_terminal

    start = time.perf_counter()
    with console.status(f"{name} ...") if is_terminal() else heartbeat(lambda s: f"  {name}: {s:.0f} s so far"):
        yield
    console.print(f"[green]✓[/] {name:<40} {time.perf_counter() - start:6.1f} s")


def _table(title: str, columns, rows) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="left" if c in ("artifact", "runtime", "variant", "family", "reference", "module", "op", "contender")
                         else "right",
                         no_wrap=c != "reference")
    for row in rows:
        table.add_row(*[f"[red]{c}[/]" if c.startswith("FAIL") else c for c in row])
    return table


def cmd_build(args) -> int:
    settings = _build_settings(args)  # checked before torch and the exporters are imported: a typo costs no time

    from .pipeline import build

    start = time.perf_counter()
    result = build(settings, stage=_stage)
    _print_notes(result.manifest, settings)
    _print_results(result.manifest, result.passed)
    if not result.passed:
        _print_failure(result)
        return 1
    console.print(f"Bundle: {result.bundle}  ({time.perf_counter() - start:.1f} s)")
    if result.signed_by:
        console.print(f"Signed by {result.signed_by} ({SIGNATURE}; devices check it with runtime verify --trust "
                      f"{args.sign}.pub)", markup=False, soft_wrap=True)
    _print_replaced(result)
    if args.pack:
        _print_packed(pack(result.bundle))
    return 0


def _build_settings(args):
    from .settings import BuildSettings, check_settings

    settings = BuildSettings(
        **_model_request(args), checkpoint=args.checkpoint, out=args.out, opset=args.opset,
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        threads=_threads(args),
        quantize=args.quantize, calib_dir=args.calib_dir, calib_samples=args.calib_samples,
        calib_method=args.calib_method, keep_fp32=tuple(args.keep_fp32), int8_budget=args.int8_budget,
        int8_anyway=args.int8_anyway, qat=args.qat, rewrites=args.rewrites,
        tune_budget=args.tune_budget, memory=args.memory, memory_budget=args.memory_budget,
        data=args.data, max_drop=parse_max_drop(args.max_drop), eval_samples=args.eval_samples,
        ignore_index=args.ignore_index, label_map=args.label_map, sign=args.sign,
    )
    check_settings(settings)
    return settings


def _print_notes(manifest: dict, settings) -> None:
    """What the build inferred, rewrote or worked around: the user's contract, a published checkpoint's
    renaming, the graph rewrites, the exporter it fell back to."""
    from .report import rewrite_lines, spec_line, winograd_lines

    if settings.model is not None:
        console.print(f"model contract: {spec_line(manifest['spec'])}", markup=False, soft_wrap=True)
    read = (manifest["checkpoint"] or {}).get("read")
    if read:
        console.print(f"checkpoint: read as {'' if settings.model else 'published '}{read['layout']}, renamed to "
                      f"{'the module' if settings.model else 'the zoo'}'s names" + (
            f"; skipped {len(read['unused'])} tensors its forward never uses: {', '.join(read['unused'])}"
            if read["unused"] else ""), markup=False, soft_wrap=True)
    rewrites = manifest["rewrites"]  # "none applied" and "off" are the report's, not news
    for line in rewrite_lines(rewrites) if rewrites["applied"] else winograd_lines(rewrites):
        console.print(line.removeprefix("- ").replace("Graph rewrite", "graph rewrite", 1), markup=False,
                      soft_wrap=True)
    failure = manifest["export"].get("dynamo_failure")
    if failure:
        console.print(f"[yellow]warning[/]: the dynamo exporter could not export {manifest['name']} "
                      f"({escape(failure)}); exported with the TorchScript exporter instead (check that the traced "
                      "graph covers every branch your model takes)", soft_wrap=True)


def _print_results(manifest: dict, passed: bool) -> None:
    from .report import busy_line, columns, recommended_line, rows, table_title, tuning_line

    console.print(_table(table_title(manifest), columns(manifest), rows(manifest)))
    busy = busy_line(manifest)
    if busy:
        console.print(f"[yellow]warning[/]: {busy}", soft_wrap=True)
    for r in manifest.get("rejected", []):
        console.print(f"[yellow]not shipped[/]: {r['reason']}", soft_wrap=True)
    if manifest.get("tuning"):
        console.print(tuning_line(manifest), markup=False, soft_wrap=True)
    if passed:
        console.print(recommended_line(manifest), markup=False, soft_wrap=True)


def _print_failure(result) -> None:
    for failure in result.failures:
        console.print(f"[red]failed[/]: {failure}", soft_wrap=True)
    for line in result.manifest.get("diagnosis", []):
        console.print(f"[red]where[/]: {line}", soft_wrap=True)
    console.print(f"The failing bundle is kept for inspection at {result.bundle}")


def _print_replaced(result) -> None:
    """What changed against the bundle this build replaced, if any."""
    from .report import bundle_summary

    before = _summary(result.replaced)
    after = bundle_summary(result.manifest)
    changed = {k: (before[k], new) for k, new in after.items() if before[k] != new} if before else {}
    if changed:
        console.print(f"[yellow]replaced[/] the earlier bundle at {result.bundle}: " + "; ".join(
            f"{k}: {old} -> {new}" for k, (old, new) in changed.items()), soft_wrap=True)


def _summary(manifest: dict | None) -> dict[str, str] | None:
    """What the bundle a build replaced held, or None where there was none (or it was unreadable)."""
    from .report import bundle_summary

    try:
        return bundle_summary(manifest) if manifest else None
    except (KeyError, TypeError):
        return None


def _print_packed(archive: Path) -> None:
    name = archive.name.removesuffix(".tar.gz")
    console.print(f"Packed: {archive} ({archive.stat().st_size / 1e6:.1f} MB) and {archive.name}.sha256.", soft_wrap=True)
    console.print(f"The device needs the runtime too (numpy, {', '.join(b.distribution for b in REGISTRY.values())}, "
                  "Pillow; no torch). Here: "
                  "pip wheel --no-deps -w dist . ; copy both files of the archive and "
                  "dist/edge_export-*.whl to the device; there: pip install edge_export-*.whl && "
                  f"sha256sum -c {archive.name}.sha256 && tar xzf {archive.name} && python -m runtime verify {name}. "
                  "A device without internet takes an offline kit instead: pack --target linux-aarch64 "
                  "(or linux-x86_64), or python -m export deploy over SSH", markup=False, soft_wrap=True)


def cmd_pack(args) -> int:
    if args.target is None:
        if args.python or args.glibc != DEFAULT_GLIBC:
            raise UserError("--python and --glibc choose the wheels of an install kit; add --target "
                            f"({' or '.join(TARGETS)})")
        _print_packed(pack(args.bundle, args.out))
        return 0
    archive = pack(args.bundle, args.out, args.target, args.python, args.glibc)
    kit = archive.name.removesuffix(".tar.gz")
    t = json.loads(archive_member(archive, f"{kit}/kit.json"))
    console.print(f"Packed kit: {archive} ({archive.stat().st_size / 1e6:.1f} MB) and {archive.name}.sha256, "
                  f"for {t['target']}, Python {t['python']}, glibc {t['glibc'] or 'any'} or newer, a CPU with "
                  f"{t['cpu']}.", markup=False, soft_wrap=True)
    floors = ", ".join(f"{b} glibc {f['glibc'] or 'any'}" for b, f in t["backends"].items())
    console.print(f"Each backend installs where the device's glibc allows it: {floors}."
                  + "".join(f" Left out: {b}, {why}." for b, why in t["left_out"].items()), markup=False,
                  soft_wrap=True)
    table = Table("wheel", "needs", box=None, pad_edge=False)
    for wheel, floor in t["wheels"].items():
        table.add_row(wheel, floor)
    console.print(table)
    console.print(f"On the device (no network needed): tar xzf {archive.name} && sh {kit}/install.sh && "
                  f"{kit}/edge-runtime verify {kit}/{t['bundle']}; or from here: python -m export deploy "
                  f"{args.bundle} --to user@device", markup=False, soft_wrap=True)
    return 0


def cmd_keygen(args) -> int:
    from .signing import keygen

    public, fingerprint = keygen(args.out)
    console.print(f"Key pair: {args.out} (private: keep it off devices and out of bundles) and {public} "
                  f"({fingerprint}). Sign with: python -m export sign BUNDLE {args.out}; devices trust {public}.",
                  markup=False, soft_wrap=True)
    return 0


def cmd_sign(args) -> int:
    from .signing import sign

    signer = sign(args.bundle, args.key)
    console.print(f"Signed {args.bundle} by {signer}: {args.bundle / SIGNATURE}. On a device: python -m runtime "
                  f"verify BUNDLE --trust {args.key}.pub", markup=False, soft_wrap=True)
    return 0


def cmd_deploy(args) -> int:
    from .fleet import deploy_fleet, deploy_to

    if args.inventory is not None and (args.to or args.forget):
        raise UserError("--inventory deploys to the inventory's hosts: drop --to and --forget (put each device in "
                        "the inventory)")
    if args.inventory is None and not args.to and not args.forget:
        raise UserError("name a device: --to USER@HOST[:PORT][/PATH] to deploy, --inventory hosts.yml for a fleet, "
                        "or --forget USER@HOST[:PORT] to remove its record")
    if args.limit is not None and args.inventory is None:
        raise UserError("--limit picks among an inventory's hosts: add --inventory hosts.yml, or name the devices "
                        "with --to")
    if args.forget:
        from .deploy import forget

        for stem in forget(args.bundle, args.forget):
            print(f"forgot {stem}: {Path(args.bundle) / 'devices' / stem}.json removed, report.md's rows with it")
        if not args.to:
            return 0
    options = {"forks": args.forks, "max_p90_ms": args.max_p90_ms, "trust": args.trust, "identity": args.identity,
               "known_hosts": args.known_hosts, "accept_new_host_key": args.accept_new_host_key,
               "bench": args.bench, "force": args.force,
               **{k: v for k, v in (("serial", args.serial), ("max_fail", args.max_fail)) if v is not None}}
    if args.inventory is not None:
        run, _ = deploy_fleet(args.bundle, args.inventory, args.limit, **{"serial": "1", "max_fail": "1", **options})
        return _print_fleet(run, args)
    run, results = deploy_to(args.bundle, args.to, **options)
    return _print_devices(run, results, args)


def _print_devices(run, results, args) -> int:
    """A few devices (`--to`): one row per device and artifact, and a line per device."""
    from runtime.cli import format_table

    from .deploy import COLUMNS, rows, status_line

    if args.json:
        import dataclasses

        print(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    else:
        print(format_table(COLUMNS, rows(results)))
        for r in results:
            print(status_line(r))
        if len(results) < len(run.hosts):
            print(f"not reached: {len(run.hosts) - len(results)} devices (the rollout stopped before their batch)")
        print(f"results: {Path(args.bundle) / 'devices'}/*.json and the devices section of report.md")
    return 0 if len(results) == len(run.hosts) and all(r.ok for r in results) else 1


def _print_fleet(run, args) -> int:
    from .fleet import fleet_table

    if args.json:
        print(json.dumps({"hosts": run.hosts, "results": run.results, "unreachable": run.unreachable}, indent=2))
    else:
        groups, devices = fleet_table(run)
        print(groups)
        print()
        print(devices)
        print(f"results: {Path(args.bundle) / 'devices'}/*.json and the devices section of report.md")
    healthy = [h for h in run.hosts if run.results.get(h, {}).get("healthy") and not run.results[h].get("stopped")]
    return 0 if len(healthy) == len(run.hosts) else 1


def cmd_rollback(args) -> int:
    from .fleet import rollback_fleet

    return _print_fleet(rollback_fleet(args.bundle, args.inventory, args.limit, args.forks, args.identity,
                                       args.known_hosts, args.accept_new_host_key, args.to or ()), args)


def cmd_playbook(args) -> int:
    from .fleet import playbook

    path = playbook(args.bundle, args.out, args.target or list(TARGETS), args.python)
    console.print(f"Playbook: {path} (and rollback.yml, edge-export.yml, the kits in kits/). Run it with your "
                  f"inventory: ansible-playbook -i hosts.yml {path} -e edge_export_serial=10% -e "
                  "edge_export_max_fail=1", markup=False, soft_wrap=True)
    return 0


def cmd_diagnose(args) -> int:
    import dataclasses

    from .settings import BuildSettings, check_settings

    settings = BuildSettings(**_model_request(args), checkpoint=args.checkpoint, opset=args.opset,
                             threads=args.threads)
    check_settings(settings)  # a bad name is refused before torch is imported

    from .diagnose import diagnose
    from .pipeline import model_for

    with console.status("exporting and comparing every module's output ..."):
        module, spec, _ = model_for(settings)
        if settings.name:
            spec = dataclasses.replace(spec, name=settings.name)
        diagnoses = diagnose(module, spec, args.bundle, args.opset, args.threads)
    by_module = {p.module: p for p in diagnoses[0].points}
    figures = {d.backend: {p.module: p for p in d.points} for d in diagnoses}
    rows = []
    for module, point in by_module.items():
        cells = [module, point.op_type]
        for d in diagnoses:
            p = figures[d.backend].get(module)
            cells.append("-" if p is None else f"{p.max_rel:.1e}" if p.passed else f"FAIL {p.max_rel:.1e}")
        rows.append(cells)
    console.print(_table(f"{spec.name}: max relative error of every module's output against PyTorch, in graph order",
                         ["module", "op", *(f"{d.backend} (bound {d.points[0].bound:.0e})" for d in diagnoses)], rows))
    for d in diagnoses:
        console.print(d.summary(), markup=False, soft_wrap=True)
    return 1 if any(d.first_divergence for d in diagnoses) else 0


def cmd_study(args) -> int:
    from .lab.study import StudySettings, run
    from .settings import check_backends

    threads = _threads(args)
    settings = StudySettings(out=args.out, quick=args.quick, threads=threads, train_steps=args.train_steps,
                             artifacts=args.artifacts, backends=check_backends(
                                 tuple(b.strip() for b in args.backends.split(",") if b.strip())))
    start = time.perf_counter()
    with console.status("study") as status:
        def say(what: str) -> None:
            console.print(f"[dim]{time.perf_counter() - start:6.0f} s[/]  {what}")
            status.update(what)

        out = run(settings, say)
    console.print(f"Report: {out / 'report.md'} ({time.perf_counter() - start:.0f} s)")
    return 0


def cmd_compete(args) -> int:
    import json

    import models

    from .settings import check_threads

    names = [] if args.variants in (None, "all") else [v.strip() for v in args.variants.split(",") if v.strip()]
    for name in names:
        models.get_variant(name)
    if args.threads is not None:
        check_threads(args.threads)

    from .lab.compete import PART_COLUMNS, SUMMARY_COLUMNS, built_variants, compete, part_rows, summary_row  # torch: after the checks

    variants = models.list_variants() if args.variants == "all" else names or built_variants(args.artifacts) or ["dsc"]
    start = time.perf_counter()
    progress = errors if args.json else console  # with --json, standard output holds the figures alone
    with progress.status("compete") as status:
        def say(what: str) -> None:
            progress.print(f"[dim]{time.perf_counter() - start:6.0f} s[/]  {what}")
            status.update(what)

        result = compete(variants, args.artifacts, _threads(args), args.runs, say)
    failed = [v for v in result["variants"] if "error" in v]
    done = [v for v in result["variants"] if "error" not in v]
    if args.json:
        print(json.dumps(result, indent=1))
        return 1 if failed else 0
    peak = result["peak"]["gflops"]
    for v in done:
        rows = [(name, f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['vs_best_peer']:.2f}x", f"{r['gflops']:.1f}",
                 f"{r['of_peak']:.0%}") for name, r in sorted(v["contenders"].items(), key=lambda kv: kv[1]["p50_ms"])]
        console.print(_table(f"{v['variant']}: batch 1, {result['threads']} threads, {v['gflop']:.3f} GFLOP per image, "
                             f"peak {peak:.1f} GFLOP/s", ("contender", "p50 ms", "p90 ms", f"vs {v['best_peer']}",
                                                          "GFLOP/s", "of peak"), rows))
        for name, note in v["peers"].items():
            if note["status"] != "ok":
                console.print(f"{name}: {note['status']}", markup=False)
        console.print("cold start (load + first inference): " + ", ".join(
            f"{a} {c['no_cache_ms']:.0f} ms ({c['warm_cache_ms']:.0f} ms with a warm cache)"
            for a, c in v["cold_start"].items()), markup=False, soft_wrap=True)
        roof = v["roofline"]
        console.print(_table(f"{v['variant']}: {roof['contender']} under the roofline, part by part (kernel time "
                             f"from its profiler, {roof['kernel_ms']:.2f} ms in all; p50 {roof['whole']['measured_ms']:.2f} "
                             f"ms, {roof['whole']['share']:.0%} of its bound)", PART_COLUMNS, part_rows(v)))
    copies = ", ".join(f"{size} {rate:.0f} GB/s" for size, rate in result["roofs"]["bandwidth_gb_s"].items())
    console.print(f"roofs measured in this run: FP32 matrix multiply {peak:.1f} GFLOP/s ({result['peak']['library']} "
                  f"at n = {result['peak']['size']}); copies of {copies}",
                  markup=False, soft_wrap=True)
    console.print(_table("best artifact against each peer (speed-up, same run)", SUMMARY_COLUMNS,
                         [summary_row(v) for v in done]))
    h = result["hourglass"]
    console.print(f"standard hourglass alone {tuple(h['input'])}: " + ", ".join(
        f"{b} {r['gflops']:.1f} GFLOP/s ({r['of_peak']:.0%} of peak)" for b, r in h["backends"].items()),
        markup=False, soft_wrap=True)
    for v in failed:
        console.print(f"error: {v['variant']}: {v['error']}", markup=False, soft_wrap=True)
    return 1 if failed else 0


def cmd_int8(args) -> int:
    import json

    from runtime.bundle import Bundle

    from .report import quantization_lines

    manifest = Bundle.open(args.bundle).manifest
    if not manifest.get("quantization"):
        raise UserError(f"bundle {str(args.bundle)!r} was built without INT8; build it with --quantize int8")
    if args.json:
        print(json.dumps(manifest["quantization"], indent=2))
    else:
        console.print("\n".join(quantization_lines(manifest)), markup=False, soft_wrap=True)
    return 0


def cmd_evaluate(args) -> int:
    import json

    from .evaluate import evaluate_bundle

    if args.data is not None:
        return _evaluate_data(args)
    if args.label_map is not None or args.ignore_index != 255:
        raise UserError("--ignore-index and --label-map are for --data: add --data DIR")
    result = evaluate_bundle(args.bundle, args.backend, args.precision, args.samples, args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    figures = {k: v for k, v in result.items() if k not in ("model", "bundle", "samples", "runtime")
               and isinstance(v, float)}  # per class or keypoint: in --json
    console.print(f"{result['model']} ({result['runtime']}, {result['samples']} held-out samples): " + ", ".join(
        f"{k.replace('_', ' ')} {v:.4f}" for k, v in figures.items()), markup=False, soft_wrap=True)
    return 0


def _evaluate_data(args) -> int:
    """Every artifact on the user's labelled images: one table, the FP32 reference first."""
    import json

    from runtime.cli import format_table
    from runtime.labelled import evaluate, read_label_map

    from .evaluate import TorchRunner, pytorch_model

    label_map = read_label_map(args.label_map) if args.label_map is not None else None
    model, why = pytorch_model(args.bundle)
    result = evaluate(args.bundle, args.data, args.ignore_index, label_map, args.threads, args.backend,
                      args.precision, extra={"pytorch fp32": TorchRunner(model)} if model is not None else None)
    if model is None:
        result["not_run"]["pytorch fp32"] = why
    if args.json:
        print(json.dumps(result, indent=2))
        return 0

    def cell(f: dict, name: str, scale: float = 100, digits: int = 2) -> str:
        low, high = f["intervals"][name]
        return f"{scale * f[name]:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"

    primary = result["primary"]
    rows = []
    for key, f in result["artifacts"].items():
        verdict = ("pass" if f["passed"] else "FAIL") if "passed" in f else "reference"
        if primary == "max_rel":  # expected outputs: the parity metric, each artifact within its bound
            rows.append([key, f"{f['max_rel']:.2e}", f"{f['mean_max_rel']:.2e}",
                         f"{f['max_rel_drop']:+.2e} (bound {f['allowed_drop']:.0e}) {verdict}"
                         if "passed" in f else verdict])
            continue
        drop = (f"{100 * f[primary + '_drop']:+.2f} [{100 * f['intervals'][primary + '_drop'][0]:+.2f}, "
                f"{100 * f['intervals'][primary + '_drop'][1]:+.2f}] {verdict}" if "passed" in f else verdict)
        rows.append([key, cell(f, "miou"), cell(f, "pixel_accuracy"), f"{100 * f['mean_dice']:.2f}", drop]
                    if primary == "miou" else
                    [key, cell(f, "pck"), cell(f, "keypoint_error_px", 1), f"{f['oks_ap']:.3f}" if "oks_ap" in f
                     else "-", drop])
    if primary == "max_rel":
        print(f"{result['model']} on {result['images']} input files of {result['data']} against the outputs they "
              "expect (max relative error over each output's scale, the worst output and file):")
        print(format_table(["artifact", "max rel err", "mean over files", f"more than {result['reference']}"], rows))
    where = f"{result['model']} on {result['images']} labelled images of {result['data']} (scored in each image's own pixels"
    if primary == "miou":
        print(f"{where}; mask value {result['ignore_index']} ignored; [95% interval] over the images):")
        print(format_table(["artifact", "mIoU %", "pixel accuracy %", "mean Dice %",
                            f"mIoU drop vs {result['reference']}, points (allowed {100 * result['allowed_drop']:g})"],
                           rows))
        names = result["class_names"] or [str(c) for c in range(result["classes"])]
        for key, f in result["artifacts"].items():
            print(f"{key} IoU per class: " + ", ".join(
                f"{n} {'-' if v is None else f'{100 * v:.1f}'}" for n, v in zip(names, f["iou"])))
    elif primary == "pck":
        print(f"{where}; PCK@{result['pck_alpha']:g} of the image's larger side; [95% interval] over the images):")
        print(format_table(["artifact", "PCK %", "error px", "OKS AP",
                            f"PCK drop vs {result['reference']}, points (allowed {100 * result['allowed_drop']:g})"],
                           rows))
    for key, why in result["not_run"].items():
        print(f"not run here: {key}: {why}")
    for s in result["skipped"]:
        print(f"skipped {s['file']}: {s['why']}")
    if result["skipped"]:
        print(f"{len(result['skipped'])} file(s) skipped, {result['images']} image(s) scored")
    return 0


def cmd_list(args) -> int:
    import models
    from models.counts import COUNTS

    counts = dict(COUNTS)
    if args.counts:
        from .stats import model_stats

        with console.status("counting with torchinfo ..."):
            fresh = {name: model_stats(models.create(name), models.get_variant(name).config.input_shape)
                     for name in models.list_variants()}
            counts = {name: (st["params"], st["mult_adds"]) for name, st in fresh.items()}
    rows = []
    for name in models.list_variants():
        variant = models.get_variant(name)
        params, mult_adds = counts[name]
        stale = " (stored: differs)" if counts[name] != COUNTS.get(name) else ""
        rows.append((name, variant.config.family, "x".join(map(str, variant.config.input_shape)),
                     f"{params:,}", f"{mult_adds / 1e6:,.1f} M{stale}", variant.reference.get("source", "")))
    console.print(_table("variants (params and mult-adds at batch 1, as torchinfo counts them)",
                         ("variant", "family", "input", "params", "mult-adds", "reference"), rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"build": cmd_build, "list": cmd_list, "pack": cmd_pack, "deploy": cmd_deploy,
                "diagnose": cmd_diagnose, "int8": cmd_int8, "study": cmd_study, "compete": cmd_compete,
                "evaluate": cmd_evaluate, "keygen": cmd_keygen, "sign": cmd_sign, "rollback": cmd_rollback,
                "playbook": cmd_playbook}[args.command](args)
    except UserError as err:
        errors.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        errors.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
