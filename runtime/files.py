"""Writing files and folders so that nobody ever sees half of one.

Every writer of the project goes through here: a file or folder is written
under a hidden temporary name beside its destination (tagged with the writer's
process id) and renamed into place when complete. `clean_leftovers` removes
what a killed writer left behind. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


def temporary_name(dest: Path, kind: str = "partial") -> Path:
    """`.<name>.<kind>-<pid>` beside `dest`."""
    return dest.parent / f".{dest.name}.{kind}-{os.getpid()}"


@contextlib.contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """A temporary path to write `dest`'s content to; renamed to `dest` when the block
    ends without an error, removed otherwise."""
    tmp = temporary_name(dest)
    try:
        yield tmp
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, dest: Path) -> None:
    """Rename the complete folder `tmp` to `dest`, replacing an older one without ever exposing a partial one."""
    old = temporary_name(dest, "old")
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """A temporary folder to fill; published as `dest` when the block ends without an
    error, removed otherwise (use `keep_failed` to keep it elsewhere instead)."""
    tmp = temporary_name(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_leftovers(folder: Path, name: str) -> None:
    """Remove the temporary files and folders that earlier writers of `name` left in
    `folder` when they were killed (their process is gone)."""
    for path in folder.glob(f".{name}.*-*"):
        pid = path.name.rsplit("-", 1)[-1]
        alive = False
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                alive = True
            except OSError:
                pass
        if not alive:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
