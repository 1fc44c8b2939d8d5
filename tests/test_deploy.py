"""On devices over SSH: `python -m export deploy --to` against real OpenSSH servers on 127.0.0.1.

Each server is a device with its own PATH; the kit is the real offline kit of
the dsc bundle (wheels from the package index at pack time, installed there
with `--no-index`). `--to` is a one-line inventory for the same Ansible rollout
a fleet takes (tests/test_fleet.py): each device gets the bundle as a release,
made current once it passes there. Devices that fail are reported with their
reason while the others go on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LABELLED
from tests.devices import SshServers, old_glibc_tools, tools_without_python


def deploy(bundle: Path, servers: SshServers, *targets: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "export", "deploy", str(bundle), "--known-hosts", str(servers.known_hosts)]
    for target in targets:
        args += ["--to", target]
    if "--identity" not in extra:
        args += ["--identity", str(servers.client_key)]
    return subprocess.run([*args, *extra], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "COLUMNS": "250"})


@pytest.fixture(scope="module")
def servers():
    s = SshServers()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def bundle(built, tmp_path_factory):
    """A copy of the dsc bundle (deploy adds devices/, report.md's section and the manifest's targets)."""
    copy = tmp_path_factory.mktemp("deploy") / "dsc"
    shutil.copytree(built("dsc").bundle, copy)
    return copy


@pytest.fixture(scope="module")
def two_devices(servers, bundle):
    """One deploy to two devices at once (two servers, two ports), with --bench; then the same again."""
    ports = [servers.start(), servers.start()]
    for port in ports:
        servers.trust(port)
    targets = [f"edge-device@127.0.0.1:{port}{servers.device_folder()}" for port in ports]
    first = deploy(bundle, servers, *targets, extra=("--bench",))
    records = {p.stem: json.loads(p.read_text()) for p in (bundle / "devices").glob("*.json")}
    again = deploy(bundle, servers, *targets, extra=("--json",))
    return targets, first, records, again


def test_deploys_to_two_devices_at_once_and_brings_back_one_table(two_devices, bundle):
    targets, first, records, _ = two_devices
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert "p90 ms  peak MB" in lines[0]
    shipped = len(json.loads((bundle / "manifest.json").read_text())["artifacts"])
    labels = [t.split("/", 1)[0] for t in targets]
    for label in labels:
        rows = [line for line in lines if line.startswith(label + " ")]
        # one row per artifact: CPU, parity within the stored bound, p50 and p90 timed on the device
        assert len(rows) == shipped >= 2, first.stdout
        assert all("x86_64" in r and "pass (" in r for r in rows), rows
        assert all(" pck " in r for r in rows), rows  # each artifact's figure on the bundle's labelled pictures
        assert sum("recommended" in r for r in rows) == 1, rows
        assert f"ok     {label}: kit copied and installed, verify passed" in first.stdout
    for label in labels:
        stem = label.replace(":", "-")
        record = records[stem]
        assert record["ok"] and record["copied"] and record["target"] == "linux-x86_64"
        assert record["verify"]["passed"] and len(record["verify"]["artifacts"]) == shipped
        assert all(a["max_rel"] <= a["bound"] for a in record["verify"]["artifacts"])
        allowed = json.loads((bundle / "manifest.json").read_text())["evaluation"]["max_drop"]
        assert all(a["truth"]["images"] == LABELLED["dsc"] and a["truth"]["drop"]["pck"] <= allowed["pck"]
                   for a in record["verify"]["artifacts"])
        choice = record["bench"]["choice"]
        assert (choice["backend"], choice["precision"]) in {(a["backend"], a["precision"])
                                                            for a in record["verify"]["artifacts"]}
        assert all(t["p50_ms"] > 0 and t["p90_ms"] >= t["p50_ms"] for t in record["bench"]["artifacts"].values())
        # memory, measured there: each artifact's peak in a fresh process, a column of the table
        assert all(t["memory"]["peak_mb"] > t["memory"]["phases"]["python"]["rss_mb"] > 0
                   for t in record["bench"]["artifacts"].values())
        assert record["doctor"]["versions"]["onnxruntime"] and record["machine"]["glibc"]
    report = (bundle / "report.md").read_text()
    assert report.count("## Devices") == 1 and all(label in report for label in labels)
    # the bundle here still verifies: deploy recorded report.md's new hash and the kit's targets
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["targets"]["linux-x86_64"]["glibc"] == "2.28"
    check = subprocess.run([sys.executable, "-m", "runtime", "verify", str(bundle)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_a_second_deploy_finds_the_same_kit_and_copies_nothing(two_devices):
    *_, again = two_devices
    assert again.returncode == 0, again.stderr
    results = json.loads(again.stdout)
    assert [r["copied"] for r in results] == [False, False] and all(r["ok"] for r in results)


def test_a_tampered_file_on_a_device_fails_verify_there_and_is_named(two_devices, servers, bundle):
    targets, *_ = two_devices
    folder = Path("/" + targets[0].split("/", 1)[1]) / "current" / "dsc-linux-x86_64" / "dsc"
    with open(folder / "openvino" / "model.bin", "r+b") as f:
        f.seek(1000)
        f.write(b"\x7f" * 64)
    result = deploy(bundle, servers, *targets)
    assert result.returncode == 1, result.stdout
    label = targets[0].split("/", 1)[0]
    assert (f"FAILED {label}: verify failed there: openvino/model.bin has changed (sha256 differs from the manifest)"
            in result.stdout), result.stdout
    assert f"ok     {targets[1].split('/', 1)[0]}: the same kit was there, verify passed" in result.stdout
    record = json.loads((bundle / "devices" / f"{label.replace(':', '-')}.json").read_text())
    assert not record["ok"] and record["verify"]["file_problems"] and record["state"] == "failed its gate"
    repaired = deploy(bundle, servers, targets[0], extra=("--force",))  # the release copied again, in place
    assert repaired.returncode == 0 and f"ok     {label}: kit copied and installed, verify passed" in repaired.stdout


@pytest.fixture(scope="module")
def failing(servers, bundle):
    """One deploy to a healthy device and to every kind of broken one, all at once."""
    tools = servers.folder / "tools"
    good = servers.start()
    no_python = servers.start(path=str(tools_without_python(tools / "bare")))
    old = servers.start(path=f"{old_glibc_tools(tools / 'old')}:/usr/bin:/bin")
    unknown_host = servers.start()
    small = servers.start()
    no_transfer = servers.start(path=str(tools_without_python(tools / "no-scp", python=True)), sftp=False)
    for port in (good, no_python, old, small, no_transfer):
        servers.trust(port)
    devices = {"good": f"edge-device@127.0.0.1:{good}{servers.device_folder()}",
               "no_python": f"edge-device@127.0.0.1:{no_python}{servers.device_folder()}",
               "old_glibc": f"edge-device@127.0.0.1:{old}{servers.device_folder()}",
               "unknown_host": f"edge-device@127.0.0.1:{unknown_host}",
               "full_disk": f"edge-device@127.0.0.1:{small}{servers.small_disk()}",
               "unreachable": "edge-device@127.0.0.1:1",
               "no_transfer": f"edge-device@127.0.0.1:{no_transfer}{servers.device_folder()}"}
    result = deploy(bundle, servers, *devices.values())
    wrong_key = deploy(bundle, servers, f"edge-device@127.0.0.1:{good}",
                       extra=("--identity", str(servers.stranger_key)))
    return devices, result, wrong_key


@pytest.mark.parametrize("device, reason", [
    ("no_python", "no python3 on the device's PATH (for a non-interactive login); install Python 3 there"),
    ("old_glibc", "the device has glibc 2.17, the kit's wheels need glibc 2.28 or newer: pack for it with "
                  "--glibc 2.17"),
    ("unknown_host", "is not known: check its fingerprint and add it to known_hosts (ssh-keyscan), or pass "
                     "--accept-new-host-key to trust it on this first contact"),
    ("full_disk", "not enough disk at /tmp/edge-device-"),
    ("unreachable", "127.0.0.1 port 1 is unreachable (connect to host 127.0.0.1 port 1: Connection refused)"),
    ("no_transfer", "copying the kit failed: SFTP, the original SCP protocol (scp -O) and a pipe through dd all "
                    "failed (a server without an SFTP subsystem, as Dropbear has none, needs scp or dd on the device"),
])
def test_each_broken_device_gets_its_reason_and_the_others_go_on(failing, device, reason):
    devices, result, _ = failing
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"FAILED {devices[device].split('/')[0]}:"))
    assert reason in line, line
    assert f"ok     {devices['good'].split('/')[0]}: kit copied and installed, verify passed" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_key_the_device_does_not_hold_is_refused_in_one_line(failing):
    devices, _, wrong_key = failing
    assert wrong_key.returncode == 1
    assert "refused the login of edge-device@127.0.0.1" in wrong_key.stdout
    assert "pass --identity with a key its authorized_keys holds" in wrong_key.stdout


def test_a_failed_deploy_keeps_the_devices_last_good_figures_beside_the_failure(failing, bundle):
    """The wrong key's run reached nothing: the device's record and report.md keep the figures of its
    earlier good run (the same device: login and port), with the failure and both times beside them."""
    devices, _, wrong_key = failing
    label = devices["good"].split("/")[0]
    record = json.loads((bundle / "devices" / f"{label.replace(':', '-')}.json").read_text())
    assert not record["ok"] and "refused the login" in record["reason"] and not record["verify"]
    good = record["last_good"]
    assert good["ok"] and good["verify"]["passed"] and good["at"] <= record["at"] and not good["last_good"]
    shipped = len(good["verify"]["artifacts"])
    for text in (wrong_key.stdout, (bundle / "report.md").read_text()):
        rows = [line for line in text.splitlines() if line.startswith(label + " ")]
        assert len(rows) == shipped and all("pass (" in r for r in rows), text
        assert (f"FAILED {label}: 127.0.0.1 port {label.split(':')[-1]} refused the login of edge-device@127.0.0.1"
                in text), text
        assert f"(at {record['at']}); its rows are from its last run with figures, at {good['at']}" in text, text


def test_forget_removes_a_mistyped_devices_record_and_rows(failing, bundle):
    devices, _, _ = failing
    mistyped = devices["unreachable"]  # port 1
    assert (bundle / "devices" / "edge-device@127.0.0.1-1.json").is_file()
    result = subprocess.run([sys.executable, "-m", "export", "deploy", str(bundle), "--forget", mistyped],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("forgot edge-device@127.0.0.1-1: ")
    assert not (bundle / "devices" / "edge-device@127.0.0.1-1.json").exists()
    report = (bundle / "report.md").read_text()
    assert "edge-device@127.0.0.1:1 " not in report and "edge-device@127.0.0.1:1:" not in report
    assert devices["good"].split("/")[0] + " " in report  # the others stay
    again = subprocess.run([sys.executable, "-m", "export", "deploy", str(bundle), "--forget", mistyped],
                           capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.startswith(
        "error: --forget 'edge-device@127.0.0.1:1': the bundle has no record of that device; it has: "), again.stderr
    check = subprocess.run([sys.executable, "-m", "runtime", "verify", str(bundle)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout  # report.md's new hash is in the manifest


def test_no_host_key_is_accepted_silently(failing, servers):
    """The unknown device's key was not added: only --accept-new-host-key adds it."""
    devices, _, _ = failing
    port = devices["unknown_host"].split(":")[-1]
    assert f"[127.0.0.1]:{port} " not in servers.known_hosts.read_text()


@pytest.mark.parametrize("args, message", [
    (["--to", "pi@"], "error: --to 'pi@' is not a device; expected user@host[:port][/path]"),
    (["--to", "pi@host:99999"], "error: --to 'pi@host:99999' is not a device"),
    (["--to", "a@h", "--to", "a@h"], "error: --to names the same device twice"),
    (["--to", "a@h", "--identity", "/no/such/key"], "error: --identity '/no/such/key' is not a file"),
    ([], "error: name a device: --to USER@HOST[:PORT][/PATH] to deploy, --inventory hosts.yml for a fleet, or "
         "--forget USER@HOST[:PORT]"),
    (["--to", "a@h", "--limit", "north"], "error: --limit picks among an inventory's hosts: add --inventory "
                                          "hosts.yml, or name the devices with --to"),
    (["--to", "a@h", "--serial", "0"], "error: --serial '0' is not a number of devices (1 or more)"),
])
def test_bad_deploy_arguments_are_refused_before_any_connection(bundle, args, message):
    result = subprocess.run([sys.executable, "-m", "export", "deploy", str(bundle), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr


@pytest.fixture(scope="module")
def signed_fleet(servers, built, tmp_path_factory):
    """The dsc bundle signed, deployed with --trust to three devices at once: one whose sshd has no SFTP
    subsystem (as Dropbear has none), one that already trusts another key, one as any; then the unsigned
    bundle to that last one, which now trusts the key, without --trust."""
    from export.signing import keygen, sign
    from runtime.kit import TRUSTED

    keys = tmp_path_factory.mktemp("keys")
    release, _ = keygen(keys / "release")
    stranger, _ = keygen(keys / "stranger")
    signed = tmp_path_factory.mktemp("signed") / "dsc"
    unsigned = tmp_path_factory.mktemp("unsigned") / "dsc"
    for copy in (signed, unsigned):
        shutil.copytree(built("dsc").bundle, copy)
    signer = sign(signed, keys / "release")
    ports = {"no_sftp": servers.start(sftp=False), "other_key": servers.start(), "plain": servers.start()}
    devices = {}
    for name, port in ports.items():
        servers.trust(port)
        folder = servers.device_folder()
        devices[name] = f"edge-device@127.0.0.1:{port}{folder}"
    other = Path("/" + devices["other_key"].split("/", 1)[1]) / TRUSTED
    shutil.copy(stranger, other)
    shutil.chown(other, "edge-device", "edge-device")
    result = deploy(signed, servers, *devices.values(), extra=("--trust", str(release)))
    refused_here = deploy(unsigned, servers, devices["plain"], extra=("--trust", str(release)))
    refused_there = deploy(unsigned, servers, devices["plain"])
    return devices, signer, release, result, refused_here, refused_there


def label_of(device: str) -> str:
    return device.split("/", 1)[0]


def test_a_device_whose_ssh_server_has_no_sftp_receives_the_kit(signed_fleet):
    devices, signer, _, result, *_ = signed_fleet
    assert (f"ok     {label_of(devices['no_sftp'])}: kit copied and installed, verify passed, signed by {signer}"
            in result.stdout), result.stdout + result.stderr


def test_deploy_with_trust_makes_each_device_trust_the_key_and_verify_the_signature_there(signed_fleet):
    devices, signer, release, result, *_ = signed_fleet
    from runtime.kit import TRUSTED

    assert result.returncode == 1  # the device that trusts another key
    assert f"ok     {label_of(devices['plain'])}: kit copied and installed, verify passed, signed by {signer}" \
        in result.stdout, result.stdout
    there = Path("/" + devices["plain"].split("/", 1)[1]) / TRUSTED
    assert there.read_text().split()[:2] == release.read_text().split()[:2]
    folder = "/" + devices["other_key"].split("/", 1)[1]
    assert (f"FAILED {label_of(devices['other_key'])}: the device trusts another signing key (ssh-ed25519 "
            in result.stdout), result.stdout
    assert f"in {folder}/{TRUSTED}, not {signer}: refused; remove that file there if the device is to trust the " \
           "new key" in result.stdout


def test_an_unsigned_bundle_is_refused_here_with_trust_and_by_a_device_that_trusts_a_key(signed_fleet):
    devices, _, release, _, refused_here, refused_there = signed_fleet
    assert refused_here.returncode == 2 and refused_here.stderr.strip() == (
        f"error: bundle dsc is not signed, and the key in {release} must have signed it: sign it where it was "
        "built (python -m export sign BUNDLE KEY)"), refused_here.stderr
    from runtime.kit import TRUSTED

    folder = "/" + devices["plain"].split("/", 1)[1]
    assert refused_there.returncode == 1
    assert (f"FAILED {label_of(devices['plain'])}: install failed: bundle dsc is not signed, and the key in "
            f"{folder}/{TRUSTED} must have signed it" in refused_there.stdout), refused_there.stdout
    releases = list(Path(folder).glob("releases/*/dsc-linux-x86_64"))
    assert len(releases) == 2 and [r.parent.name for r in releases if (r / "edge-runtime").exists()] == [
        os.readlink(Path(folder) / "current").split("/")[-1]]  # nothing of the unsigned release could run
