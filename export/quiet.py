"""Quieting the libraries the build drives, for one block, and only that block.

The exporters, the quantizers and the JIT peers log and warn at length about
things a build's user cannot act on (optional packages, empty attribute lists,
calibration progress). `quiet` raises the named loggers to ERROR and ignores
Python warnings while the block runs, then restores every level: a library
must not change its caller's logging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator


@contextlib.contextmanager
def quiet(*names: str) -> Iterator[None]:
    """The loggers `names` ("" is the root logger) at ERROR, and warnings ignored, inside the block."""
    loggers = [logging.getLogger(name) if name else logging.getLogger() for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def silenced(*fds: int) -> Iterator[None]:
    """The process's file descriptors `fds` (1: stdout, 2: stderr), and Python's sys.stdout and sys.stderr
    with them, sent nowhere inside the block: what a converter's C++ side prints there (its progress, its
    logs) is not the build's output. Its failures still reach the caller as exceptions."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    with open(os.devnull, "w") as sink, contextlib.ExitStack() as stack:
        try:
            for fd in fds:
                os.dup2(sink.fileno(), fd)
            for redirect, fd in zip((contextlib.redirect_stdout, contextlib.redirect_stderr), (1, 2)):
                if fd in fds:
                    stack.enter_context(redirect(sink))
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
