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
