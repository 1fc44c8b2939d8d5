"""Install an offline kit on the device: `sh install.sh` in the unpacked kit runs this file.

Standard library only, run as a plain script before anything is installed (so
no imports from the rest of the package). It checks that the device is one the
kit was packed for (architecture, Python, glibc, CPU features) and that every
file matches SHA256SUMS, then installs the kit's wheels into `lib/` with the
pip wheel the kit carries (`--no-index`: nothing is fetched), and writes the
`edge-runtime` launcher. Each refusal is one line on stderr and exit code 2.

A device that trusts a signing key (`sh install.sh --trust KEY.pub`, or `trusted.pub` in the
folder the kit was unpacked into, where `export deploy --trust` puts it) installs only a
bundle that key signed, whose files match the signed manifest (`runtime.signing`): an
unsigned bundle, another key's, a forged signature or a manifest changed after signing
is refused before the launcher is written. The check runs with the kit's own wheels (the
`cryptography` package a signed bundle's kit carries), once they are installed into lib/.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

KIT = "kit.json"
SUMS = "SHA256SUMS"
INSTALLED = ".installed"
LAUNCHER = "edge-runtime"
TRUSTED = "trusted.pub"  # beside the kits: the key a device requires their bundles be signed by


class KitError(Exception):
    pass


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def glibc_too_old(have: str | None, floor: str | None) -> bool:
    """Whether a device with glibc `have` (None: another C library) is below a kit's `floor` (None: no floor)."""
    return bool(floor) and (have is None or version_tuple(have) < version_tuple(floor))


@functools.lru_cache(maxsize=1)  # runtime.load reads the CPU's signature, glibc with it: once per process
def device_glibc() -> str | None:
    """The C library's version ("2.36"), or None where it is not glibc (musl, macOS): as `getconf
    GNU_LIBC_VERSION` says it (what `export deploy` reads over SSH, so both sides agree), else as the C
    library tells this process."""
    try:
        said = subprocess.run(["getconf", "GNU_LIBC_VERSION"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        said = ""
    try:
        said = said.strip() or os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        return None
    name, _, version = said.partition(" ")
    return version if name == "glibc" else None


def backends_here(kit: dict, glibc: str | None) -> tuple[list[str], dict[str, str]]:
    """(The kit's requirements this device installs, the backends it leaves out and why): a backend whose
    wheels need a newer glibc than the device's is left out; the others are installed."""
    left = {name: f"its wheels need glibc {b['glibc']}, this device has {'glibc ' + glibc if glibc else 'no glibc'}"
            for name, b in kit.get("backends", {}).items() if glibc_too_old(glibc, b["glibc"])}
    dropped = {kit["backends"][name]["requirement"] for name in left}
    return [r for r in kit["requirements"] if r not in dropped], left


def cpu_flags() -> tuple[set[str] | None, bool]:
    """(The CPU's flags from /proc/cpuinfo, or None where they cannot be told; whether it describes
    another architecture). Under user-mode emulation (qemu-user) the CPU described is the host's:
    x86 "flags" where Arm has "Features"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    foreign = (key.strip() == "flags") == (platform.machine() in ("aarch64", "arm64"))
                    return (None if foreign else set(value.split())), foreign
    except OSError:
        pass
    return None, False


def check_device(kit: dict) -> list[str]:
    """Why this device cannot use the kit (empty when it can)."""
    problems = []
    if platform.machine() != kit["machine"]:
        problems.append(f"this kit is for {kit['target']}, this device is {platform.system().lower()}-"
                        f"{platform.machine()}: pack it again with --target linux-{platform.machine()}")
    have = "%d.%d" % sys.version_info[:2]
    if have != kit["python"]:
        problems.append(f"this kit's wheels are for Python {kit['python']}, this device runs Python {have} "
                        f"({sys.executable}): pack it again with --python {have}")
    glibc = device_glibc()
    if glibc_too_old(glibc, kit.get("glibc")):
        problems.append(f"this kit's wheels need glibc {kit['glibc']} or newer, this device has "
                        f"{'glibc ' + glibc if glibc else 'no glibc'}: pack it again with --glibc {glibc or '...'} "
                        "(fewer backends may have wheels that old)")
    flags, _ = cpu_flags()
    missing = [f for f in kit.get("cpu_flags", []) if flags is not None and f not in flags]
    if missing:
        problems.append(f"this kit needs a CPU with {kit['cpu']} (flags {', '.join(missing)} are missing here)")
    return problems


def check_files(folder: Path, skip: str | None = None) -> list[str]:
    """The kit's files that are missing or differ from SHA256SUMS (but those under `skip`/)."""
    import hashlib  # here: the runtime imports this file, and a process that runs a model needs no OpenSSL

    problems = []
    for line in (folder / SUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = folder / name
        if skip and name.startswith(skip + "/"):
            continue
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            problems.append(f"{name} has changed (sha256 differs from {SUMS})")
    return problems


def trusted_key(folder: Path, given: str | None) -> Path | None:
    """The key this device requires the bundle be signed by: `--trust`'s, else `trusted.pub` beside the
    kit's folder where it exists, else none."""
    if given:
        if not Path(given).is_file():
            raise KitError(f"--trust {given!r} is not a file; pass the public key the bundles are signed with")
        return Path(given)
    default = folder.parent / TRUSTED
    return default if default.is_file() else None


def check_trust(folder: Path, kit: dict, key: Path) -> str:
    """The signature check of `runtime.signing`, run with the kit's installed wheels."""
    env = {**os.environ, "PYTHONPATH": str(folder / "lib")}
    done = subprocess.run([sys.executable, "-m", "runtime.signing", str(folder / kit["bundle"]), str(key)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise KitError(last.removeprefix("error: "))
    return done.stdout.strip()


def install(folder: Path, trust: str | None = None) -> str:
    kit = json.loads((folder / KIT).read_text())
    marker = folder / "lib" / INSTALLED
    installed = marker.is_file() and marker.read_text().strip() == kit["runtime_digest"]
    key = trusted_key(folder, trust)
    # once installed, the bundle's files are verify's to check (it names the artifact a change breaks)
    problems = check_device(kit) + check_files(folder, skip=kit["bundle"] if installed else None)
    if problems:
        raise KitError("; ".join(problems))
    if installed:
        signed = f"; {check_trust(folder, kit, key)}" if key else ""
        return f"already installed in {folder / 'lib'}{signed}"
    requirements, left = backends_here(kit, device_glibc())
    pip = folder / "wheels" / kit["pip"] / "pip"
    command = [sys.executable, str(pip), "install", "--isolated", "--no-index", "--find-links",
               str(folder / "wheels"), "--target", str(folder / "lib"), "--no-compile", "--upgrade",
               "--disable-pip-version-check", "--root-user-action", "ignore", "--quiet", *requirements]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise KitError(f"pip could not install the kit's wheels offline: {last}")
    signed = f"; {check_trust(folder, kit, key)}" if key else ""
    launcher = folder / LAUNCHER
    launcher.write_text('#!/bin/sh\n# edge-export runtime of this kit; no network, no torch\n'
                        'here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)\n'
                        f'PYTHONPATH="$here/lib${{PYTHONPATH:+:$PYTHONPATH}}" exec {sys.executable} -m runtime "$@"\n')
    launcher.chmod(0o755)
    marker.write_text(kit["runtime_digest"] + "\n")
    gone = "".join(f"; left out {name}: {why}" for name, why in {**kit.get("left_out", {}), **left}.items())
    return f"installed {len(requirements)} packages and the runtime in {folder / 'lib'}{signed}{gone}"


def _runtime_json(folder: Path, kit: dict, *args: str) -> tuple[dict | None, str]:
    """(The JSON a runtime command prints, or None; its last line of error) for the kit's bundle."""
    done = subprocess.run([str(folder / LAUNCHER), args[0], str(folder / kit["bundle"]), *args[1:], "--json"],
                          capture_output=True, text=True)
    try:
        return json.loads(done.stdout), ""
    except ValueError:
        return None, (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1].removeprefix(
            "error: ")


def release(folder: Path, trust: str | None, max_p90_ms: float | None, bench: bool = False) -> dict:
    """A release on the device: the kit, unpacked in ROOT/releases/<digest>/, installed and held to the
    health gate there (verify, with the trusted key where there is one; with `max_p90_ms`, the recommended
    artifact's p90 latency measured there), and made current only if it passes: ROOT/current switched to
    it in one rename, ROOT/previous kept pointing at the release it replaces. With `bench`, every artifact
    is timed there too (`bench --choose`) once verify has passed. What happened, as a dict."""
    kit = json.loads((folder / KIT).read_text())
    here = folder.parent  # releases/<digest>
    root = here.parent.parent
    current = root / "current"
    found = {"release": here.name, "previous": os.readlink(current).split("/")[-1] if current.is_symlink() else None,
             "healthy": False, "switched": False, "reason": ""}
    key = trust or (str(root / TRUSTED) if (root / TRUSTED).is_file() else None)  # the device's, beside its releases
    try:
        found["installed"] = install(folder, key)
    except KitError as err:
        return {**found, "reason": f"install failed: {err}"}
    found["doctor"], _ = _runtime_json(folder, kit, "doctor")
    found["verify"], why = _runtime_json(folder, kit, "verify", *(["--trust", key] if key else []))
    if found["verify"] is None or not found["verify"]["passed"]:
        failed = [] if found["verify"] is None else found["verify"]["file_problems"] + [
            f"FAIL for {a['backend']} {a['precision']}" for a in found["verify"]["artifacts"] if a["status"] == "FAIL"]
        return {**found, "reason": "verify failed there: " + (why or "; ".join(failed))}
    if bench:
        found["bench"], why = _runtime_json(folder, kit, "bench", "--choose")
        if found["bench"] is None:
            found["bench"] = {"error": why}
    if max_p90_ms is not None:
        found["latency"], why = _runtime_json(folder, kit, "bench", "--runs", "50", "--warmup", "5")
        if found["latency"] is None:
            return {**found, "reason": f"bench failed there: {why}"}
        timed = found["latency"]
        if timed["p90_ms"] > max_p90_ms:
            return {**found, "reason": f"the latency gate failed: p90 {timed['p90_ms']:.2f} ms of {timed['backend']} "
                                       f"{timed['precision']} is over --max-p90-ms {max_p90_ms:g}"}
    found["healthy"] = True
    if found["previous"] != here.name:
        if found["previous"] is not None:
            (root / "previous.new").unlink(missing_ok=True)
            os.symlink(os.readlink(current), root / "previous.new")
            os.replace(root / "previous.new", root / "previous")
        (root / "current.new").unlink(missing_ok=True)
        os.symlink(f"releases/{here.name}", root / "current.new")
        os.replace(root / "current.new", current)  # the switch: one rename
        found["switched"] = True
    return found


def main(argv: list[str]) -> int:
    import argparse

    folder = Path(__file__).resolve().parent.parent.parent  # <kit>/lib/runtime/kit.py
    parser = argparse.ArgumentParser(prog="install.sh", description="Install this kit offline.")
    parser.add_argument("--trust", metavar="KEY.pub", help="install only a bundle this public key signed")
    parser.add_argument("--release", action="store_true",
                        help="as a release (the kit in ROOT/releases/<digest>/): gate it, then make it ROOT/current; "
                             "print what happened as JSON")
    parser.add_argument("--max-p90-ms", type=float, help="with --release: the latency the gate allows")
    parser.add_argument("--bench", action="store_true", help="with --release: time every artifact there too")
    args = parser.parse_args(argv)
    if args.release:
        print(json.dumps(release(folder, args.trust, args.max_p90_ms, args.bench)))
        return 0
    try:
        done = install(folder, args.trust)
    except KitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kit = json.loads((folder / KIT).read_text())
    print(f"{done}; now: {folder / LAUNCHER} verify {folder / kit['bundle']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
