"""What `python -m export deploy` knows of devices: how `--to user@host[:port][/path]` names one, what a
run found on each (`BUNDLE/devices/<device>.json`), and the devices section of report.md.

The rollout itself is one Ansible play (`export.fleet`): `--to` is a one-line inventory per device.
A run that fails before it reaches the device's figures (a wrong key, a host that does not answer)
keeps the device's last good figures beside the failure, and `forget` removes a device's record
(a mistyped host). ssh's complaints are put in one line each (`ssh_failure`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.bundle import DEVICES, Bundle
from runtime.cli import format_table, peak_text
from runtime.compare import truth_text
from runtime.errors import UserError
from runtime.files import atomic_file
from runtime.signing import check_trusted

from .manifest import update_manifest

DEFAULT_PATH = "edge-export"  # on the device, under the login's home
UNPACKED = 4.0  # the kit unpacked and installed takes about this many times its archive's size
DEVICE = re.compile(r"(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*)"
                    r"(?::(?P<port>\d{1,5}))?(?P<path>/.*)?")


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
    with atomic_file(report) as partial:
        partial.write_text(text)
    update_manifest(bundle.path, rehash=("report.md",))
