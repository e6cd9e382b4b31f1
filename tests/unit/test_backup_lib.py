"""Shared helpers of the test_backup_* modules (no tests here): render the backup roles' templates as Ansible
would, load the job runners as modules, a throwaway restic repository, and a throwaway sftp server on loopback
that runs the backup_server role's own sshd configuration."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import pytest
from hardening_templates import ROOT, _environment, role_vars
from support.net import free_port

RESTIC = shutil.which("restic")
SSHD = "/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None
SSH = shutil.which("ssh")
needs_restic = pytest.mark.skipif(RESTIC is None, reason="needs Debian's restic (apt-get install restic)")
needs_sshd = pytest.mark.skipif(SSHD is None or SSH is None or os.geteuid() != 0,
                                reason="needs root, openssh-server and openssh-client (a throwaway sshd on loopback)")

CLIENT_SCRIPT = ROOT / "roles/backup_client/files/rampart-backup"
SERVER_SCRIPT = ROOT / "roles/backup_server/files/rampart-backup-server"


def load_script(path: Path, name: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def host_view(name: str = "db01", **listens: Any) -> dict[str, Any]:
    """A rampart_host shaped like the per-host view (HOSTVIEW.md)."""
    return {"name": name, "listens": listens,
            "connects": {"backup_sftp": [{"host": "backup01", "address": "127.0.0.1", "port": 2222,
                                          "proto": "tcp"}]},
            "clients": {}}


def _resolve(value: Any, env: jinja2.Environment, values: dict[str, Any]) -> Any:
    """Like Ansible's lazy templating: strings inside dicts and lists are expressions too."""
    if isinstance(value, str) and "{{" in value:
        try:
            return env.from_string(value).render(**values)
        except jinja2.UndefinedError:
            return value
    if isinstance(value, dict):
        return {k: _resolve(v, env, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, env, values) for v in value]
    return value


def backup_role_vars(role: str, **overrides: Any) -> dict[str, Any]:
    values = role_vars(role, **overrides)
    env = _environment(role, native=True)
    env.filters["to_json"] = json.dumps
    for _ in range(5):
        resolved = {k: (v if k in overrides else _resolve(v, env, values)) for k, v in values.items()}
        if resolved == values:
            break
        values = resolved
    return values


def render(role: str, template: str, **overrides: Any) -> str:
    values = backup_role_vars(role, **overrides)
    env = _environment(role)
    env.filters["to_json"] = json.dumps
    env.filters["to_nice_json"] = lambda v, indent=4: json.dumps(v, indent=indent, sort_keys=True)
    env.filters["int"] = int
    env.undefined = jinja2.StrictUndefined
    return env.get_template(template).render(ansible_managed="test", **values)


def restic(repo: str, password_file: Path, *args: str, extra: tuple[str, ...] = (),
           **kwargs: Any) -> subprocess.CompletedProcess:
    assert RESTIC
    return subprocess.run([RESTIC, "--repo", repo, "--password-file", str(password_file), "--no-cache", *extra,
                           *args], capture_output=True, check=False, **kwargs)


def metrics(path: Path) -> dict[str, float]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def pids_of(user: str) -> list[int]:
    """The live processes of user. One that exits between the /proc listing and its stat (other tests run
    beside this one) is not counted."""
    import pwd

    uid = pwd.getpwnam(user).pw_uid
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                continue
    return pids


def kill_processes_of(user: str) -> None:
    import signal

    for pid in pids_of(user):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def unused_uid() -> int:
    """A uid no account and no running process has. useradd --system takes the highest free one below 1000,
    often 999. The lab's hosts (systemd-nspawn, no user namespace) run Vault and the bot under uid 999 too:
    the upkeep script's "no process of the account" check then saw the lab's processes as the client's, and
    the cleanup's kill of the account's processes killed the lab's Vault (left sealed) and bot."""
    in_use = {entry.pw_uid for entry in pwd.getpwall()}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                in_use.add(entry.stat().st_uid)
            except FileNotFoundError:
                continue
    return next(uid for uid in range(64000, 65000) if uid not in in_use)


class SftpServer:
    """The backup_server role's sshd_config, rendered for loopback, run as a throwaway sshd with one client
    account. Everything lives under a root-owned directory (sshd's chroot demands root-owned path components,
    so not /tmp) and is removed, with the account, by stop()."""

    def __init__(self, client: str = "rbtest") -> None:
        self.base = Path(tempfile.mkdtemp(prefix="rampart-backup-test-", dir="/var/lib"))
        self.base.chmod(0o755)
        self.client = client
        self.prefix = "rbt-"
        self.account = self.prefix + client
        self.group = "rampart-backup-test"
        self.port = free_port()
        self.root = self.base / "srv"
        self.sshd_dir = self.base / "sshd"
        self.proc: subprocess.Popen | None = None
        self.users_made: list[str] = []

    def setup(self) -> SftpServer:
        if subprocess.run(["getent", "group", self.group], capture_output=True).returncode != 0:
            subprocess.run(["groupadd", "--system", self.group], check=True)
        if subprocess.run(["getent", "passwd", self.account], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--system", "--uid", str(unused_uid()), "--no-create-home", "--gid", self.group,
                            "--shell", "/usr/sbin/nologin", "--home-dir", str(self.root / self.client),
                            "--password", "*", self.account], check=True)
            self.users_made.append(self.account)
        (self.sshd_dir / "authorized_keys").mkdir(parents=True)
        (self.root / self.client / "repo").mkdir(parents=True)
        for d in (self.sshd_dir, self.sshd_dir / "authorized_keys", self.root, self.root / self.client):
            d.chmod(0o755)
        shutil.chown(self.root / self.client / "repo", self.account, self.group)
        (self.root / self.client / "repo").chmod(0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(self.sshd_dir / "ssh_host_ed25519_key")], check=True)
        self.client_dir = self.base / "client"
        self.client_dir.mkdir(mode=0o700)
        self.key = self.client_dir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.config_text = self.render_config()
        (self.sshd_dir / "sshd_config").write_text(self.config_text)
        keys = render("backup_server", "authorized_keys.j2", item={"source": self.client, "address": "127.0.0.1"},
                      backup_server_account_prefix=self.prefix,
                      hostvars={self.client: {"backup_client_public_key": (self.key.with_suffix(".pub")).read_text()}})
        (self.sshd_dir / "authorized_keys" / self.account).write_text(keys)
        (self.client_dir / "known_hosts").write_text(
            "rampart-backup-server " + (self.sshd_dir / "ssh_host_ed25519_key.pub").read_text())
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        return self

    def render_config(self, **overrides: Any) -> str:
        values = {"backup_server_listen": {"address": "127.0.0.1", "port": self.port},
                  "backup_server_clients": [{"source": self.client, "address": "127.0.0.1"}],
                  "backup_server_account_prefix": self.prefix, "backup_server_group": self.group,
                  "backup_server_root": str(self.root), "backup_server_sshd_dir": str(self.sshd_dir),
                  "backup_server_pid_file": str(self.base / "sshd.pid"), "rampart_host": host_view("backup01")}
        values.update(overrides)
        return render("backup_server", "sshd_config.j2", **values)

    def start(self) -> None:
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.sshd_dir / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.base / "sshd.log", "wb"))  # noqa: SIM115
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {(self.base / 'sshd.log').read_text()}")

    def stop_sshd(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def ssh_config(self, port: int | None = None) -> Path:
        """The backup_client role's ssh_config, pointed at this server."""
        text = render("backup_client", "ssh_config.j2", rampart_host=host_view(self.client),
                      backup_client_server={"host": "backup01", "address": "127.0.0.1", "port": port or self.port},
                      backup_client_account=self.account, backup_client_key_file=str(self.key),
                      backup_client_config_dir=str(self.client_dir))
        path = self.client_dir / f"ssh_config.{port or self.port}"
        path.write_text(text)
        return path

    def sftp_command(self, port: int | None = None) -> str:
        return f"{SSH} -F {self.ssh_config(port)} rampart-backup -s sftp"

    def stop(self) -> None:
        self.stop_sshd()
        for user in self.users_made:
            kill_processes_of(user)  # sftp sessions a failed test left behind (only this test's account)
            subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", self.group], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
