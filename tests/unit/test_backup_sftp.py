"""The whole path on loopback: the backup_server role's own sshd configuration (rendered, `sshd -t -f`, then run
as a throwaway sshd on 127.0.0.1) with a chrooted sftp-only account, the server's upkeep script making the
repository as that account, the client's runner backing up through it and restoring, prune and a rolling check on
the server, the sftp requests a client is denied, stale-lock removal only when the holder is provably gone, and an
unreachable server. Needs root (accounts, chroot) and openssh-server; skipped otherwise."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_backup_lib import (
    CLIENT_SCRIPT,
    SERVER_SCRIPT,
    SSHD,
    SftpServer,
    metrics,
    needs_restic,
    needs_sshd,
    pids_of,
    render,
    restic,
)

pytestmark = [needs_restic, needs_sshd]


@pytest.fixture(scope="module")
def server():
    srv = SftpServer().setup()
    try:
        srv.start()
        conf = srv.base / "conf"
        (conf / "passwords").mkdir(parents=True, mode=0o700)
        password = conf / "passwords" / srv.client
        password.write_text("repository secret\n")
        password.chmod(0o400)
        text = render("backup_server", "config.json.j2", backup_server_clients=[{"source": srv.client,
                                                                                "address": "127.0.0.1"}],
                      backup_server_account_prefix=srv.prefix, backup_server_root=str(srv.root),
                      backup_server_config_dir=str(conf), backup_server_state_dir=str(srv.base / "state"),
                      backup_server_textfile_dir=str(srv.base / "server-textfile"), backup_server_lock_retries=0,
                      rampart_host={"name": "backup01"})
        cfg = json.loads(text)  # the role validates it with python3 -m json.tool
        cfg["lock_dir"] = str(srv.base / "locks")
        (conf / "config.json").write_text(json.dumps(cfg))
        srv.server_config = conf / "config.json"
        srv.password = password
        yield srv
    finally:
        srv.stop()


def server_run(srv: SftpServer, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SERVER_SCRIPT), "--config", str(srv.server_config), *args],
                          capture_output=True, text=True, check=False)


def client_config(srv: SftpServer, tmp_path: Path, jobs: dict, port: int | None = None) -> Path:
    password = tmp_path / "password"
    password.write_text(srv.password.read_text())
    password.chmod(0o400)
    cfg = {"host": srv.client, "repository": "sftp:rampart-backup:/repo", "sftp_command": srv.sftp_command(port),
           "password_file": str(password), "textfile_dir": str(tmp_path / "textfile"),
           "lock_file": str(tmp_path / "lock"), "cache_dir": str(tmp_path / "cache"), "lock_retries": 0,
           "preflight_timeout": 30, "jobs": jobs}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def client_run(config: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLIENT_SCRIPT), "--config", str(config), *args],
                          capture_output=True, text=True, check=False, **kwargs)


def sftp(srv: SftpServer, *commands: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sftp", "-F", str(srv.ssh_config()), "-b", "-", "rampart-backup"],
                          input="\n".join(commands) + "\n", capture_output=True, text=True, check=False, timeout=30)


def test_the_rendered_config_passes_sshd_t_and_a_broken_one_does_not(server):
    path = server.base / "sshd_config.check"
    path.write_text(server.config_text)
    ok = subprocess.run([SSHD, "-t", "-f", str(path)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    path.write_text(server.render_config(backup_server_listen={"address": "127.0.0.1", "port": 99999}))
    assert subprocess.run([SSHD, "-t", "-f", str(path)], capture_output=True, check=False).returncode != 0
    for needle in ("ForceCommand internal-sftp", "DisableForwarding yes", "PasswordAuthentication no",
                   f"AllowGroups {server.group}", f"Match User {server.account}",
                   f"ChrootDirectory {server.root}/{server.client}"):
        assert needle in server.config_text


def test_init_makes_the_repository_as_the_clients_account_once(server):
    first = server_run(server, "init", server.client)
    assert first.returncode == 0, first.stderr
    assert "repository created" in first.stderr
    repo = server.root / server.client / "repo"
    assert (repo / "config").stat().st_uid == pwd.getpwnam(server.account).pw_uid
    again = server_run(server, "init", server.client)
    assert again.returncode == 0 and "repository exists" in again.stderr


def test_backup_over_sftp_restore_prune_and_rolling_check(server, tmp_path):
    server_run(server, "init", server.client)
    dump = os.urandom(1_500_000)
    (tmp_path / "dump").write_bytes(dump)
    jobs = {"postgres": {"kind": "stream", "command": ["cat", str(tmp_path / "dump")], "filename": "pg/db.dump"}}
    config = client_config(server, tmp_path, jobs)
    for _ in range(2):
        result = client_run(config, "run", "postgres")
        assert result.returncode == 0, result.stderr
    m = metrics(tmp_path / "textfile/rampart_backup_postgres.prom")
    assert m['rampart_backup_last_run_success{job="postgres"}'] == 1
    assert m['rampart_backup_snapshots{job="postgres"}'] >= 2

    # restore from the client, through sftp
    extra = ("--option", f"sftp.command={server.sftp_command()}")
    restored = restic("sftp:rampart-backup:/repo", tmp_path / "password", "dump", "latest", "/pg/db.dump",
                      extra=extra)
    assert restored.returncode == 0, restored.stderr
    assert hashlib.sha256(restored.stdout).digest() == hashlib.sha256(dump).digest()

    pruned = server_run(server, "prune", server.client)
    assert pruned.returncode == 0, pruned.stderr
    pm = metrics(server.base / f"server-textfile/rampart_backup_server_prune_{server.client}.prom")
    assert pm[f'rampart_backup_last_run_success{{job="prune",client="{server.client}"}}'] == 1
    assert pm[f'rampart_backup_snapshots{{job="prune",client="{server.client}"}}'] >= 1

    cursor = server.base / "state" / f"{server.client}.check-next"
    for expected in ("1/7", "2/7"):
        checked = server_run(server, "check", server.client)
        assert checked.returncode == 0, checked.stderr
        assert f"checked subset {expected}" in checked.stderr
    assert cursor.read_text().strip() == "3"
    # every file of the repository is still the client's (a root-owned file would break its next backup)
    owners = {p.stat().st_uid for p in (server.root / server.client / "repo").rglob("*")}
    assert owners == {pwd.getpwnam(server.account).pw_uid}
    assert client_run(config, "run", "postgres").returncode == 0


def test_the_account_is_sftp_only_chrooted_and_denied_what_restic_does_not_need(server, tmp_path):
    server_run(server, "init", server.client)
    listing = sftp(server, "ls -1 /")
    assert listing.returncode == 0, listing.stderr
    assert [line for line in listing.stdout.splitlines() if not line.startswith("sftp>")] == ["/repo"]
    (tmp_path / "f").write_text("x")
    assert sftp(server, f"put {tmp_path / 'f'} /repo/probe").returncode == 0  # positive control
    for command in ("rmdir /repo/snapshots", "symlink /repo/probe /repo/link", "ln /repo/probe /repo/hard",
                    "put /etc/hostname /evil"):
        result = sftp(server, command)
        assert result.returncode != 0, f"{command} was allowed"
    assert sftp(server, "rm /repo/probe").returncode == 0
    shell = subprocess.run(["ssh", "-F", str(server.ssh_config()), "rampart-backup", "id"], capture_output=True,
                           text=True, timeout=30, check=False)
    assert "uid=" not in shell.stdout


def _lock_files(server) -> list[Path]:
    return sorted((server.root / server.client / "repo/locks").glob("*"))


def test_a_lock_is_removed_only_when_its_holder_is_provably_gone(server, tmp_path):
    server_run(server, "init", server.client)
    for lock in _lock_files(server):
        lock.unlink()
    # A dump that stalls: restic holds its lock over a live sftp session.
    started = tmp_path / "dump-started"
    jobs = {"postgres": {"kind": "stream", "command": ["sh", "-c", f"echo begin; sleep 1; touch {started}; sleep 60"],
                         "filename": "db.dump"}}
    config = client_config(server, tmp_path, jobs)
    # The client runs under its own host name (its own UTS namespace), as it would on db01: restic 0.14 calls a
    # lock made on *its own* host stale when it cannot signal the holder's PID, which here (one machine, the
    # server's restic not root) would remove the live lock for the wrong reason.
    proc = subprocess.Popen(["unshare", "--uts", "sh", "-c", 'hostname rbtest-client && exec "$@"', "_",
                             sys.executable, str(CLIENT_SCRIPT), "--config", str(config), "run", "postgres"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 30
        while not (started.exists() and _lock_files(server)) and time.time() < deadline:
            time.sleep(0.2)
        assert _lock_files(server), "restic made no lock"
        kept = server_run(server, "unlock", server.client)
        assert kept.returncode == 0, kept.stderr
        assert _lock_files(server), "a live client's lock was removed: " + kept.stderr
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the job, its restic and its ssh: the lock stays behind
        proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and pids_of(server.account):
        time.sleep(0.2)
    assert _lock_files(server), "restic removed its lock although it was killed"
    removed = server_run(server, "unlock", server.client)
    assert removed.returncode == 0, removed.stderr
    assert "removed 1 lock(s)" in removed.stderr
    assert not _lock_files(server)


def test_an_unreachable_server_is_a_failed_run_with_a_clear_line(server, tmp_path):
    from support.net import free_port

    source = tmp_path / "etc"
    source.mkdir()
    (source / "a.conf").write_text("a\n")
    config = client_config(server, tmp_path, {"config": {"kind": "paths", "paths": [str(source)]}},
                           port=free_port())
    result = client_run(config, "run", "config", timeout=120)
    assert result.returncode == 1
    assert "rampart-backup: job config FAILED: backup host unreachable" in result.stderr
    assert metrics(tmp_path / "textfile/rampart_backup_config.prom")['rampart_backup_last_run_success{job="config"}'] \
        == 0
    assert (source / "a.conf").read_text() == "a\n"
