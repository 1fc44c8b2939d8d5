"""Progress that a log can carry: plain lines, now and then, where a terminal would show a live bar.

A spinner or a bar redraws one line in place, which a file or a pipe cannot
show: `models train` into a log printed nothing for minutes. Off a terminal,
long work prints a plain line every so often instead.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Callable, Iterator, TextIO

EVERY_S = 30.0  # between two lines of a long stage in a log


def is_terminal(stream: TextIO | None = None) -> bool:
    return (stream or sys.stdout).isatty()


@contextlib.contextmanager
def heartbeat(line: Callable[[float], str], every: float = EVERY_S, stream: TextIO | None = None) -> Iterator[None]:
    """While the block runs, print `line(seconds since it started)` every `every` seconds, flushed."""
    import time

    start, stop = time.perf_counter(), threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            print(line(time.perf_counter() - start), file=stream or sys.stdout, flush=True)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
