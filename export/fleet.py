"""A fleet through Ansible: `export deploy BUNDLE --inventory hosts.yml`, `export rollback`, `export playbook`.

Teams that run edge fleets already have an engine for reaching hundreds of boards: Ansible (inventories,
groups, per-host users, ports, keys and jump hosts, forks, batches). edge-export runs on it rather than
growing its own. It drives ansible-core through ansible-runner, Ansible's supported Python interface
(AWX runs on it): each run's events and per-host results come back as data, with no parsing of
Ansible's output and no import of ansible-core's internal API, which is not public. The steps are one
playbook, the same file `export playbook` writes for a team to run with its own `ansible-playbook`,
vault and inventory, so the two cannot drift apart.

The rollout, per device, in batches (`--serial`):

1. look at it (architecture, Python, home) with `raw`: no Python needed to be told it has none;
2. copy the kit for its platform, unless that release is already there (Ansible's smart transfer tries
   SFTP, then SCP with `-O`, then a pipe, so a server without an SFTP subsystem still receives it);
3. with `--trust`, make it trust the signing key (PATH/trusted.pub), refusing a device that trusts another;
4. `install.sh --release` there (`runtime.kit.release`): the kit unpacked under
   PATH/releases/<digest>/, installed offline, held to the health gate (verify, with the trusted key
   where there is one; the latency budget `--max-p90-ms` or the host variable `edge_export_max_p90_ms`),
   and only then made PATH/current by one rename, PATH/previous keeping the release it replaced;
5. after each batch: once `--max-fail` devices (a number, or a percentage of all the devices the
   rollout targets) have failed (a gate, or unreachable; counted over the rollout), every device of the
   batch that switched is switched back to its previous release and the rollout stops; devices not
   yet reached are not touched.

`export rollback --inventory` switches each device back to its previous release. The results of every
run land in BUNDLE/devices/<host>.json and report.md's devices section, as `export deploy --to` leaves
them, with the release each device runs and why.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from runtime.bundle import Bundle
from runtime.cli import format_table
from runtime.errors import UserError
from runtime.kit import KIT, TRUSTED, version_tuple

from .deploy import UNPACKED, Device, DeviceResult, _report, file_stem, ssh_failure, trusted_signer, write_record
from .pack import TARGETS, archive_member, open_checked, pack_kit

PLAYBOOK = "deploy.yml"
ROLLBACK = "rollback.yml"
SETTINGS = "edge-export.yml"  # the bundle's variables for the playbooks: kits, digest, name
PATH = "(edge_export_path | default('edge-export'))"  # the device's folder, as the inventory gives it
ROOT = "{{ " + PATH + " }}"
BATCH = re.compile(r"(\d+)(%?)")


def check_count(text: str, option: str) -> str:
    """A number of devices (at least 1) or a percentage (1% to 100%), as Ansible's `serial` takes them."""
    m = BATCH.fullmatch(str(text).strip())
    if not m or int(m[1]) < 1 or (m[2] and int(m[1]) > 100):
        raise UserError(f"{option} {text!r} is not a number of devices (1 or more) or a percentage of them "
                        "(1% to 100%), e.g. 2 or 10%")
    return m[0]


def _q(text: str) -> str:
    """A value for a shell command inside a Jinja template: single-quoted with Ansible's `quote`."""
    return "{{ " + text + " | quote }}"


def rollout_play(name: str) -> list[dict[str, Any]]:
    """The rollout play (see the module's docstring); its variables come from SETTINGS and extra vars."""
    result = "edge_export_result"
    failed_so_far = ("(ansible_play_hosts_all | difference(ansible_play_hosts) | length) + (ansible_play_batch | "
                     "map('extract', hostvars, ['edge_export_result', 'healthy']) | reject | list | length)")
    limit = ("((edge_export_max_fail | string)[:-1] | int * ansible_play_hosts_all | length / 100) | round(0, 'ceil') "
             "| int if (edge_export_max_fail | string).endswith('%') else edge_export_max_fail | int")
    unset = f"{result}.reason == ''"
    return [{
        "name": f"edge-export: roll out {name} (release {{{{ edge_export_digest[:12] }}}})",
        "hosts": "all",
        "gather_facts": False,
        "serial": "{{ edge_export_serial | default(1) }}",
        "vars_files": [SETTINGS],
        # OpenSSH >= 9's scp speaks SFTP unless told -O; modules go through ssh's stdin (pipelining), so
        # that only the kit itself needs a file transfer
        "vars": {"ansible_scp_extra_args": "-O", "ansible_pipelining": True},
        "tasks": [
            {"name": "the results folder, here", "delegate_to": "localhost", "run_once": True, "changed_when": False,
             "ansible.builtin.file": {"path": "{{ edge_export_results }}", "state": "directory"}},
            {"name": "look at the device", "register": "edge_export_probe", "changed_when": False,
             "ansible.builtin.raw": "uname -m; if command -v python3 >/dev/null 2>&1; then python3 -c 'import sys; "
                                    "print(\"%d.%d\" % sys.version_info[:2])'; else echo none; fi; echo \"$HOME\"; "
                                    "getconf GNU_LIBC_VERSION 2>/dev/null || echo none"},
            {"name": "the platform", "ansible.builtin.set_fact": {
                "edge_export_platform": "{{ edge_export_probe.stdout_lines[0] | trim }}-"
                                        "{{ edge_export_probe.stdout_lines[1] | trim }}",
                "edge_export_root": f"{{{{ {PATH} if {PATH}.startswith('/') else "
                                    f"(edge_export_probe.stdout_lines[2] | trim) ~ '/' ~ {PATH} }}}}",
                "edge_export_python": "{{ edge_export_probe.stdout_lines[1] | trim }}",
                "edge_export_glibc": "{{ (edge_export_probe.stdout_lines[3] | default('none')).split() | last }}"}},
            {"name": "the release, and what stands in its way", "ansible.builtin.set_fact": {
                result: {"release": "{{ edge_export_digest }}", "healthy": False, "switched": False,
                         "target": "{{ edge_export_kit_targets[edge_export_platform] | default('') }}",
                         "reason": "{{ \"no python3 on the device's PATH (for a non-interactive login); install "
                                   "Python 3 there (Debian, Ubuntu, Raspberry Pi OS: apt install python3)\" if "
                                   "edge_export_python == 'none' else 'the device runs Python ' ~ edge_export_python "
                                   "~ '; the runtime needs 3.10 or newer' if edge_export_python is version('3.10', '<') "
                                   "else 'no kit for ' ~ edge_export_platform ~ ' (the machine and its Python); this "
                                   "run packed for ' ~ (edge_export_kits.keys() | join(', ')) if edge_export_platform "
                                   "not in edge_export_kits else 'the device has ' ~ ('no glibc' if edge_export_glibc "
                                   "== 'none' else 'glibc ' ~ edge_export_glibc) ~ \", the kit's wheels need glibc \" "
                                   "~ edge_export_kit_glibc[edge_export_platform] ~ ' or newer: pack for it with "
                                   "--glibc ' ~ (edge_export_glibc | replace('none', '...')) ~ ' (fewer backends may "
                                   "have wheels that old)' if edge_export_glibc == 'none' or edge_export_glibc is "
                                   "version(edge_export_kit_glibc[edge_export_platform], '<') else '' }}"}}},
            {"name": "copy, install, gate and switch", "block": [
                {"name": "is this release there already", "when": unset, "register": "edge_export_there",
                 "changed_when": False, "failed_when": False,
                 "ansible.builtin.shell": f"mkdir -p {_q('edge_export_root')}/releases && "
                                          "{{ 'false' if edge_export_force | bool else 'test -x' }} "
                                          f"{_q('edge_export_root')}/releases/{_q('edge_export_digest')}/"
                                          f"{_q('edge_export_kit_dirs[edge_export_platform]')}/edge-runtime"},
                {"name": "free disk", "when": f"{unset} and edge_export_there.rc != 0", "register": "edge_export_disk",
             "changed_when": False,
             "ansible.builtin.shell": f"df -Pk {_q('edge_export_root')}/releases | tail -n 1"},
            {"name": "a device without the room for the release is refused",
             "when": f"{unset} and edge_export_there.rc != 0 and (edge_export_disk.stdout.split()[3] | int) * 1024 < "
                     "edge_export_kit_bytes[edge_export_platform] * " + str(UNPACKED),
             "ansible.builtin.set_fact": {result: f"{{{{ {result} | combine({{'reason': 'not enough disk at ' ~ "
                                                  "edge_export_root ~ ': ' ~ ((edge_export_disk.stdout.split()[3] | int) "
                                                  "// 1000) ~ ' MB free, the release needs about ' ~ "
                                                  "((edge_export_kit_bytes[edge_export_platform] * " + str(UNPACKED) +
                                                  ") // 1000000) | int ~ ' MB'}) }}"}},
            {"name": "copy the kit", "when": f"{unset} and edge_export_there.rc != 0",
                 "ansible.builtin.copy": {"src": "{{ edge_export_kits[edge_export_platform] }}",
                                          "dest": "{{ edge_export_root }}/releases/{{ edge_export_digest }}.tar.gz",
                                          "mode": "0644"}},
                {"name": "unpack it as the release", "when": f"{unset} and edge_export_there.rc != 0",
                 "ansible.builtin.shell": f"cd {_q('edge_export_root')}/releases && rm -rf {_q('edge_export_digest')} && "
                                          f"mkdir {_q('edge_export_digest')} && tar -xzf {_q('edge_export_digest')}.tar.gz "
                                          f"-C {_q('edge_export_digest')} && rm -f {_q('edge_export_digest')}.tar.gz"},
                {"name": "trust the signing key", "when": f"{unset} and edge_export_trust_key is defined",
                 "register": "edge_export_trusted", "changed_when": False,
                 "ansible.builtin.shell": f"f={_q('edge_export_root')}/{TRUSTED}; [ -f \"$f\" ] || printf '%s\\n' "
                                          f"{_q('edge_export_trust_key')} > \"$f\"; cat \"$f\""},
                {"name": "a device that trusts another key is refused",
                 "when": f"{unset} and edge_export_trust_key is defined and "
                         "(edge_export_trusted.stdout.split()[:2] | join(' ')) != edge_export_trust_key",
                 "ansible.builtin.set_fact": {result: f"{{{{ {result} | combine({{'reason': 'the device trusts another "
                                                      "signing key (' ~ edge_export_trusted.stdout[:40] ~ '...) in ' "
                                                      f"~ edge_export_root ~ '/{TRUSTED}, not ' ~ "
                                                      "edge_export_trust_fingerprint ~ ': refused; remove that file "
                                                      "there if the device is to trust the new key'}) }}"}},
                {"name": "install, gate and switch", "when": unset, "register": "edge_export_gate", "changed_when": False,
                 "failed_when": False,
                 "ansible.builtin.shell": f"sh {_q('edge_export_root')}/releases/{_q('edge_export_digest')}/"
                                          f"{_q('edge_export_kit_dirs[edge_export_platform]')}/install.sh --release"
                                          "{{ ' --bench' if edge_export_bench | bool else '' }}"
                                          "{{ (' --max-p90-ms ' ~ (edge_export_max_p90_ms | default("
                                          "edge_export_fleet_max_p90_ms))) if edge_export_max_p90_ms is defined or "
                                          "edge_export_fleet_max_p90_ms is defined else '' }}"},
                {"name": "what the gate found", "when": unset, "ansible.builtin.set_fact": {
                    result: f"{{{{ {result} | combine(edge_export_gate.stdout | from_json) if "
                            "edge_export_gate.stdout.startswith('{') else "
                            f"{result} | combine({{'reason': 'install.sh failed: ' ~ ((edge_export_gate.stderr or "
                            "edge_export_gate.stdout).splitlines() | last | default('no output'))}) }}"}},
            ], "rescue": [  # a step that failed (no disk left, a copy cut off): its message is the reason
                {"name": "why the device failed", "ansible.builtin.set_fact": {
                    result: f"{{{{ {result} | combine({{'reason': NO_TRANSFER ~ (ansible_failed_result.msg.strip()"
                            ".splitlines() | last) if 'failed to transfer file' in (ansible_failed_result.msg | "
                            "default('')) else (ansible_failed_task.name ~ ' failed: ' ~ "
                            "(ansible_failed_result.msg | default('no message'))) | trim}) }}"
                            .replace("NO_TRANSFER", repr(NO_TRANSFER))}}]},
            {"name": "how many devices have failed", "ansible.builtin.set_fact": {
                "edge_export_stop": f"{{{{ ({failed_so_far}) >= ({limit}) }}}}"}},
            {"name": "roll the batch back", "when": f"edge_export_stop and {result}.switched",
             "register": "edge_export_rollback", "changed_when": True,
             "ansible.builtin.shell": f"cd {_q('edge_export_root')} && python3 -c \"" + _SWAP + "\""},
            {"name": "record the result", "delegate_to": "localhost", "ansible.builtin.copy": {
                "dest": "{{ edge_export_results }}/{{ inventory_hostname }}.json", "mode": "0644",
                "content": f"{{{{ {result} | combine({{'copied': (edge_export_there.rc | default(0)) != 0, "
                           f"'state': 'failed its gate' if not {result}.healthy else "
                           f"'rolled back' if edge_export_stop and {result}.switched else 'stopped, untouched' "
                           f"if edge_export_stop else 'installed' if {result}.switched else 'already current', "
                           "'stopped': edge_export_stop}) | to_json }}"}},
            {"name": "the rollout stops here", "when": "edge_export_stop",
             "ansible.builtin.fail": {"msg": "{{ edge_export_result.reason or 'its batch was rolled back: '"
                                             " ~ 'the rollout stopped after it' }}"}},
            {"name": "a device that failed its gate", "when": f"not {result}.healthy",
             "ansible.builtin.fail": {"msg": f"{{{{ {result}.reason }}}}"}},
        ]}]


NO_TRANSFER = ("copying the kit failed: SFTP, the original SCP protocol (scp -O) and a pipe through dd all failed "
               "(a server without an SFTP subsystem, as Dropbear has none, needs scp or dd on the device; or add "
               "`Subsystem sftp` to its sshd_config): ")

# switch PATH/current and PATH/previous (each by one rename); print what current is after
_SWAP = ("import os; c = os.readlink('current') if os.path.islink('current') else None; "
         "p = os.readlink('previous') if os.path.islink('previous') else None; "
         "[os.remove(n) for n in ('current.new', 'previous.new') if os.path.lexists(n)]; "
         "p and os.symlink(p, 'current.new'); p and os.replace('current.new', 'current'); "
         "p is None and c and os.remove('current'); c and os.symlink(c, 'previous.new'); "
         "c and os.replace('previous.new', 'previous'); print(p or '')")


def rollback_play() -> list[dict[str, Any]]:
    return [{
        "name": "edge-export: back to each device's previous release", "hosts": "all", "gather_facts": False,
        "tasks": [
            {"name": "switch current and previous", "register": "edge_export_swap",
             "ansible.builtin.raw": f"cd {ROOT} && python3 -c \"" + _SWAP + "\""},
            {"name": "record the result", "delegate_to": "localhost", "ansible.builtin.copy": {
                "dest": "{{ edge_export_results }}/{{ inventory_hostname }}.json", "mode": "0644",
                "content": "{{ {'state': 'rolled back' if edge_export_swap.stdout | trim else 'no previous release, "
                           "none is current', 'release': edge_export_swap.stdout | trim | basename, 'running': "
                           "edge_export_swap.stdout | trim | basename, 'healthy': true, 'switched': true, 'reason': "
                           "'switched back to its previous release (export rollback)' if edge_export_swap.stdout | "
                           "trim else ''} | to_json }}"}},
        ]}]


def _yaml(data: Any) -> str:
    import yaml

    return "# written by python -m export playbook; see edge-export's docs/board.md\n" + yaml.safe_dump(
        data, sort_keys=False, width=120, allow_unicode=True)


@dataclass
class Kits:
    """The kits a playbook installs, by platform (`<machine>-<python>`): their archives, folders' names,
    targets and glibc floors (the oldest glibc on which a kit installs a backend)."""
    files: dict[str, Path]
    dirs: dict[str, str]
    targets: dict[str, str]
    glibc: dict[str, str]
    digest: str


def pack_kits(bundle: Bundle, platforms: set[tuple[str, str]], folder: Path) -> Kits:
    """The bundle's kit for each (target, python), packed into `folder`."""
    files, dirs, targets, glibc = {}, {}, {}, {}
    for target, python in sorted(platforms):
        archive = pack_kit(bundle.path, target, folder / f"{target}-{python}", python=python)
        key = f"{TARGETS[target].machine}-{python}"
        files[key], dirs[key], targets[key] = archive, archive.name.removesuffix(".tar.gz"), target
        glibc[key] = json.loads(archive_member(archive, f"{dirs[key]}/{KIT}"))["glibc"]
    return Kits(files, dirs, targets, glibc, _release_of(bundle))


def _release_of(bundle: Bundle) -> str:
    """The release's name on the devices: the digest of the bundle's model files and manifest entries
    that a device runs (what `runtime.signing` signs) and of its signature, if it has one, so the same
    bundle is the same release everywhere, and its signed and unsigned copies are two releases."""
    import hashlib

    from runtime.bundle import SIGNATURE
    from runtime.signing import statement

    signature = bundle.path / SIGNATURE
    return hashlib.sha256(statement(bundle.manifest) + (signature.read_bytes() if signature.is_file() else b"")
                          ).hexdigest()[:16]


def write_playbooks(bundle: Bundle, kits: Kits, folder: Path) -> Path:
    """deploy.yml, rollback.yml and edge-export.yml (the kits, relative to the folder) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"edge_export_bundle": bundle.name, "edge_export_digest": kits.digest,
                "edge_export_kits": {k: "{{ playbook_dir }}/" + Path(p).relative_to(folder).as_posix()
                                     for k, p in kits.files.items()},
                "edge_export_kit_dirs": kits.dirs, "edge_export_kit_targets": kits.targets,
                "edge_export_kit_glibc": kits.glibc,
                "edge_export_kit_bytes": {k: Path(p).stat().st_size for k, p in kits.files.items()},
                "edge_export_serial": 1, "edge_export_max_fail": 1, "edge_export_force": False,
                "edge_export_bench": False, "edge_export_results": "{{ playbook_dir }}/results"}
    (folder / SETTINGS).write_text(_yaml(settings))
    (folder / PLAYBOOK).write_text(_yaml(rollout_play(bundle.name)))
    (folder / ROLLBACK).write_text(_yaml(rollback_play()))
    return folder / PLAYBOOK


def _ansible():
    """ansible_runner, with the ansible-* commands installed beside this Python on the PATH it searches."""
    import os

    try:
        import ansible_runner
    except ImportError:
        raise UserError("deploy runs on Ansible, not installed here: pip install 'edge-export[export]' (it holds "
                        "ansible-core and ansible-runner)") from None
    here = str(Path(sys.executable).parent)  # a virtual environment's bin/, called without activating it
    if here not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
    return ansible_runner


def inventory_hosts(inventory: Path, limit: str | None) -> dict[str, list[str]]:
    """Each host the inventory (and `--limit`) names, with its groups; a UserError for an unreadable one."""
    runner = _ansible()
    if not Path(inventory).is_file():
        raise UserError(f"--inventory {str(inventory)!r} is not a file; pass an Ansible inventory (YAML or INI)")
    with tempfile.TemporaryDirectory(prefix="edge-export-inventory-") as tmp:  # else ansible-runner leaves one
        out, err = runner.get_inventory(action="list", inventories=[str(Path(inventory).resolve())],
                                        response_format="json", quiet=True, private_data_dir=tmp)
    if not isinstance(out, dict):
        raise UserError(f"--inventory {str(inventory)!r} could not be read by Ansible: "
                        f"{(str(err or out).strip().splitlines() or ['no output'])[-1]}")
    groups: dict[str, list[str]] = {}
    for group, entry in out.items():
        if group in ("_meta", "all") or not isinstance(entry, dict):
            continue
        for host in entry.get("hosts", []):
            groups.setdefault(host, []).append(group)
    for host in out.get("_meta", {}).get("hostvars", {}):
        groups.setdefault(host, ["ungrouped"])
    if limit:
        wanted = set(re.split(r"[,:]", limit))
        groups = {h: g for h, g in groups.items() if h in wanted or wanted & set(g)}
    if not groups:
        raise UserError(f"--inventory {str(inventory)!r} names no host" + (f" in --limit {limit}" if limit else ""))
    return groups


@dataclass
class FleetRun:
    hosts: dict[str, list[str]]  # host -> its groups
    results: dict[str, dict[str, Any]]  # host -> what happened there
    unreachable: dict[str, str]  # host -> why
    names: "Names" = field(default_factory=lambda: INVENTORY_NAMES)  # how tables name its hosts


@dataclass(frozen=True)
class Names:
    """How a run names its hosts: as the inventory does, or (`--to`) by the device each line of it is."""
    labels: dict[str, str]  # inventory host -> the device's name in tables and records
    ssh: dict[str, tuple[str, str]]  # inventory host -> (its address, its login) in ssh's failure lines

    def label(self, host: str) -> str:
        return self.labels.get(host, host)

    def failure(self, message: str, host: str) -> str:
        message = re.sub(r"^(Task failed: )?(Failed to connect to the host via ssh: )?", "", message)
        return ssh_failure(message, *self.ssh.get(host, (host, "the inventory's user")))


INVENTORY_NAMES = Names({}, {})


def _env(identity: Path | None, known_hosts: Path | None, accept_new_host_key: bool) -> dict[str, str]:
    """Ansible's SSH settings as the environment gives them: a host's inventory variables still win."""
    args = ["-o BatchMode=yes", f"-o StrictHostKeyChecking={'accept-new' if accept_new_host_key else 'yes'}"]
    if known_hosts is not None:
        args.append(f"-o UserKnownHostsFile={known_hosts}")
    if identity is not None:
        args.append("-o IdentitiesOnly=yes")  # that key alone, not an agent's
    env = {"ANSIBLE_SSH_EXTRA_ARGS": " ".join(args), "ANSIBLE_HOST_KEY_CHECKING": "True",
           "ANSIBLE_PYTHON_INTERPRETER": "auto_silent", "ANSIBLE_TIMEOUT": "10", "ANSIBLE_RETRY_FILES_ENABLED": "False",
           "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_NOCOLOR": "1"}
    if identity is not None:
        env["ANSIBLE_PRIVATE_KEY_FILE"] = str(identity)
    return env


def _own_connections(env: dict[str, str], folder: Path) -> dict[str, str]:
    """`env` with ssh's shared connections kept in this run's folder: reused by the run's steps, never by
    a later run, which logs in (and checks the host key) with its own settings."""
    return {**env, "ANSIBLE_SSH_CONTROL_PATH_DIR": str(folder / "cp")}


def _unreachable_of(events, names: Names) -> dict[str, str]:
    """Each host Ansible could not reach, with ssh's reason in one line."""
    found = {}
    for event in events:
        if event.get("event") == "runner_on_unreachable":
            data = event["event_data"]
            found[data["host"]] = names.failure(data.get("res", {}).get("msg") or "unreachable", data["host"])
    return found


def run_play(folder: Path, playbook: str, inventory: Path, limit: str | None, forks: int | None,
             extravars: dict[str, Any], env: dict[str, str],
             names: Names = INVENTORY_NAMES) -> tuple[dict[str, dict], dict[str, str]]:
    """Run one of the playbooks in `folder` through ansible-runner; (results by host, unreachable hosts)."""
    runner = _ansible()
    results = folder / "results"
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir()
    (folder / "runner").mkdir(exist_ok=True)
    done = runner.run(private_data_dir=str(folder / "runner"), project_dir=str(folder), playbook=playbook,
                      inventory=str(Path(inventory).resolve()), limit=limit, forks=forks, quiet=True,
                      extravars={**extravars, "edge_export_results": str(results)},
                      envvars=_own_connections(env, folder))
    found = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}
    unreachable = _unreachable_of(done.events, names)
    if done.rc != 0 and not found and not unreachable:  # the play itself failed, before any device
        errors = [line.strip() for line in done.stdout.read().splitlines() if "ERROR" in line or "fatal" in line]
        raise UserError(f"Ansible could not run {playbook}: {(errors or ['exit code ' + str(done.rc)])[-1]}")
    return found, unreachable


def _record(bundle: Bundle, run: FleetRun, at: str, names: Names) -> list[DeviceResult]:
    """devices/<host>.json for every host the run reached or could not reach, and report.md's section;
    those records, as written (a run with no figures holds the device's last good ones)."""
    written = []
    for host in run.hosts:
        found = run.results.get(host)
        if found is None and host not in run.unreachable:
            continue  # not reached: the rollout stopped before its batch; its record stays as it was
        if found is None:
            result = DeviceResult(names.label(host), reason=run.unreachable[host], at=at, state="unreachable")
        else:
            doctor = found.get("doctor") or {}
            result = DeviceResult(names.label(host), ok=bool(found.get("healthy")) and not found.get("stopped"),
                                  reason=found.get("reason") or "", at=at, target=found.get("target", ""),
                                  copied=bool(found.get("copied")), machine=doctor.get("machine", {}),
                                  verify=found.get("verify") or {}, bench=found.get("bench") or {}, doctor=doctor,
                                  release=found.get("release", ""), state=found.get("state", ""))
        write_record(bundle, file_stem(host), result)
        written.append(result)
    _report(bundle)
    return written


def deploy_fleet(bundle_dir: str | Path, inventory: Path, limit: str | None = None, serial: str = "1",
                 max_fail: str = "1", forks: int | None = None, max_p90_ms: float | None = None,
                 trust: Path | None = None, identity: Path | None = None, known_hosts: Path | None = None,
                 accept_new_host_key: bool = False, bench: bool = False, force: bool = False,
                 names: Names = INVENTORY_NAMES) -> tuple[FleetRun, list[DeviceResult]]:
    """Roll the bundle out to the inventory's devices in batches (see the module's docstring); the run,
    and the records it wrote. With `bench`, every artifact is timed on each device that passes its gate;
    with `force`, the kit is copied and installed again where its release is already there."""
    serial, max_fail = check_count(serial, "--serial"), check_count(max_fail, "--max-fail")
    if identity is not None and not Path(identity).is_file():
        raise UserError(f"--identity {str(identity)!r} is not a file; expected an SSH private key")
    bundle = open_checked(bundle_dir, "rebuild it before deploying")
    extravars: dict[str, Any] = {"edge_export_serial": serial, "edge_export_max_fail": max_fail,
                                 "edge_export_bench": bench, "edge_export_force": force}
    if trust is not None:
        extravars["edge_export_trust_key"], extravars["edge_export_trust_fingerprint"] = trusted_signer(bundle, trust)
    if max_p90_ms is not None:
        extravars["edge_export_fleet_max_p90_ms"] = max_p90_ms  # a host's edge_export_max_p90_ms wins
    hosts = inventory_hosts(inventory, limit)
    env = _env(identity, known_hosts, accept_new_host_key)
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="edge-export-fleet-") as tmp:
        folder = Path(tmp)
        platforms = _platforms(folder, inventory, limit, forks, env, names)
        unreachable = {h: why for h, why in platforms.items() if why.startswith("unreachable: ")}
        wanted = {_target_python(p) for p in platforms.values() if not p.startswith("unreachable: ")}
        kits = pack_kits(bundle, {w for w in wanted if w is not None}, folder / "kits")
        write_playbooks(bundle, kits, folder)
        results, more = run_play(folder, PLAYBOOK, inventory, limit, forks, extravars, env, names)
    run = FleetRun(hosts, results, {**{h: w.removeprefix("unreachable: ") for h, w in unreachable.items()}, **more},
                   names)
    return run, _record(bundle, run, at, names)


def deploy_to(bundle_dir: str | Path, to: Sequence[str], **options) -> tuple[FleetRun, list[DeviceResult]]:
    """`--to user@host[:port][/path]`, each a line of an inventory: the same rollout, all the devices in
    one batch (unless `serial` says otherwise), none stopping the others (unless `max_fail` does)."""
    options.setdefault("serial", str(len(to)))
    options.setdefault("max_fail", "100%")
    with one_line_inventory(to) as (inventory, names):
        return deploy_fleet(bundle_dir, inventory, names=names, **options)


@contextmanager
def one_line_inventory(to: Sequence[str]) -> Iterator[tuple[Path, Names]]:
    """An inventory of the devices `--to` names (a line each, named by their records' stems), while in use."""
    import yaml

    devices = [Device.parse(t) for t in to]
    if len({d.stem for d in devices}) < len(devices):
        raise UserError("--to names the same device twice; give each device once")
    hosts = {d.stem: {"ansible_host": d.host, **({"ansible_port": d.port} if d.port else {}),
                      **({"ansible_user": d.user} if d.user else {}), "edge_export_path": d.path} for d in devices}
    names = Names({d.stem: d.label for d in devices},
                  {d.stem: (d.host + (f" port {d.port}" if d.port else ""), d.login) for d in devices})
    with tempfile.TemporaryDirectory(prefix="edge-export-to-") as tmp:
        inventory = Path(tmp) / "hosts.yml"
        inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
        yield inventory, names


def _platforms(folder: Path, inventory: Path, limit: str | None, forks: int | None,
               env: dict[str, str], names: Names) -> dict[str, str]:
    """Each reachable host's `<machine> <python>` (so that only the kits needed are packed), or
    "unreachable: why"."""
    runner = _ansible()
    (folder / "probe").mkdir()
    done = runner.run(private_data_dir=str(folder / "probe"), host_pattern=limit or "all", module="ansible.builtin.raw",
                      module_args="uname -m; python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' "
                                  "2>/dev/null || echo none", inventory=str(Path(inventory).resolve()), forks=forks,
                      quiet=True, envvars=_own_connections(env, folder))
    found = {}
    for event in done.events:
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_ok":
            found[data["host"]] = " ".join(data["res"].get("stdout", "").split())
        elif event.get("event") in ("runner_on_unreachable", "runner_on_failed"):
            found[data["host"]] = "unreachable: " + names.failure(data.get("res", {}).get("msg") or "no answer",
                                                                  data["host"])
    return found


def _target_python(probe: str) -> tuple[str, str] | None:
    machine, _, python = probe.partition(" ")
    target = next((name for name, t in TARGETS.items() if t.machine == machine), None)
    runs = re.fullmatch(r"3\.\d+", python) and version_tuple(python) >= (3, 10)  # the runtime needs 3.10
    return (target, python) if target and runs else None


def rollback_fleet(bundle_dir: str | Path, inventory: Path | None, limit: str | None = None,
                   forks: int | None = None, identity: Path | None = None, known_hosts: Path | None = None,
                   accept_new_host_key: bool = False, to: Sequence[str] = ()) -> FleetRun:
    """Switch each device of the inventory (or those `to` names) back to its previous release."""
    if inventory is None:
        with one_line_inventory(to) as (written, names):
            return _rollback(bundle_dir, written, None, forks, _env(identity, known_hosts, accept_new_host_key), names)
    return _rollback(bundle_dir, inventory, limit, forks, _env(identity, known_hosts, accept_new_host_key),
                     INVENTORY_NAMES)


def _rollback(bundle_dir: str | Path, inventory: Path, limit: str | None, forks: int | None, env: dict[str, str],
              names: Names) -> FleetRun:
    bundle = Bundle.open(bundle_dir)
    hosts = inventory_hosts(inventory, limit)
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="edge-export-fleet-") as tmp:
        folder = Path(tmp)
        (folder / ROLLBACK).write_text(_yaml(rollback_play()))
        results, unreachable = run_play(folder, ROLLBACK, inventory, limit, forks, {}, env, names)
    run = FleetRun(hosts, results, unreachable, names)
    _record(bundle, run, at, names)
    return run


def playbook(bundle_dir: str | Path, out: Path, targets: list[str], python: str | None) -> Path:
    """The playbooks, their settings and the kits for `targets`, into `out`, for a team's own ansible-playbook."""
    bundle = Bundle.open(bundle_dir)
    python = python or "%d.%d" % sys.version_info[:2]
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty; give a new folder for the playbook and its kits")
    kits = pack_kits(bundle, {(t, python) for t in targets}, out / "kits")
    return write_playbooks(bundle, kits, out)


STATES = ("installed", "already current", "failed its gate", "rolled back", "unreachable", "not reached")


def fleet_table(run: FleetRun) -> tuple[str, str]:
    """(Per group: how many devices ended in each state; per device: its state, the release it runs, why.)"""
    def state(host: str) -> str:
        if host in run.unreachable:
            return "unreachable"
        found = run.results.get(host)
        if found is None:
            return "not reached"
        return "failed its gate" if found.get("state") == "stopped, untouched" else found["state"]

    groups = sorted({g for gs in run.hosts.values() for g in gs})
    counts = [[g, *(str(sum(1 for h, gs in run.hosts.items() if g in gs and state(h) == s)) for s in STATES)]
              for g in groups]
    devices = []
    for host, gs in run.hosts.items():
        found = run.results.get(host, {})
        running = found.get("running") or (found.get("release") if found.get("state") in (
            "installed", "already current") else found.get("previous") or "") if found else ""
        why = run.unreachable.get(host) or found.get("reason") or (
            "its batch was rolled back: the rollout stopped" if state(host) == "rolled back" else
            "the rollout stopped before its batch" if state(host) == "not reached" else "")
        devices.append([run.names.label(host), ",".join(gs), state(host), running or "-", why])
    return (format_table(["group", *STATES], counts),
            format_table(["device", "groups", "state", "release running", "why"], devices))
