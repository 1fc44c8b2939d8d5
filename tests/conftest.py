"""Shared fixtures: one build per variant for the whole session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Each worker of the suite runs on its share of the CPUs, it and the builds it starts, and every thread count
# defaults to that share (`runtime.machine.usable_cores`). Two workers each running a thread per core of the machine
# put two threads on every core, whose waits spin: a build took 1.7x as long. The devices (SSH servers, the emulated
# board) are machines of their own: they run on every CPU of the suite's (tests/devices.on_every_cpu).
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER is not None and hasattr(os, "sched_setaffinity"):
    _cpus, _workers = sorted(os.sched_getaffinity(0)), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("EDGE_EXPORT_DEVICE_CPUS", ",".join(map(str, _cpus)))
    if len(_cpus) >= _workers:
        os.sched_setaffinity(0, _cpus[int(WORKER.removeprefix("gw"))::_workers])

import torch  # noqa: E402 (after the CPUs are chosen: its thread pool is sized by them)

from runtime.machine import usable_cores  # noqa: E402

torch.set_num_threads(usable_cores())

import models  # noqa: E402
from export.pipeline import BuildSettings, build
from tests import background

# The compiled-model caches of the tests (and of the commands they start), the backends' and torch.compile's,
# stay out of the home folder: in a folder of the session's, which the process that made it removes at the end
# (pytest-xdist's workers inherit it). A small limit: the suite loads each bundle a few times only.
SESSION_CACHE = None
if "EDGE_EXPORT_CACHE" not in os.environ:
    os.environ["EDGE_EXPORT_CACHE"] = SESSION_CACHE = tempfile.mkdtemp(prefix="edge-export-test-cache-")
    os.environ.setdefault("EDGE_EXPORT_CACHE_MB", "256")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(SESSION_CACHE, "torchinductor"))

# What the whole suite writes at its peak, in GB: its temporary folders (bundles, kits, device folders, caches),
# and the emulated ARM64 system where it is not cached yet (kept for later runs).
DISK_GB = {"temporary files": 6, "the ARM64 root file system": 5}


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give a model weights and norm statistics far from their defaults, as a
    trained checkpoint has: BatchNorm means around +-1 and variances 0.2..5,
    affine scales away from 1, and a Jacobian head that is not all zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g))
            elif name.endswith("running_var"):
                t.copy_(torch.empty(t.shape).uniform_(0.2, 5.0, generator=g))
            elif "norm" in name and name.endswith("weight"):
                t.copy_(torch.empty(t.shape).uniform_(0.5, 1.5, generator=g))
            elif name.endswith("bias"):
                t.add_(0.1 * torch.randn(t.shape, generator=g))
            elif name.startswith("jacobian") and name.endswith("weight"):
                t.copy_(0.01 * torch.randn(t.shape, generator=g))
    return model


@pytest.fixture(scope="session")
def checkpoint_for(tmp_path_factory):
    """checkpoint_for(variant) -> path of a perturbed state_dict for it."""
    cache: dict[str, Path] = {}

    def make(variant: str) -> Path:
        if variant not in cache:
            path = tmp_path_factory.mktemp("ckpt") / f"{variant}.pt"
            torch.save(perturb_(models.create(variant)).state_dict(), path)
            cache[variant] = path
        return cache[variant]

    return make


MEMORY_READ = ("dsc",)  # the bundles whose memory figures a test reads
LABELLED = {"dsc": 4}  # labelled pictures of its held-out split (COCO keypoints) a bundle carries, as `--data` makes


@pytest.fixture(scope="session")
def built(tmp_path_factory, checkpoint_for):
    """built(variant) -> BuildResult of a full build with a perturbed checkpoint
    (few timed runs and the backends' default settings: the tests check figures, not speed;
    memory measured only where a test reads it, the dsc bundle of the board and device tests, which also
    carries labelled pictures, so that verify and deploy report its accuracy against the truth)."""
    from models.labelled import write_heldout

    cache = {}

    def make(variant: str):
        if variant not in cache:
            out = tmp_path_factory.mktemp("artifacts")
            count = LABELLED.get(variant)
            data = write_heldout(variant, tmp_path_factory.mktemp("labelled") / variant, count) if count else None
            cache[variant] = build(BuildSettings(variant=variant, checkpoint=checkpoint_for(variant), out=out,
                                                 warmup=1, runs=5, tune_budget=0, memory=variant in MEMORY_READ,
                                                 data=data, eval_samples=count or 32))
        return cache[variant]

    return make


# The fixtures whose set-up runs in the background (tests/background.py), in the order it is queued, with the
# test files that use them: those files run last, so the set-ups have the rest of the session to finish.
BACKGROUND = {"arm64": "test_arm64.py", "litert_board": "test_arm64.py", "site": "test_docs.py"}


# The suite runs on two workers (pytest-xdist: `-n 2 --dist each` in pyproject.toml), each on its own half, by
# file: this half holds the tests of real SSH servers (they share the machine's device users and ports) and the
# background set-ups' tests; the other half, every other file. The halves take about equal time.
FIRST_HALF = {"test_deploy.py", "test_fleet.py", "test_litert.py", "test_study.py", "test_quantize.py",
              "test_compete.py", "test_cli.py", "test_tune.py", "test_newcomer.py", "test_board.py", "test_tasks.py",
              *BACKGROUND.values()}


def pytest_configure(config):
    """A whole run (no paths given) on a disk without room for it stops at once, in one line, rather than
    failing test after test when the disk fills."""
    from tests.devices import ARM64_ROOT, arm64_root_made

    if hasattr(config, "workerinput") or config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return
    wanted = [(Path(tempfile.gettempdir()), "temporary files")]
    if not arm64_root_made():
        wanted.append((ARM64_ROOT, "the ARM64 root file system"))
    disks: dict[int, tuple[Path, list[str]]] = {}  # by file system: a folder on it, what goes there
    for folder, what in wanted:
        while not folder.exists():
            folder = folder.parent
        disks.setdefault(folder.stat().st_dev, (folder, []))[1].append(what)
    for folder, whats in disks.values():
        gb, free = sum(DISK_GB[w] for w in whats), shutil.disk_usage(folder).free / 2**30
        if free < gb:
            if SESSION_CACHE is not None:
                shutil.rmtree(SESSION_CACHE, ignore_errors=True)
            raise pytest.UsageError(f"the suite writes up to {gb} GB to the disk of {folder} ({', '.join(whats)}) "
                                    f"and {free:.1f} GB are free there; free some space or point TMPDIR elsewhere")


def pytest_collection_modifyitems(config, items):
    worker = getattr(config, "workerinput", None)
    if worker is not None:  # a worker of `--dist each` (the workers' own option reads "no")
        if worker["workercount"] != 2:
            raise pytest.UsageError(f"the suite splits into two halves, one per worker: run it with -n 2 (the "
                                    f"default) or -n 0, not -n {worker['workercount']}")
        halves = ([], [])  # (mine, the other worker's)
        for item in items:
            halves[(item.path.name in FIRST_HALF) != (worker["workerid"] == "gw0")].append(item)
        config.hook.pytest_deselected(items=halves[1])
        items[:] = halves[0]
    last = list(dict.fromkeys(BACKGROUND.values()))
    items.sort(key=lambda item: last.index(item.path.name) + 1 if item.path.name in last else 0)  # stable


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    from tests import test_arm64, test_docs

    jobs = {"arm64": test_arm64.prepare_board, "litert_board": test_arm64.prepare_litert_board,
            "site": test_docs.build_site}
    wanted = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    for fixture in BACKGROUND:
        if fixture in wanted:
            background.start(fixture, jobs[fixture])


def pytest_sessionfinish():
    background.cancel()  # what has not started: a session stopped early (-x, ^C) does not wait for it
    if SESSION_CACHE is not None:
        shutil.rmtree(SESSION_CACHE, ignore_errors=True)
