"""MkDocs hooks: the CLI reference, written from the argparse parsers at every build, and the pictures the
project's own commands draw (docs/pictures.py), made before the pages are read.

The reference is never written by hand: a page holding `<!-- cli: export -->` gets every command of
`python -m export` in its place, with each option's metavar, choices, default and help as the parser has them.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = {"export": ("export.cli", "build_parser"), "runtime": ("runtime.cli", "build_parser"),
            "models": ("models.__main__", "build_parser")}


def parser_of(program: str) -> argparse.ArgumentParser:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module, name = PROGRAMS[program]
    return getattr(importlib.import_module(module), name)()


def commands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """Each subcommand's name -> (its one-line help, its parser), in the order the parser lists them."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help or "" for c in sub._choices_actions}
    return {name: (helps.get(name, ""), p) for name, p in sub.choices.items()}


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("%%", "%")


def _default(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.default in (None, False):
        return ""
    if isinstance(action.default, (list, tuple)):
        return ", ".join(map(str, action.default)) or ""
    return f"`{action.default}`"


def _form(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`" + (" ..." if action.nargs in ("+", "*") else "")
    flag = " / ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return flag
    value = action.metavar or ("|".join(map(str, action.choices)) if action.choices else action.dest.upper())
    value = f"[{value}]" if action.nargs == "?" else f"{value} ..." if action.nargs in ("+", "*") else value
    return f"{flag} {_cell(str(value))}"


def reference(program: str) -> str:
    """Markdown for every command of `python -m PROGRAM`: usage, help and a row per option."""
    parser = parser_of(program)
    out = [_cell(parser.description or ""), ""]
    for name, (summary, sub) in commands(parser).items():
        usage = sub.format_usage().removeprefix("usage: ").strip()
        out += [f"### {program} {name}", "", _cell(summary[:1].upper() + summary[1:]) + ".", "",
                "```text", re.sub(r"\s+", " ", usage), "```", "",
                "| argument | default | what it does |", "|---|---|---|"]
        out += [f"| {_form(a)} | {_default(a)} | {_cell(a.help or '')} |" for a in options(sub)]
        out.append("")
    return "\n".join(out)


def on_pre_build(config, **kwargs):
    sys.path.insert(0, str(ROOT / "docs"))
    import pictures

    pictures.make(Path(config["docs_dir"]) / pictures.FOLDER)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    return re.sub(r"<!-- cli: (\w+) -->", lambda m: reference(m.group(1)), markdown)
