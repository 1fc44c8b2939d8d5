"""`python -m models`: train a variant on its generated task, evaluate it, write its held-out split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runtime.errors import Parser, UserError


def build_parser() -> Parser:
    parser = Parser(prog="python -m models", description="Train and evaluate variants on the generated tasks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    t = sub.add_parser("train", help="a short CPU training run on the variant's generated task")
    t.add_argument("--variant", required=True, help="a name from `python -m export list`")
    t.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    t.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule (default 2e-3)")
    t.add_argument("--seed", type=int, default=0, help="initialisation and sample order (default 0)")
    t.add_argument("--checkpoint", type=Path, help="start from these weights (default: random init)")
    t.add_argument("--out", type=Path, required=True, help="where to save the state_dict, e.g. dsc.pt")
    e = sub.add_parser("evaluate", help="task metrics on the held-out split")
    e.add_argument("--variant", required=True, help="a name from `python -m export list` (in PyTorch; a bundle: "
                   "python -m export evaluate BUNDLE)")
    e.add_argument("--checkpoint", type=Path, help="weights to evaluate (default: random init)")
    e.add_argument("--samples", type=int, default=64, help="held-out samples (default 64)")
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    h = sub.add_parser("heldout", help="write a variant's held-out split as labelled files to try --data on: images/ "
                                       "with masks/ (palette PNGs) or annotations.json (COCO keypoints)")
    h.add_argument("--variant", required=True, help="a pet segmenter (segnet, segnet-dsc, unet, unet-dsc) or a "
                   "keypoint detector")
    h.add_argument("--out", type=Path, required=True, help="a new folder")
    h.add_argument("--samples", type=int, default=64, help="held-out samples (default 64)")
    h.add_argument("--size", type=int, help="the pictures' side in pixels (default: 192 for pets, whose models take "
                   "128; 256 for figures)")
    return parser


def _describe(result: dict) -> str:
    if "keypoint_error_px" in result:
        return f"keypoint error {result['keypoint_error_px']:.2f} px (of the 256x256 image)"
    return f"pixel accuracy {100 * result['pixel_accuracy']:.2f}%, mIoU {100 * result['miou']:.2f}%"


def cmd_train(args) -> int:
    """A live bar on a terminal; into a file or a pipe, a plain line at each tenth of the steps."""
    from runtime.progress import is_terminal

    from .train import train

    if is_terminal():
        result = _train_with_bar(args)
    else:
        import time

        start, tenth = time.perf_counter(), max(1, args.steps // 10)

        def progress(step: int, loss: float) -> None:
            if step % tenth == 0 or step == args.steps:
                elapsed = time.perf_counter() - start
                print(f"training {args.variant}: step {step}/{args.steps}, loss {loss:.4f}, "
                      f"{step * args.batch / elapsed:.1f} images/s, {elapsed:.0f} s, about "
                      f"{elapsed / step * (args.steps - step):.0f} s left", flush=True)

        result = train(args.variant, args.steps, args.batch, args.lr, args.seed, args.out, args.checkpoint, progress)
    print(f"{args.variant}: {args.steps} steps of {args.batch} in {result['seconds']:.0f} s "
          f"({result['threads']} threads), loss {result['first_loss']:.4f} -> {result['last_loss']:.4f}; "
          f"saved {args.out}")
    return 0


def _train_with_bar(args) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .train import train

    with Progress(TextColumn(f"training {args.variant}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[speed]:.1f} images/s"),
                  TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        job = bar.add_task("train", total=args.steps, loss=float("nan"), speed=0.0)

        def progress(step: int, loss: float) -> None:
            elapsed = bar.tasks[0].elapsed or 1e-9
            bar.update(job, completed=step, loss=loss, speed=step * args.batch / elapsed)

        return train(args.variant, args.steps, args.batch, args.lr, args.seed, args.out, args.checkpoint, progress)


def cmd_evaluate(args) -> int:
    from .train import evaluate

    result = evaluate(args.variant, args.checkpoint, args.samples)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['variant']} ({result['runtime']}, {result['samples']} held-out samples): {_describe(result)}")
    return 0


def cmd_heldout(args) -> int:
    from .labelled import write_heldout

    out = write_heldout(args.variant, args.out, args.samples, args.size)
    labels = "masks" if (out / "masks").is_dir() else "COCO keypoint annotations"
    print(f"{args.variant}: {args.samples} held-out pictures with their {labels} in {out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "heldout": cmd_heldout}[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
