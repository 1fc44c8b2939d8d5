"""Set-ups that mostly wait, started as the session starts and run beside the other tests.

The emulated ARM64 boards (a build, a kit, installing and verifying it under qemu: minutes of
one core, most of them the emulator's) and the documentation site (its pictures drawn by the
project's own commands) are each a chain of subprocesses. `conftest.py` orders their tests
last and starts their set-ups here, one after the other in one thread, when collection ends;
the other tests run meanwhile, so the suite's wall time is not their sum (and every test runs
beside a loaded core, as it must pass on a busy machine). A test's fixture takes the result with
`result`, which raises what the set-up raised (a skip, a failure) in the test that asked.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="background-setup")
_JOBS: dict[str, Future] = {}


def start(name: str, job: Callable[[], Any]) -> None:
    """Queue `job` under `name`, once."""
    if name not in _JOBS:
        _JOBS[name] = _POOL.submit(job)


def result(name: str, job: Callable[[], Any]) -> Any:
    """What `job` returned (queued now if the session did not start it), or what it raised."""
    start(name, job)
    return _JOBS[name].result()


def cancel() -> None:
    """Drop the set-ups that have not started (one running finishes: the process waits for it)."""
    _POOL.shutdown(wait=False, cancel_futures=True)
