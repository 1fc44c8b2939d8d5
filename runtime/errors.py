"""Errors that the command lines turn into one clear line, and the checks that raise them."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence


class UserError(ValueError):
    """Something the user gave us is wrong.

    The message names the input, what was wrong and what is accepted; the
    CLIs print it alone (no traceback) and exit with code 2.
    """


class BackendError(RuntimeError):
    """A backend cannot load or run an artifact on this machine (an operator this CPU's
    kernels do not support, say). The message names the artifact and the backend's reason;
    `verify` reports it as that artifact's failure, the CLIs in one line with exit code 1."""


def backend_reason(err: BaseException) -> str:
    """A backend's exception in one line: OpenVINO's "Exception from src/...cpp:112:" frames
    dropped, the rest joined (e.g. "RuntimeError: [CPU] MatMul node with name '...' could
    not create a primitive descriptor for the matmul primitive")."""
    lines = [line.strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line and not re.match(r"^(Exception from )?src/\S+:\d+:?$", line)
             and not re.match(r"^Exception from \S+:\d+:$", line)]
    return f"{type(err).__name__}: {' '.join(lines) or 'no message'}"


def closest(value: str, valid: Iterable[str]) -> str | None:
    """The valid name a typo most likely meant (`dcs` -> `dsc`), if any is close."""
    close = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown(what: str, value: str, valid: Sequence[str]) -> str:
    """"unknown WHAT 'VALUE'; did you mean 'X'? valid: ..." (the hint only when a name is close)."""
    hint = closest(str(value), valid)
    return (f"unknown {what} {value!r}; " + (f"did you mean {hint!r}? " if hint else "")
            + f"valid: {', '.join(valid)}")


def check_choice(what: str, value: str, valid: Sequence[str]) -> str:
    """`value` if it is one of `valid`, else a UserError listing them (and the closest one)."""
    if value not in valid:
        raise UserError(unknown(what, value, valid))
    return value


def check_at_least(option: str, value: float, minimum: float = 1, what: str = "") -> float:
    """`value` if it is `minimum` or more, else "OPTION VALUE must be at least MINIMUM[ WHAT]"
    (the one check of a count that the command lines share)."""
    if not value >= minimum:
        raise UserError(f"{option} {value} must be at least {minimum:g}" + (f" {what}" if what else ""))
    return value


def check_positive(option: str, value: float, what: str = "") -> float:
    """`value` if it is above 0, else "OPTION VALUE must be positive" or "... is not a positive WHAT"."""
    if not value > 0:
        raise UserError(f"{option} {value} is not a positive {what}" if what else f"{option} {value} must be positive")
    return value


class Parser(argparse.ArgumentParser):
    """argparse that takes no abbreviations (`--backend` is not `--backends`)
    and reports a bad command line in one line on stderr, exit code 2, naming an
    unknown option and the closest known one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._given: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if self._is_leaf() and any(e.startswith("--") for e in extras):
            self.error("unrecognized arguments: " + " ".join(extras))
        return namespace, extras

    def _is_leaf(self) -> bool:
        return not any(isinstance(a, argparse._SubParsersAction) for a in self._actions)

    def _unknown_options(self) -> list[str]:
        known = self._option_string_actions
        return [t.split("=", 1)[0] for t in self._given
                if t.startswith("--") and t != "--" and t.split("=", 1)[0] not in known]

    def error(self, message: str):
        typos = self._unknown_options() if self._is_leaf() else []
        if typos:  # the real mistake, whatever argparse noticed first (often a "required" option)
            options = [o for o in self._option_string_actions if o.startswith("--")]
            parts = []
            for typo in typos:
                hint = closest(typo, options)
                parts.append(f"unknown option {typo}" + (f"; did you mean {hint}?" if hint else ""))
            message = "; ".join(parts)
        else:
            choice = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)", message)
            if choice:
                valid = [v.strip().strip("'") for v in choice.group(3).split(",")]
                message = unknown(choice.group(1), choice.group(2), valid)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def check_folder(path: str | Path, what: str = "--out", expected: str = "expected a folder (created if missing)") -> Path:
    """`path` as a folder that can be created and written into, or a UserError.
    Creates nothing: a refused command leaves no empty folder behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a file; {expected}")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what} {str(path)!r} is not writable ({existing} is a file); choose a folder you can write to")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {str(path)!r} is not writable ({existing} is read-only); choose a folder you can write to")
    return path
