"""A fleet through Ansible: `export deploy --inventory`, `export rollback`, `export playbook`.

Six real OpenSSH servers on 127.0.0.1, each with its own port, user and folder, in two inventory groups.
Release A goes to all of them; release B (another build of dsc) follows in batches of two, stopping
once one device has failed: one device cannot meet its latency budget, so its batch is switched back
to A and the last batch is never reached. The playbook `export playbook` writes gives the same result
with the `ansible-playbook` a team runs itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.devices import SshServers

HOSTS = ("north1", "north2", "north3", "south1", "south2", "south3")


@pytest.fixture(scope="module")
def servers():
    s = SshServers()
    yield s
    s.stop()


def inventory(servers: SshServers, devices: dict[str, tuple[int, str, Path]], path: Path,
              budgets: dict[str, float] | None = None, away: bool = False) -> Path:
    """An Ansible YAML inventory of the devices in two groups; `budgets`: hosts' own latency budgets; with
    `away`, a third group of one device that does not answer (port 1)."""
    import yaml

    def host(name):
        port, user, folder = devices[name]
        return {"ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": user,
                "ansible_ssh_private_key_file": str(servers.client_key), "edge_export_path": str(folder),
                **({"edge_export_max_p90_ms": budgets[name]} if name in (budgets or {}) else {})}

    groups = {group: {"hosts": {name: host(name) for name in HOSTS if name.startswith(group)}}
              for group in ("north", "south")}
    if away:
        groups["away"] = {"hosts": {"away1": {"ansible_host": "127.0.0.1", "ansible_port": 1}}}
    path.write_text(yaml.safe_dump({"all": {"children": groups}}, sort_keys=False))  # away1 in the last batch
    return path


def export(*args: str, tmp: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *args], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "COLUMNS": "250", **({"TMPDIR": str(tmp)} if tmp else {})})


def current(devices, name: str) -> str | None:
    link = devices[name][2] / "current"
    return os.readlink(link).split("/")[-1] if link.is_symlink() else None


@pytest.fixture(scope="module")
def fleet(servers, tmp_path_factory):
    from export.fleet import _release_of
    from export.pipeline import BuildSettings, build
    from runtime.bundle import Bundle

    root = tmp_path_factory.mktemp("fleet")
    # releases A and B: dsc built twice with other golden inputs, ONNX Runtime alone (a smaller kit to install)
    first, second = (build(BuildSettings(variant="dsc", out=root / out, seed=seed, backends=("onnxruntime",),
                                         warmup=1, runs=5, tune_budget=0, memory=False)).bundle
                     for out, seed in (("a", 0), ("b", 1)))
    releases = {"a": _release_of(Bundle.open(first)), "b": _release_of(Bundle.open(second))}
    devices = {}
    for i, name in enumerate(HOSTS):
        user = servers.add_user(f"edge-fleet{i}")
        port = servers.start(user=user)
        servers.trust(port)
        devices[name] = (port, user, servers.device_folder(user))
    everyone = inventory(servers, devices, root / "hosts.yml", away=True)
    slow = inventory(servers, devices, root / "hosts-budget.yml", budgets={"north3": 0.001})  # no CPU meets it
    known = ("--known-hosts", str(servers.known_hosts))
    scratch = root / "tmp"  # the temporary folder of the rollouts, which they must leave as they found it
    scratch.mkdir()
    steps = {"a": export("deploy", str(first), "--inventory", str(everyone), "--serial", "3", *known, tmp=scratch)}
    steps["a_current"] = {n: current(devices, n) for n in HOSTS}
    steps["b"] = export("deploy", str(second), "--inventory", str(slow), "--serial", "2", "--max-fail", "1", *known,
                        tmp=scratch)
    steps["b_current"] = {n: current(devices, n) for n in HOSTS}
    steps["rollback"] = export("rollback", str(second), "--inventory", str(slow), "--limit", "north1,north2", *known,
                               tmp=scratch)
    steps["rollback_current"] = {n: current(devices, n) for n in HOSTS}
    steps["left_in_tmp"] = sorted(p.name for p in scratch.iterdir() if p.is_dir())
    book = root / "playbook"
    steps["playbook"] = export("playbook", str(second), "--out", str(book), "--target", "linux-x86_64")
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
           "ANSIBLE_SSH_EXTRA_ARGS": f"-o BatchMode=yes -o UserKnownHostsFile={servers.known_hosts}"}
    steps["ansible-playbook"] = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(slow), str(book / "deploy.yml"),
         "-e", "edge_export_serial=2", "-e", "edge_export_max_fail=1"], capture_output=True, text=True,
        timeout=1800, env=env)
    steps["playbook_current"] = {n: current(devices, n) for n in HOSTS}
    return steps, releases, devices, second, book


def test_release_a_reaches_every_device_of_both_groups_and_one_that_does_not_answer_is_named(fleet):
    steps, releases, _, second, _ = fleet
    done = steps["a"]
    assert done.returncode == 1, done.stdout + done.stderr  # away1
    assert steps["a_current"] == dict.fromkeys(HOSTS, releases["a"])
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["group", "installed", "already", "current", "failed", "its", "gate", "rolled",
                                "back", "unreachable", "not", "reached"]
    assert [line.split() for line in lines[2:5]] == [["away", "0", "0", "0", "0", "1", "0"],
                                                     ["north", "3", "0", "0", "0", "0", "0"],
                                                     ["south", "3", "0", "0", "0", "0", "0"]]
    away = next(line for line in lines if line.startswith("away1 "))
    assert "unreachable" in away and "port 1: Connection refused" in away, away
    assert "Traceback" not in done.stdout + done.stderr


def test_a_device_that_fails_its_gate_stops_the_rollout_and_its_batch_is_rolled_back(fleet):
    """--serial 2 --max-fail 1: north1 and north2 take B; north3 cannot meet its latency budget, so north3
    stays on A and south1, which had switched to B, is switched back; south2 and south3 are never reached."""
    steps, releases, devices, second, _ = fleet
    done = steps["b"]
    assert done.returncode == 1, done.stdout + done.stderr
    a, b = releases["a"], releases["b"]
    assert steps["b_current"] == {"north1": b, "north2": b, "north3": a, "south1": a, "south2": a, "south3": a}
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.split() and line.split()[0] in HOSTS}
    assert rows["north1"].split()[2:4] == ["installed", b]
    assert "failed its gate" in rows["north3"] and "the latency gate failed: p90 " in rows["north3"]
    assert "is over --max-p90-ms 0.001" in rows["north3"] and rows["north3"].split()[5] == a
    assert "rolled back" in rows["south1"] and "its batch was rolled back: the rollout stopped" in rows["south1"]
    for name in ("south2", "south3"):
        assert "not reached" in rows[name] and "the rollout stopped before its batch" in rows[name]
        assert not (devices[name][2] / "releases" / b).exists()  # untouched: nothing of B was copied there
    groups = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[2:4]}
    assert groups == {"north": ["2", "0", "1", "0", "0", "0"], "south": ["0", "0", "0", "1", "0", "2"]}
    record = json.loads((second / "devices" / "south1.json").read_text())
    assert record["state"] == "rolled back" and record["release"] == b and not record["ok"]
    # north1's record is the later rollback's; its figures from this rollout are kept as its last good ones
    record = json.loads((second / "devices" / "north1.json").read_text())
    assert record["state"] == "rolled back" and record["release"] == a
    assert record["last_good"]["verify"]["passed"] and record["last_good"]["release"] == b
    assert "## Devices" in (second / "report.md").read_text()


def test_rollback_switches_devices_back_to_their_previous_release(fleet):
    steps, releases, *_ = fleet
    done = steps["rollback"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert steps["rollback_current"] == dict.fromkeys(HOSTS, releases["a"])


def test_rollouts_and_rollbacks_leave_no_folder_in_the_temporary_folder(fleet):
    """Their work folders (kits, ansible-runner's private data, the inventory's reading) all go when they end."""
    assert fleet[0]["left_in_tmp"] == []


def test_the_generated_playbook_gives_the_same_result_with_ansible_playbook(fleet):
    steps, releases, _, _, book = fleet
    assert steps["playbook"].returncode == 0, steps["playbook"].stderr
    assert {p.name for p in book.iterdir()} >= {"deploy.yml", "rollback.yml", "edge-export.yml", "kits"}
    done = steps["ansible-playbook"]
    assert done.returncode != 0, done.stdout  # the rollout stopped, as through export deploy
    assert steps["playbook_current"] == steps["b_current"]
    states = {p.stem: json.loads(p.read_text())["state"] for p in (book / "results").glob("*.json")}
    assert states == {"north1": "installed", "north2": "installed", "north3": "failed its gate",
                      "south1": "rolled back"}


@pytest.fixture(scope="module")
def broken_fleet(servers, fleet, tmp_path_factory):
    """Release B, in one batch, to a device whose sshd has no SFTP subsystem and to each kind of broken one."""
    import yaml

    from tests.devices import USER, tools_without_python

    _, _, _, second, _ = fleet
    tools = tmp_path_factory.mktemp("tools")
    hosts = {}
    for name, kind in (("no_sftp", {"sftp": False}), ("no_python", {"path": str(tools_without_python(tools / "np"))}),
                       ("unknown_host", {}), ("wrong_key", {}), ("full_disk", {})):
        user = USER if name == "full_disk" else servers.add_user(f"edge-{name.replace('_', '')}")
        port = servers.start(user=user, **kind)
        if name != "unknown_host":
            servers.trust(port)
        folder = servers.small_disk() if name == "full_disk" else servers.device_folder(user)
        key = servers.stranger_key if name == "wrong_key" else servers.client_key
        hosts[name] = {"ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": user,
                       "ansible_ssh_private_key_file": str(key), "edge_export_path": str(folder)}
    inventory_file = tmp_path_factory.mktemp("broken") / "hosts.yml"
    inventory_file.write_text(yaml.safe_dump({"all": {"children": {"odd": {"hosts": hosts}}}}))
    done = export("deploy", str(second), "--inventory", str(inventory_file), "--serial", "100%", "--max-fail", "100%",
                  "--known-hosts", str(servers.known_hosts))
    return done, hosts


@pytest.mark.parametrize("device, state, reason", [
    ("no_sftp", "installed", ""),
    ("no_python", "failed its gate", "no python3 on the device's PATH (for a non-interactive login)"),
    ("unknown_host", "unreachable", "the host key of unknown_host is not known: check its fingerprint and add it to "
                                    "known_hosts (ssh-keyscan), or pass --accept-new-host-key"),
    ("wrong_key", "unreachable", "wrong_key refused the login of the inventory's user ("),
    ("full_disk", "failed its gate", "not enough disk at /tmp/edge-device-"),
])
def test_each_broken_device_of_a_fleet_gets_its_reason_and_the_others_go_on(broken_fleet, device, state, reason):
    done, hosts = broken_fleet
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith(device + " "))
    assert row.split(maxsplit=2)[2].startswith(state) and reason in row, row
    groups = next(line for line in done.stdout.splitlines() if line.startswith("odd "))
    assert groups.split() == ["odd", "1", "0", "2", "0", "2", "0"], groups


@pytest.mark.parametrize("args, message", [
    (["--inventory", "{tmp}/hosts.yml", "--serial", "0"], "error: --serial '0' is not a number of devices (1 or "
                                                           "more) or a percentage of them (1% to 100%), e.g. 2 or 10%"),
    (["--inventory", "{tmp}/hosts.yml", "--max-fail", "150%"], "error: --max-fail '150%' is not a number of devices"),
    (["--inventory", "{tmp}/none.yml"], "error: --inventory '{tmp}/none.yml' is not a file; pass an Ansible "
                                        "inventory (YAML or INI)"),
    (["--inventory", "{tmp}/hosts.yml", "--to", "pi@board"], "error: --inventory deploys to the inventory's hosts: "
                                                              "drop --to and --forget"),
    (["--inventory", "{tmp}/hosts.yml", "--limit", "nowhere"], "error: --inventory '{tmp}/hosts.yml' names no host in "
                                                                "--limit nowhere"),
])
def test_bad_fleet_arguments_are_refused_in_one_line_before_any_connection(built, tmp_path, args, message):
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    board1:\n      ansible_host: 127.0.0.1\n")
    done = export("deploy", str(built("dsc").bundle), *[a.format(tmp=tmp_path) for a in args])
    text = (done.stdout + done.stderr).strip()
    assert done.returncode == 2 and len(text.splitlines()) == 1, text
    assert text.startswith(message.format(tmp=tmp_path)), text


def test_a_device_named_with_to_rolls_back_as_a_one_line_inventory(fleet, servers):
    """`rollback --to user@host:port/path`: the same play as a fleet's, for the device named."""
    steps, releases, devices, second, _ = fleet
    port, user, folder = devices["north1"]
    before = current(devices, "north1")
    done = export("rollback", str(second), "--to", f"{user}@127.0.0.1:{port}{folder}", "--identity",
                  str(servers.client_key), "--known-hosts", str(servers.known_hosts))
    assert done.returncode == 0, done.stdout + done.stderr
    after = current(devices, "north1")
    assert {before, after} == {releases["a"], releases["b"]}
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"{user}@127.0.0.1:{port} "))
    assert "rolled back" in row and after in row, row
    assert json.loads((second / "devices" / f"{user}@127.0.0.1-{port}.json").read_text())["release"] == after
