"""What to copy to a device.

`pack(bundle)`: `<name>.tar.gz` and its `.sha256`, one folder named after the
bundle that `python -m runtime verify` accepts once unpacked.

`pack(bundle, target="linux-aarch64")`: an offline install kit,
`<name>-<target>.tar.gz`, that needs no network on the device. It holds the
bundle, the runtime package, the wheels of what the runtime needs there (the
backends the bundle uses, at the versions it was proven with, fetched for that
platform and Python with pip's platform options), the pip wheel that installs
them, `install.sh` and `SHA256SUMS`. Each backend's wheels are fetched on their
own, so each has its own glibc floor (the highest of its wheels', its
dependencies' included): a backend with no wheel as old as `--glibc` is left out
of the kit, with the reason, rather than holding the others back, and the device
installs the backends its glibc allows and says which it left out. `kit.json`
records each wheel's floor, each backend's, the kit's (the oldest glibc on which
it installs a backend) and what the device's CPU must have; the bundle's manifest
gains the same under `targets`.

Only a bundle whose files match its manifest is packed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import runtime
from runtime.backends import REGISTRY
from runtime.bundle import MANIFEST, SIGNATURE, Bundle, sha256
from runtime.errors import UserError, check_choice, check_folder
from runtime.files import atomic_file
from runtime.kit import KIT, LAUNCHER, SUMS, version_tuple

from .manifest import update_manifest


@dataclass(frozen=True)
class Target:
    name: str
    machine: str  # what platform.machine() says there
    cpu: str  # what its CPU must have, in words
    cpu_flags: tuple[str, ...]  # ... and as /proc/cpuinfo flags


TARGETS = {t.name: t for t in (
    Target("linux-aarch64", "aarch64", "ARMv8-A with NEON (asimd)", ("asimd",)),
    Target("linux-x86_64", "x86_64", "x86-64-v2 (SSE4.2 and POPCNT: the baseline of numpy 2 and of OpenVINO's CPU "
                                     "plugin)", ("sse4_2", "popcnt")),
)}
DEFAULT_GLIBC = "2.35"  # Ubuntu 22.04; Debian 12 and Raspberry Pi OS 12 have 2.36
OLDEST_GLIBC = (2, 17)  # manylinux2014, the oldest tag current wheels carry
# legacy manylinux tags and the glibc they stand for
LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
INSTALL_SH = """#!/bin/sh
# Install this kit offline (nothing is fetched): sh install.sh [--trust KEY.pub]
# It checks the device (architecture, Python {python}, glibc, CPU) and every file's sha256,
# installs the wheels into lib/ and writes ./{launcher}; then: ./{launcher} verify {bundle}
set -eu
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
if ! command -v python3 >/dev/null 2>&1; then
    echo "error: no python3 on this device; this kit needs Python {python} (Debian, Ubuntu, Raspberry Pi OS: apt install python3)" >&2
    exit 2
fi
exec python3 "$here/lib/runtime/kit.py" "$@"
"""


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def open_checked(bundle_dir: str | Path, fix: str = "rebuild it before packing") -> Bundle:
    """The bundle, whose files match its manifest; else a UserError naming the files and `fix`."""
    bundle = Bundle.open(bundle_dir)
    problems = bundle.check_files()
    if problems:
        raise UserError(f"bundle {str(bundle.path)!r} does not match its manifest ({'; '.join(problems)}); {fix}")
    return bundle


def _destination(bundle: Bundle, dest: str | Path | None) -> Path:
    dest = Path(dest) if dest is not None else bundle.path.resolve().parent
    check_folder(dest, "--out", "expected a folder for the archive (created if missing)")
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def _write_checksum(archive: Path) -> None:
    with atomic_file(archive.with_name(archive.name + ".sha256")) as partial:
        partial.write_text(f"{sha256(archive)}  {archive.name}\n")


def pack(bundle_dir: str | Path, dest: str | Path | None = None, target: str | None = None,
         python: str | None = None, glibc: str = DEFAULT_GLIBC) -> Path:
    """Write `<dest>/<name>.tar.gz` (default: beside the bundle) and its checksum file, or with
    `target` the offline kit `<dest>/<name>-<target>.tar.gz`; return the archive."""
    if target is not None:
        return pack_kit(bundle_dir, target, dest, python, glibc)
    bundle = open_checked(bundle_dir)
    name = bundle.path.resolve().name
    archive = _destination(bundle, dest) / f"{name}.tar.gz"
    with atomic_file(archive) as partial, tarfile.open(partial, "w:gz") as tar:
        for file in sorted([*bundle.manifest["files"], *_manifest_files(bundle)]):
            tar.add(bundle.path / file, arcname=f"{name}/{file}", filter=_normalise)
    _write_checksum(archive)
    return archive


def _manifest_files(bundle: Bundle) -> list[str]:
    """The manifest, and its signature where the bundle is signed."""
    return [MANIFEST, *([SIGNATURE] if (bundle.path / SIGNATURE).is_file() else [])]


def wheel_floor(filename: str) -> tuple[int, int] | None:
    """The glibc a wheel needs, from its platform tags (None: a pure-Python wheel).
    A compressed tag set (`manylinux_2_27_x86_64.manylinux_2_28_x86_64`) needs the lowest."""
    floors = []
    for tag in filename.removesuffix(".whl").split("-")[-1].split("."):
        legacy = tag.split("_")[0]
        if legacy in LEGACY:
            floors.append(LEGACY[legacy])
        elif m := re.match(r"manylinux_(\d+)_(\d+)_", tag):
            floors.append((int(m[1]), int(m[2])))
    return min(floors) if floors else None


def _parse_glibc(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)", text)
    if not m or (int(m[1]), int(m[2])) < OLDEST_GLIBC:
        raise UserError(f"--glibc {text!r} is not a glibc version of 2.17 or newer (e.g. 2.31, 2.35, 2.36): "
                        "give the oldest glibc the device may have")
    return int(m[1]), int(m[2])


def requirements(bundle: Bundle) -> tuple[list[str], dict[str, str]]:
    """What the runtime needs on the device for this bundle, pinned to the versions it was proven with:
    (what every device needs, each backend's own package by backend)."""
    proven = bundle.manifest.get("versions", {})

    def pin(name: str) -> str:
        version = proven.get(name)
        if not version or version == "not installed":
            version = importlib.metadata.version(name)
        return f"{name}=={version}"

    signed = ["cryptography"] if (bundle.path / SIGNATURE).is_file() else []  # the device checks the signature
    backends = sorted({a.backend for a in bundle.artifacts}, key=lambda b: REGISTRY[b].distribution)
    return [pin(n) for n in ("numpy", "pillow", *signed)], {b: pin(REGISTRY[b].distribution) for b in backends}


class NoWheel(UserError):
    """No wheel of a package for the target, its Python and glibc."""


def download_wheels(pins: list[str], target: Target, python: str, glibc: tuple[int, int], into: Path) -> None:
    """The wheels of `pins` and their dependencies (and pip's) for the target, into `into`; NoWheel where
    one has no wheel for it."""
    platforms = [f"manylinux_2_{minor}_{target.machine}" for minor in range(5, glibc[1] + 1)]
    platforms += [f"{tag}_{target.machine}" for tag, floor in LEGACY.items() if floor <= glibc]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--implementation", "cp", "--python-version", python, "--dest", str(into),
               *[arg for p in platforms for arg in ("--platform", p)], *pins, "pip"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        missing = re.search(r"No matching distribution found for (\S+)", done.stderr)
        if missing:
            raise NoWheel(f"no wheel of {missing[1]} for {target.name}, Python {python}, glibc "
                            f"{glibc[0]}.{glibc[1]} or older on the package index; pack with another --python, "
                            "a newer --glibc if the device has it, or build the bundle without that backend "
                            "(--backends)")
        last = [line for line in done.stderr.splitlines() if line.strip() and "WARNING" not in line]
        raise UserError(f"pip could not fetch the wheels for {target.name}: {(last or ['no output'])[-1].strip()}")


def _fetch(pins: list[str], target: Target, python: str, glibc: tuple[int, int], work: Path,
           into: Path) -> tuple[int, int] | None:
    """The wheels of `pins` (and their dependencies) into `into`; the highest glibc floor among them."""
    work.mkdir()
    download_wheels(pins, target, python, glibc, work)
    found = sorted(work.glob("*.whl"))
    for wheel in found:
        if not (into / wheel.name).exists():
            shutil.move(str(wheel), into / wheel.name)
    return max((f for f in map(wheel_floor, (w.name for w in found)) if f), default=None)


def _text(floor: tuple[int, int] | None) -> str | None:
    return f"{floor[0]}.{floor[1]}" if floor else None


def _digest(lines) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def pack_kit(bundle_dir: str | Path, target: str, dest: str | Path | None = None, python: str | None = None,
             glibc: str = DEFAULT_GLIBC) -> Path:
    """The offline install kit of a bundle for a target (see the module's docstring)."""
    check_choice("--target", target, list(TARGETS))
    t = TARGETS[target]
    python = python or "%d.%d" % sys.version_info[:2]
    if not re.fullmatch(r"3\.\d+", python):
        raise UserError(f"--python {python!r} is not a Python 3 version such as 3.11")
    ceiling = _parse_glibc(glibc)
    bundle = open_checked(bundle_dir)
    name = bundle.path.resolve().name
    out = _destination(bundle, dest)
    base, own = requirements(bundle)
    with tempfile.TemporaryDirectory(prefix="edge-export-kit-") as tmp:
        kit_dir = Path(tmp) / f"{name}-{target}"
        wheels = kit_dir / "wheels"
        wheels.mkdir(parents=True)
        base_floor = _fetch([*base, "pip"], t, python, ceiling, Path(tmp) / "base", wheels)
        backends, left_out = {}, {}
        for backend, pin in own.items():  # each on its own: its floor is its wheels' and its dependencies'
            try:
                floor = _fetch([pin], t, python, ceiling, Path(tmp) / backend, wheels)
            except NoWheel as err:
                left_out[backend] = str(err).split(";")[0]
                continue
            floor = max((f for f in (floor, base_floor) if f), default=None)
            backends[backend] = {"requirement": pin, "glibc": _text(floor)}
        if not backends:
            raise UserError(f"no backend of the bundle has wheels for {target}, Python {python}, glibc "
                            f"{glibc} or older ({'; '.join(left_out.values())}); pack with another --python or a "
                            "newer --glibc if the device has it")
        floors = {w.name: wheel_floor(w.name) for w in sorted(wheels.glob("*.whl"))}
        lowest = min((version_tuple(b["glibc"]) for b in backends.values() if b["glibc"]), default=None)
        description = {
            "python": python, "glibc": ".".join(map(str, lowest)) if lowest else None, "cpu": t.cpu,
            "cpu_flags": list(t.cpu_flags), "requirements": [base[0], *(b["requirement"] for b in backends.values()),
                                                             *base[1:]],
            "backends": backends, "left_out": left_out,
            "wheels": {w: f"glibc {f[0]}.{f[1]}" if f else "any" for w, f in floors.items()},
            "packed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        update_manifest(bundle.path, targets={**bundle.manifest.get("targets", {}), target: description})
        bundle = Bundle.open(bundle.path)
        for file in sorted([*bundle.manifest["files"], *_manifest_files(bundle)]):
            (kit_dir / name / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle.path / file, kit_dir / name / file)
        source = Path(runtime.__file__).parent
        for file in sorted(source.rglob("*.py")):  # the package and its backends' plugins
            (kit_dir / "lib" / "runtime" / file.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, kit_dir / "lib" / "runtime" / file.relative_to(source))
        (kit_dir / "install.sh").write_text(INSTALL_SH.format(python=python, launcher=LAUNCHER, bundle=name))
        (kit_dir / "install.sh").chmod(0o755)
        runtime_files = [f"{p.relative_to(kit_dir)} {sha256(p)}" for p in
                         [*wheels.glob("*.whl"), *(kit_dir / "lib" / "runtime").rglob("*.py")]]
        # what the device holds, but for the manifest and report.md (which pack and deploy add to)
        content = [f"{f} {h}" for f, h in bundle.manifest["files"].items() if f != "report.md"]
        content += [f"{f} {sha256(bundle.path / f)}" for f in _manifest_files(bundle)[1:]]  # a new signature: a new kit
        kit = {"kit": 1, "name": name, "bundle": name, "target": target, "machine": t.machine, **description,
               "pip": next(w for w in floors if w.startswith("pip-")),
               "runtime_digest": _digest(runtime_files), "digest": _digest(runtime_files + content)}
        (kit_dir / KIT).write_text(json.dumps(kit, indent=2) + "\n")
        files = sorted(p for p in kit_dir.rglob("*") if p.is_file())
        (kit_dir / SUMS).write_text("".join(f"{sha256(p)}  {p.relative_to(kit_dir).as_posix()}\n" for p in files))
        archive = out / f"{name}-{target}.tar.gz"
        with atomic_file(archive) as partial, tarfile.open(partial, "w:gz", compresslevel=1) as tar:
            tar.add(kit_dir, arcname=kit_dir.name, filter=_normalise)
    _write_checksum(archive)
    return archive


def archive_member(archive: Path, name: str) -> bytes:
    """One file of a .tar.gz (a kit's kit.json, say)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile(name)
        if member is None:
            raise UserError(f"{archive} has no file {name!r}")
        return member.read()
