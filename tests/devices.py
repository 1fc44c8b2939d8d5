"""Real devices for the deploy tests: OpenSSH servers on 127.0.0.1, and an emulated ARM64 Debian.

`SshServers` starts Debian's sshd (its own host key, an authorised key made for
the test, one port each) for a user of its own, `edge-device`, whose login
shell is /bin/sh, so the PATH a server sets is the PATH the device has. It
needs root (to add that user and run sshd); without it the tests are skipped
with the reason.

`arm64_root()` is a Debian 12 arm64 root file system made by debootstrap and
run under qemu-user through binfmt_misc, cached under ~/.cache so that only the
first run pays the two minutes it takes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

USER = "edge-device"
SSHD = Path("/usr/sbin/sshd")
ARM64_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-export" / "debian-12-arm64"
QEMU = Path("/usr/bin/qemu-aarch64-static")
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def on_every_cpu(command: list[str]) -> list[str]:
    """`command` on every CPU the suite was given, as a device of its own has its own CPUs (each worker of the
    suite is held to its share, tests/conftest.py)."""
    cpus = os.environ.get("EDGE_EXPORT_DEVICE_CPUS")
    return ["taskset", "--cpu-list", cpus, *command] if cpus and shutil.which("taskset") else command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


class SshServers:
    """sshd instances on 127.0.0.1 for one test module; `start(path=...)` gives a port."""

    def __init__(self):
        if os.geteuid() != 0:
            pytest.skip("the deploy tests start sshd and add a user for it: they need root")
        if not SSHD.is_file() or shutil.which("ssh") is None:
            pytest.skip("OpenSSH is not installed (Debian: apt install openssh-server openssh-client)")
        self.made_user = _run("id", USER).returncode != 0
        if self.made_user:
            made = _run("useradd", "--create-home", "--shell", "/bin/sh", USER)
            assert made.returncode == 0, made.stderr
        _run("usermod", "-p", "*", USER)  # no password, but not a locked account: sshd lets a key in
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
        # outside pytest's private temporary folders: the device user reads its authorized_keys here
        self.folder = folder = Path(tempfile.mkdtemp(prefix="edge-sshd-"))
        folder.chmod(0o755)
        for name in ("host_key", "client_key", "stranger_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
        shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
        self.client_key = folder / "client_key"
        self.stranger_key = folder / "stranger_key"  # a key no server accepts
        self.known_hosts = folder / "known_hosts"
        self.processes: list[subprocess.Popen] = []
        self.homes: list[Path] = []
        self.mounts: list[Path] = []
        self.users: list[str] = []  # made by add_user

    def add_user(self, user: str) -> str:
        """Another device user (a login shell of /bin/sh, a home, the test's authorised key), removed at stop."""
        if _run("id", user).returncode != 0:
            made = _run("useradd", "--create-home", "--shell", "/bin/sh", user)
            assert made.returncode == 0, made.stderr
            self.users.append(user)
        _run("usermod", "-p", "*", user)
        return user

    def start(self, path: str = "/usr/bin:/bin", sftp: bool = True, user: str = USER) -> int:
        """A new sshd for `user` whose sessions get PATH=`path` (and, unless `sftp` is False, an SFTP subsystem,
        which Dropbear and trimmed servers lack); returns its port."""
        port = free_port()
        config = self.folder / f"sshd-{port}.conf"
        config.write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {self.folder / 'host_key'}",
            f"PidFile {self.folder / f'sshd-{port}.pid'}", f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "StrictModes no", "UsePAM no", f"AllowUsers {user}",
            *(["Subsystem sftp /usr/lib/openssh/sftp-server"] if sftp else []), f"SetEnv PATH={path}", ""]))
        process = subprocess.Popen(on_every_cpu([str(SSHD), "-D", "-e", "-f", str(config)]), stderr=subprocess.DEVNULL)
        self.processes.append(process)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return port
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start on port {port}")

    def device_folder(self, user: str = USER) -> Path:
        """A fresh folder the device user owns, for one device's kit."""
        home = Path(tempfile.mkdtemp(prefix="edge-device-"))
        shutil.chown(home, user, user)
        self.homes.append(home)
        return home

    def small_disk(self, megabytes: int = 8) -> Path:
        """A device folder on a file system of `megabytes` (a tmpfs): a device whose disk is nearly full."""
        folder = self.device_folder()
        mounted = _run("mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(folder))
        assert mounted.returncode == 0, mounted.stderr
        shutil.chown(folder, USER, USER)
        self.mounts.append(folder)
        return folder

    def trust(self, port: int) -> None:
        """Add a server's host key to the test's known_hosts (what a careful user does first)."""
        key = (self.folder / "host_key.pub").read_text().split()
        with open(self.known_hosts, "a") as f:
            f.write(f"[127.0.0.1]:{port} {key[0]} {key[1]}\n")

    def stop(self) -> None:
        for p in self.processes:
            p.terminate()
            p.wait(timeout=10)
        for folder in self.mounts:
            _run("umount", str(folder))
        for home in [*self.homes, self.folder]:
            shutil.rmtree(home, ignore_errors=True)
        for user in [*([USER] if self.made_user else []), *self.users]:
            _run("userdel", "--remove", user)


def tools_without_python(folder: Path, python: bool = False) -> Path:
    """A folder of the commands a device without Python has (a PATH with no python3 on it, and no scp);
    with `python`, python3 too: a device that has Python but no scp."""
    folder.mkdir(parents=True, exist_ok=True)
    # what any board's shell has (busybox gives them all); Ansible's commands end with `sleep 0`
    for tool in ("sh", "uname", "getconf", "mkdir", "df", "tail", "cat", "tar", "gzip", "rm", "sleep"):
        (folder / tool).symlink_to(shutil.which(tool))
    if python:  # the system's, as a device has it (not this test's virtual environment)
        (folder / "python3").symlink_to(shutil.which("python3", path="/usr/bin:/bin"))
    folder.chmod(0o755)
    return folder


def old_glibc_tools(folder: Path, version: str = "2.17") -> Path:
    """A folder whose `getconf` reports glibc `version`: put first on a device's PATH, a device with that
    glibc as far as deploy and the kit's installer can tell (2.17: too old for any backend's wheels)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "getconf").write_text(f"#!/bin/sh\necho glibc {version}\n")
    (folder / "getconf").chmod(0o755)
    folder.chmod(0o755)
    return folder


def arm64_root() -> Path:
    """A Debian 12 arm64 root with python3 that runs here under emulation, made once and cached."""
    if os.geteuid() != 0:
        pytest.skip("the emulated ARM64 root needs root (debootstrap, chroot)")
    if not QEMU.is_file() or shutil.which("debootstrap") is None:
        pytest.skip("qemu-user-static and debootstrap are not installed (Debian: apt install qemu-user-static "
                    "debootstrap binfmt-support)")
    if not (BINFMT / "register").exists():
        _run("mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT))
    if not (BINFMT / "qemu-aarch64").exists():
        _run("update-binfmts", "--enable", "qemu-aarch64")
    if not (BINFMT / "qemu-aarch64").exists():
        pytest.skip("binfmt_misc cannot run arm64 programs here (no qemu-aarch64 entry can be registered)")
    if not arm64_root_made():
        partial = ARM64_ROOT.with_name(ARM64_ROOT.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        made = _run("debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3", "bookworm",
                    str(partial), "http://deb.debian.org/debian")
        if made.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            pytest.fail(f"debootstrap of the arm64 root failed: {made.stdout[-2000:]}{made.stderr[-2000:]}")
        shutil.rmtree(ARM64_ROOT, ignore_errors=True)
        partial.rename(ARM64_ROOT)
    return ARM64_ROOT


def arm64_root_made() -> bool:
    """Whether the cached ARM64 root is complete (debootstrap's last step installed its Python)."""
    return (ARM64_ROOT / "usr" / "bin" / "python3").exists()


def in_arm64(root: Path, command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`command` (sh) in the arm64 root: no network (a namespace of its own with no interface
    up), /sys mounted (OpenVINO reads the CPU's topology there), nothing else of this machine's."""
    return subprocess.run(on_every_cpu(["unshare", "--net", "--mount", "--fork", "chroot", str(root), "/bin/sh", "-c",
                           f"mount -t sysfs sysfs /sys && exec env -i PATH=/usr/bin:/bin HOME=/root {command}"]),
                          capture_output=True, text=True, timeout=timeout)
