"""`python -m export deploy BUNDLE --to user@host[:port][/path]`: the bundle on devices over SSH.

For each device, concurrently: look at it (architecture, glibc, Python, free
disk), pack the offline kit for its platform (once per platform), copy it with
`scp`, install it offline (`sh install.sh`: nothing is fetched there), run the
runtime's `verify` (and `bench --choose` with `bench=True`) and `doctor`, and
bring the results back to `BUNDLE/devices/<device>.json` and report.md's
devices section. A device that fails is reported with its reason; the others go on.
A run that fails before it reaches the device's figures (a wrong key, a host that
does not answer) keeps the device's last good figures beside the failure, and
`forget` removes a device's record (a mistyped host).

The system's OpenSSH does the talking. Host keys are always checked
(`StrictHostKeyChecking=yes`; first contact only with `accept_new_host_key`),
`BatchMode=yes` means no password is ever asked for or passed, every path sent
to the device is quoted, and what runs there is fixed: the probe, mkdir, tar,
the kit's install.sh and the runtime's own commands. A server without an SFTP
subsystem gets the kit by the original SCP protocol (`scp -O`).

With `trust` (a public key), only a bundle that key signed is sent; each device is
made to trust the key (PATH/trusted.pub, unless it trusts another, which is
refused), so its installer and `verify --trust` refuse anything the key did not sign.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runtime.bundle import DEVICES, Bundle
from runtime.cli import format_table, peak_text
from runtime.compare import truth_text
from runtime.errors import UserError
from runtime.files import atomic_file
from runtime.kit import KIT, LAUNCHER, TRUSTED, glibc_too_old, version_tuple
from runtime.signing import check_trusted

from .manifest import update_manifest
from .pack import TARGETS, archive_member, open_checked, pack_kit

DEFAULT_PATH = "edge-export"  # on the device, under the login's home
SSH_TIMEOUT = 10  # seconds to connect
UNPACKED = 4.0  # the kit unpacked and installed takes about this many times its archive's size
DEVICE = re.compile(r"(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*)"
                    r"(?::(?P<port>\d{1,5}))?(?P<path>/.*)?")
_manifest_lock = threading.Lock()


@dataclass(frozen=True)
class Device:
    user: str | None
    host: str
    port: int | None
    path: str  # the folder on the device the kit goes into

    @classmethod
    def parse(cls, text: str) -> "Device":
        m = DEVICE.fullmatch(text)
        if not m or (m["port"] and not 0 < int(m["port"]) < 65536):
            raise UserError(f"--to {text!r} is not a device; expected user@host[:port][/path], "
                            "e.g. pi@raspberrypi.local, pi@10.0.0.7:2222/opt/edge-export")
        return cls(m["user"], m["host"], int(m["port"]) if m["port"] else None, m["path"] or DEFAULT_PATH)

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def label(self) -> str:
        return self.login + (f":{self.port}" if self.port else "")

    @property
    def stem(self) -> str:
        """The device's file name under devices/: the login and port, nothing a path could carry."""
        return file_stem(self.login + (f"-{self.port}" if self.port else ""))


def file_stem(name: str) -> str:
    """A device's file name under devices/: its name with nothing a path could carry."""
    return re.sub(r"[^A-Za-z0-9@._-]", "_", name)


class DeviceError(Exception):
    """What went wrong on one device, in one line."""


@dataclass(frozen=True)
class Ssh:
    """The system's ssh and scp, with options that never prompt and always check host keys."""
    device: Device
    identity: Path | None = None
    known_hosts: Path | None = None
    accept_new_host_key: bool = False

    def _options(self) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT}", "-o", "LogLevel=ERROR",
                   "-o", "StrictHostKeyChecking=" + ("accept-new" if self.accept_new_host_key else "yes")]
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.identity:
            options += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return options

    def run(self, command: str, timeout: float = 900) -> subprocess.CompletedProcess:
        port = ["-p", str(self.device.port)] if self.device.port else []
        done = subprocess.run(["ssh", *self._options(), *port, self.device.login, command],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode == 255:
            raise DeviceError(self._why(done.stderr))
        return done

    def copy(self, local: Path, remote: str) -> None:
        """`scp`, which speaks SFTP since OpenSSH 9.0; where the device's server has no SFTP subsystem
        (Dropbear, a trimmed sshd), again with the original SCP protocol (`scp -O`)."""
        port = ["-P", str(self.device.port)] if self.device.port else []
        tried = []
        for legacy in ([], ["-O"]):
            done = subprocess.run(["scp", "-q", *legacy, *self._options(), *port, str(local),
                                   f"{self.device.login}:{remote}"],
                                  capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
            if done.returncode == 0:
                return
            tried.append(done.stderr)
            # OpenSSH's scp says only this (at LogLevel ERROR) when the server refuses the SFTP subsystem
            if "scp: Connection closed" not in done.stderr and "subsystem request failed" not in done.stderr:
                break  # not the missing SFTP server: the original protocol would fail the same way
        if len(tried) == 2:
            raise DeviceError(f"copying the kit failed: the device's SSH server has no SFTP subsystem, and the "
                              f"original SCP protocol (scp -O) failed too: {self._why(tried[1])}; add `Subsystem "
                              "sftp` to its sshd_config, or install scp there")
        raise DeviceError(f"copying the kit failed: {self._why(tried[0])}")

    def _why(self, stderr: str) -> str:
        return ssh_failure(stderr, self.device.host + (f" port {self.device.port}" if self.device.port else ""),
                           self.device.login)


def ssh_failure(stderr: str, host: str, login: str) -> str:
    """What ssh's complaint about `host` ("10.0.0.7 port 2222") means for the user, in one line."""
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return (f"the host key of {host} differs from the one known_hosts holds: refused (another device, "
                "or someone in between); if the device was reinstalled, remove its old entry with ssh-keygen -R")
    if "Host key verification failed" in stderr or "No " in stderr and "host key is known" in stderr:
        return (f"the host key of {host} is not known: check its fingerprint and add it to known_hosts "
                "(ssh-keyscan), or pass --accept-new-host-key to trust it on this first contact")
    if "Permission denied" in stderr:
        return (f"{host} refused the login of {login} ({_last(stderr)}): pass --identity with a key "
                "its authorized_keys holds")
    for sign in ("Connection refused", "timed out", "No route to host", "Could not resolve", "Network is unreachable"):
        if sign in stderr:
            return f"{host} is unreachable ({_last(stderr)})"
    return f"ssh to {host} failed: {_last(stderr)}"


def _last(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines or ["no output"])[-1].removeprefix("ssh: ")


@dataclass
class DeviceResult:
    device: str
    ok: bool = False
    reason: str = ""
    at: str = ""  # when the run started, UTC
    target: str = ""
    copied: bool = False
    machine: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)
    doctor: dict[str, Any] = field(default_factory=dict)
    # the latest earlier run with figures, when this one has none (it failed before verify ran there)
    last_good: dict[str, Any] = field(default_factory=dict)
    release: str = ""  # a fleet's (`export.fleet`): the release the run installed, and what became of it
    state: str = ""

    @property
    def shown(self) -> "DeviceResult | None":
        """The run whose figures stand for the device: this one, or its last good one, or none."""
        if self.verify:
            return self
        return DeviceResult(**self.last_good) if self.last_good else None

    def keeping(self, previous: "DeviceResult | None") -> "DeviceResult":
        """This run, holding `previous`'s figures as its last good ones where it has none of its own."""
        if not self.verify and previous is not None and previous.shown is not None:
            self.last_good = asdict(previous.shown) | {"last_good": {}}
        return self

    @classmethod
    def read(cls, file: Path) -> "DeviceResult | None":
        try:
            return cls(**json.loads(file.read_text()))
        except (OSError, ValueError, TypeError):
            return None


PROBE = ("uname -m; getconf GNU_LIBC_VERSION 2>/dev/null || echo none; "
         "if command -v python3 >/dev/null 2>&1; then python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'; "
         "else echo none; fi; mkdir -p {path} && df -Pk {path} | tail -n 1; cat {path}/*/" + KIT + " 2>/dev/null || true")


@dataclass(frozen=True)
class Probe:
    machine: str
    glibc: str | None
    python: str | None
    free_bytes: int
    kits: dict[str, dict]  # the kits already on the device, by folder (<name>-<target>)


def probe(ssh: Ssh) -> Probe:
    done = ssh.run(PROBE.format(path=shlex.quote(ssh.device.path)), timeout=60)
    lines = done.stdout.splitlines()
    if len(lines) < 4:
        raise DeviceError(f"could not look at the device: {_last(done.stderr or done.stdout)}")
    machine, glibc, python, df = lines[:4]
    kits = {}
    decoder, rest = json.JSONDecoder(), "\n".join(lines[4:]).strip()
    while rest:
        try:
            kit, end = decoder.raw_decode(rest)
        except ValueError:
            break
        kits[f"{kit.get('name')}-{kit.get('target')}"] = kit
        rest = rest[end:].strip()
    try:
        free = int(df.split()[3]) * 1024
    except (IndexError, ValueError):
        raise DeviceError(f"could not create or measure {ssh.device.path!r} on the device: {_last(done.stderr or df)}")
    version = glibc.split()[-1] if glibc.startswith("glibc") else None
    return Probe(machine.strip(), version, None if python.strip() == "none" else python.strip(), free, kits)


class _Kits:
    """One kit per (target, Python), packed (and its kit.json read) the first time a device needs it."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self._kits: dict[tuple[str, str], tuple[Path, dict]] = {}
        self._lock = threading.Lock()

    def get(self, target: str, python: str) -> tuple[Path, dict]:
        with self._lock:
            if (target, python) not in self._kits:
                with _manifest_lock:
                    archive = pack_kit(self.bundle.path, target, python=python)
                kit = json.loads(archive_member(archive, f"{archive.name.removesuffix('.tar.gz')}/{KIT}"))
                self._kits[target, python] = archive, kit
            return self._kits[target, python]


def _target_of(p: Probe) -> str:
    for name, t in TARGETS.items():
        if t.machine == p.machine:
            return name
    raise DeviceError(f"the device is {p.machine}; edge-export packs for {', '.join(TARGETS)}")


def _json_of(done: subprocess.CompletedProcess, what: str) -> dict:
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise DeviceError(f"{what} failed there: {_last(done.stderr or done.stdout)}") from None


def trust_there(ssh: Ssh, key_line: str, fingerprint: str) -> str:
    """Make the device trust the signing key `key_line` (an OpenSSH public key line): written to
    PATH/trusted.pub where the device trusts none yet; a device that trusts another key is left as it is and
    refused. The path of the key there."""
    path = f"{ssh.device.path}/{TRUSTED}"
    done = ssh.run(f'f={shlex.quote(path)}; [ -f "$f" ] || printf "%s\\n" {shlex.quote(key_line)} > "$f"; cat "$f"')
    there = done.stdout.split()[:2]
    if there != key_line.split()[:2]:
        raise DeviceError(f"the device trusts another signing key ({' '.join(there)[:40] or 'unreadable'}...) in "
                          f"{path}, not {fingerprint}: refused; remove that file there if the device is to trust "
                          "the new key")
    return path


def deploy_one(device: Device, ssh: Ssh, kits: _Kits, bench: bool, force: bool,
               trust: tuple[str, str] | None = None) -> DeviceResult:
    result = DeviceResult(device.label, at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    try:
        p = probe(ssh)
        result.target = target = _target_of(p)
        if p.python is None:
            raise DeviceError("no python3 on the device's PATH (for a non-interactive login); install Python 3 there "
                              "(Debian, Ubuntu, Raspberry Pi OS: apt install python3)")
        if version_tuple(p.python) < (3, 10):
            raise DeviceError(f"the device runs Python {p.python}; the runtime needs 3.10 or newer")
        archive, kit = kits.get(target, p.python)
        if glibc_too_old(p.glibc, kit["glibc"]):
            raise DeviceError(f"the device has {'glibc ' + p.glibc if p.glibc else 'no glibc'}, the kit's wheels need "
                              f"glibc {kit['glibc']} or newer: pack for it with --glibc {p.glibc or '...'} "
                              "(fewer backends may have wheels that old)")
        folder = f"{device.path}/{archive.name.removesuffix('.tar.gz')}"
        q = shlex.quote
        there = p.kits.get(Path(folder).name, {})
        if force or there.get("digest") != kit["digest"]:
            need = archive.stat().st_size * UNPACKED
            if p.free_bytes < need:
                raise DeviceError(f"not enough disk at {device.path!r}: {p.free_bytes / 1e6:.0f} MB free, the kit "
                                  f"needs about {need / 1e6:.0f} MB")
            ssh.copy(archive, f"{device.path}/{archive.name}")
            unpack = ssh.run(f"cd {q(device.path)} && rm -rf {q(Path(folder).name)} && tar -xzf {q(archive.name)} "
                             f"&& rm -f {q(archive.name)}")
            if unpack.returncode != 0:
                raise DeviceError(f"unpacking the kit failed: {_last(unpack.stderr)}")
            result.copied = True
        trusted = trust_there(ssh, *trust) if trust else None  # the installer then refuses what it did not sign
        install = ssh.run(f"sh {q(folder + '/install.sh')}")
        if install.returncode != 0:
            raise DeviceError(f"install failed: {_last(install.stderr or install.stdout).removeprefix('error: ')}")
        runtime = f"{q(folder + '/' + LAUNCHER)}"
        bundle_there = q(f"{folder}/{kit['bundle']}")
        result.doctor = _json_of(ssh.run(f"{runtime} doctor {bundle_there} --json"), "doctor")
        result.machine = result.doctor["machine"]
        checked = ssh.run(f"{runtime} verify {bundle_there} --json" + (f" --trust {q(trusted)}" if trusted else ""))
        result.verify = _json_of(checked, "verify")
        if bench and not result.verify["file_problems"]:
            done = ssh.run(f"{runtime} bench {bundle_there} --choose --json")
            result.bench = _json_of(done, "bench --choose") if done.returncode == 0 else {"error": _last(done.stderr)}
        result.ok = result.verify["passed"]
        if not result.ok:
            failed = [f"{a['backend']} {a['precision']}" + (f" ({a['why']})" if a.get("why") else "")
                      for a in result.verify["artifacts"] if a["status"] == "FAIL"]
            result.reason = "verify failed there: " + "; ".join(
                result.verify["file_problems"] + ([f"FAIL for {', '.join(failed)}"] if failed else []))
    except DeviceError as err:
        result.reason = str(err)
    except subprocess.TimeoutExpired as err:
        result.reason = f"no answer within {err.timeout:.0f} s"
    return result


def deploy(bundle_dir: str | Path, to: list[str], identity: Path | None = None, known_hosts: Path | None = None,
           accept_new_host_key: bool = False, bench: bool = False, force: bool = False,
           trust: Path | None = None) -> list[DeviceResult]:
    """Deploy to every device in `to`, concurrently; results kept under BUNDLE/devices/. With `trust` (a
    public key), only a bundle that key signed is sent, and each device is made to trust that key alone."""
    devices = [Device.parse(t) for t in to]
    if len({d.stem for d in devices}) < len(devices):
        raise UserError("--to names the same device twice; give each device once")
    if identity is not None and not Path(identity).is_file():
        raise UserError(f"--identity {str(identity)!r} is not a file; expected an SSH private key")
    bundle = open_checked(bundle_dir, "rebuild it before deploying")
    signer = trusted_signer(bundle, trust) if trust is not None else None
    kits = _Kits(bundle)
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        results = list(pool.map(lambda d: deploy_one(d, Ssh(d, identity, known_hosts, accept_new_host_key),
                                                     kits, bench, force, signer), devices))
    for device, result in zip(devices, results):
        write_record(bundle, device.stem, result)
    _report(bundle)
    return results


def trusted_signer(bundle: Bundle, trust: Path) -> tuple[str, str]:
    """(The public key line of `trust`, its fingerprint) for a bundle it signed; refused here, before any
    device is touched, if it did not."""
    return " ".join(Path(trust).read_text().split()[:2]), check_trusted(bundle.path, trust)


def write_record(bundle: Bundle, stem: str, result: DeviceResult) -> None:
    """devices/<stem>.json: this run, holding the device's last good figures where it has none of its own."""
    record = bundle.path / DEVICES / f"{stem}.json"
    record.parent.mkdir(exist_ok=True)
    result.keeping(DeviceResult.read(record))
    with atomic_file(record) as partial:
        partial.write_text(json.dumps(asdict(result), indent=2) + "\n")


def forget(bundle_dir: str | Path, names: list[str]) -> list[str]:
    """Remove the named devices' records (as --to names them) and their rows in report.md."""
    bundle = Bundle.open(bundle_dir)
    folder = bundle.path / DEVICES
    records = [folder / f"{Device.parse(n).stem}.json" for n in names]
    known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    for name, record in zip(names, records):
        if not record.is_file():
            raise UserError(f"--forget {name!r}: the bundle has no record of that device; it has: "
                            f"{', '.join(known) or 'none'}")
    for record in records:
        record.unlink()
    _report(bundle)
    return [r.stem for r in records]


def rows(results: list[DeviceResult]) -> list[list[str]]:
    """One row per device and artifact: device, CPU, artifact, parity, its figures on the bundle's labelled images
    (where it has them), p50, p90, peak memory, the device's choice."""
    out = []
    for latest in results:
        r = latest.shown
        if r is None:
            out.append([latest.device, "", "", "FAILED (below)", "", "", "", "", ""])
            continue
        m = r.machine
        cpu = f"{m['cpu']} ({m['machine']}, {m['logical_cores']} cores{', emulated' if m['emulated'] else ''})"
        timed = r.bench.get("artifacts", {})
        chosen = r.bench.get("choice") or {}
        for a in r.verify["artifacts"]:
            key = f"{a['backend']} {a['precision']}"
            t = timed.get(key, {})
            parity = {"pass": f"pass ({a.get('max_rel', 0):.1e} <= {a.get('bound', 0):.0e})",
                      "skipped": f"skipped: {a.get('why')}"}.get(a["status"], a["status"] + (
                          f": {a['why']}" if a.get("why") else ""))
            out.append([latest.device, cpu, key, parity, truth_text(a.get("truth"), a.get("max_drop", {})),
                        f"{t['p50_ms']:.2f}" if t else "", f"{t['p90_ms']:.2f}" if t else "",
                        peak_text(t["memory"]) if "memory" in t else "",
                        "recommended" if (chosen.get("backend"), chosen.get("precision")) ==
                        (a["backend"], a["precision"]) else ""])
        for problem in r.verify["file_problems"]:
            out.append([latest.device, cpu, "", "FAIL", "", "", "", "", problem])
    return out


def status_line(r: DeviceResult) -> str:
    signed = f", signed by {r.verify['signed_by']}" if r.verify.get("signed_by") else ""
    line = f"{'ok    ' if r.ok else 'FAILED'} {r.device}: " + (r.reason or (
        ("kit copied and installed" if r.copied else "the same kit was there") + f", verify passed{signed}"))
    if r.last_good:
        good = DeviceResult(**r.last_good)
        line += (f" (at {r.at}); its rows are from its last run with figures, at {good.at}"
                 + ("" if good.ok else ", which failed too: " + good.reason))
    return line


COLUMNS = ["device", "CPU", "artifact", "parity", "on the labels", "p50 ms", "p90 ms", "peak MB", "device's choice"]


def _report(bundle: Bundle) -> None:
    """report.md's devices section, from every devices/*.json; the manifest gets report.md's new hash."""
    results = [r for r in map(DeviceResult.read, sorted((bundle.path / DEVICES).glob("*.json"))) if r is not None]
    report = bundle.path / "report.md"
    text = report.read_text() if report.is_file() else f"# {bundle.name}\n"
    text = text.split("\n## Devices\n")[0].rstrip("\n") + "\n"
    table = format_table(COLUMNS, rows(results)) + "".join(f"\n{status_line(r)}" for r in results)
    text += "" if not results else ("\n## Devices\n\nWhat `python -m export deploy` found on each device (its latest run with "
             "figures, and a later failure beside them; an emulated CPU's times say nothing about a real board):"
             "\n\n```\n" + table + "\n```\n")
    with _manifest_lock:
        with atomic_file(report) as partial:
            partial.write_text(text)
        update_manifest(bundle.path, rehash=("report.md",))
