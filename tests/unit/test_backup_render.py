"""The backup roles' templates, rendered as Ansible would and checked with the validators the roles run:
units with `systemd-analyze verify` (through the roles' own validate command, which also fails on a misspelt
key), the client's ssh_config with `ssh -G`, the JSON configurations; jobs derived from the host's services;
no secret in any rendered file."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import pytest
from test_backup_lib import CLIENT_SCRIPT, SERVER_SCRIPT, host_view, render, role_vars

needs_analyze = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
CANARY = "canary-Repo-Passw0rd"


def validate(role: str, text: str, tmp_path, name: str, load: str) -> subprocess.CompletedProcess:
    path = tmp_path / "candidate"
    # The scripts are installed before the units by the roles; point ExecStart at the repository's copies.
    path.write_text(text.replace("/usr/local/sbin/rampart-backup-server", str(SERVER_SCRIPT))
                    .replace("/usr/local/sbin/rampart-backup ", f"{CLIENT_SCRIPT} "))
    command = role_vars(role)[f"_{role}_validate_unit"]
    return subprocess.run([*shlex.split(command), str(path), name, load], capture_output=True, text=True,
                          check=False)


def client_config(extra: dict | None = None, **listens) -> dict:
    return json.loads(render("backup_client", "config.json.j2", rampart_host=host_view("db01", **listens),
                             backup_repository_passwords={"db01": CANARY}, **(extra or {})))


def test_jobs_follow_what_the_host_runs():
    assert set(client_config()["jobs"]) == {"config"}
    pg = client_config(postgres={"address": "10.0.0.1", "port": 5432})
    assert set(pg["jobs"]) == {"config", "postgres"}
    assert pg["jobs"]["postgres"]["kind"] == "stream"
    assert pg["jobs"]["postgres"]["command"][-3:] == ["-Fc", "--no-password", "rampart"]
    # Vault snapshots need a token with the snapshot capability: without one the job is not set up.
    assert "vault" not in client_config(vault={"address": "10.0.4.5", "port": 8200})["jobs"]
    vault = client_config({"backup_client_vault_token": CANARY}, vault={"address": "10.0.4.5", "port": 8200})
    job = vault["jobs"]["vault"]
    assert job["kind"] == "snapshot_file" and "{output}" in job["command"]
    assert job["home"] == "/etc/rampart-backup/vault"
    assert job["env"]["BAO_ADDR"] == "https://10.0.4.5:8200"
    assert not any("token" in k.lower() for k in job["env"])
    assert vault["repository"] == "sftp:rampart-backup:/repo" and vault["host"] == "db01"
    # Or with the backup AppRole (the lab's way): a helper logs in with the delivered files, no standing token.
    approle = client_config({"backup_client_vault_approle": True}, vault={"address": "10.0.4.5", "port": 8200})
    job = approle["jobs"]["vault"]
    assert job["command"] == ["/usr/bin/python3", "/usr/local/sbin/rampart-vault-snapshot", "{output}"]
    assert job["env"]["RAMPART_VAULT_SECRET_ID_FILE"] == "/etc/credstore/rampart-backup.vault-secret-id"  # noqa: S105


def test_no_secret_in_rendered_files():
    for text in (json.dumps(client_config(postgres={"address": "a", "port": 1})),
                 render("backup_client", "ssh_config.j2", rampart_host=host_view(),
                        backup_client_server={"host": "backup01", "address": "127.0.0.1", "port": 2222}),
                 render("backup_client", "rampart-backup@.service.j2"),
                 render("backup_server", "config.json.j2", backup_server_clients=[{"source": "db01", "address": "x"}],
                        backup_repository_passwords={"db01": CANARY})):
        assert CANARY not in text
    assert "password_file" in client_config()


@needs_analyze
def test_client_units_pass_the_roles_validator(tmp_path):
    service = render("backup_client", "rampart-backup@.service.j2")
    result = validate("backup_client", service, tmp_path, "rampart-backup@.service", "rampart-backup@config.service")
    assert result.returncode == 0, result.stdout + result.stderr
    for job, calendar in (("postgres", "hourly"), ("config", "daily")):
        timer = render("backup_client", "rampart-backup.timer.j2", item=job)
        assert f"OnCalendar={calendar}" in timer and "Persistent=true" in timer and "RandomizedDelaySec=10min" in timer
        result = validate("backup_client", timer, tmp_path, f"rampart-backup@{job}.timer",
                          f"rampart-backup@{job}.timer")
        assert result.returncode == 0, result.stdout + result.stderr


@needs_analyze
def test_server_units_pass_the_roles_validator(tmp_path):
    listen = {"address": "10.77.60.12", "port": 2222}
    sshd = render("backup_server", "rampart-backup-sshd.service.j2", backup_server_listen=listen)
    assert "sshd -t -f /etc/ssh/rampart-backup/sshd_config" in sshd
    assert "sshd -D -f /etc/ssh/rampart-backup/sshd_config" in sshd
    result = validate("backup_server", sshd, tmp_path, "rampart-backup-sshd.service", "rampart-backup-sshd.service")
    assert result.returncode == 0, result.stdout + result.stderr
    for action in ("prune", "check"):
        unit = render("backup_server", "rampart-backup-maint.service.j2", backup_server_action=action)
        assert f"rampart-backup-server {action} %i" in unit
        result = validate("backup_server", unit, tmp_path, f"rampart-backup-{action}@.service",
                          f"rampart-backup-{action}@db01.service")
        assert result.returncode == 0, result.stdout + result.stderr
        timer = render("backup_server", "rampart-backup-maint.timer.j2", backup_server_timer_action=action,
                       backup_server_timer_client="db01", backup_server_timer_calendar="*-*-* 04:00:00")
        assert "Persistent=true" in timer and "RandomizedDelaySec=20min" in timer
        result = validate("backup_server", timer, tmp_path, "t.timer", "t.timer")
        assert result.returncode == 0, result.stdout + result.stderr


@needs_analyze
@pytest.mark.parametrize("bad", ["Persistant=true", "OnCalendar=every tuesday-ish"])
def test_the_validator_rejects_a_misspelt_or_invalid_timer(tmp_path, bad):
    timer = render("backup_client", "rampart-backup.timer.j2", item="config").replace("[Timer]", f"[Timer]\n{bad}")
    result = validate("backup_client", timer, tmp_path, "rampart-backup@config.timer", "rampart-backup@config.timer")
    assert result.returncode != 0, result.stdout


@pytest.mark.skipif(not shutil.which("ssh"), reason="needs openssh-client")
def test_ssh_config_pins_the_server_and_forwards_nothing(tmp_path):
    path = tmp_path / "ssh_config"
    path.write_text(render("backup_client", "ssh_config.j2", rampart_host=host_view("vault01"),
                           backup_client_server={"host": "backup01", "address": "10.77.60.12", "port": 2222}))
    result = subprocess.run(["ssh", "-G", "-F", str(path), "rampart-backup"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    opts = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert opts["hostname"] == "10.77.60.12" and opts["port"] == "2222" and opts["user"] == "bk-vault01"
    assert opts["stricthostkeychecking"] == "true" and opts["batchmode"] == "yes"
    assert opts["identityfile"] == "/etc/rampart-backup/id_ed25519" and opts["forwardagent"] == "no"
    assert opts["userknownhostsfile"] == "/etc/rampart-backup/known_hosts" and opts["hostkeyalias"] == \
        "rampart-backup-server"


def test_server_accounts_and_chroots_come_from_the_topologys_clients():
    view = host_view("backup01", backup_sftp={"address": "10.77.60.12", "port": 2222})
    view["clients"] = {"backup_sftp": [{"source": "db01", "address": "10.77.30.23"},
                                       {"source": "vault01", "address": "10.77.40.5"}]}
    text = render("backup_server", "sshd_config.j2", rampart_host=view)
    assert "ListenAddress 10.77.60.12:2222" in text
    assert "Match User bk-db01\n    ChrootDirectory /srv/backup/db01" in text
    assert "Match User bk-vault01\n    ChrootDirectory /srv/backup/vault01" in text
    assert "ForceCommand internal-sftp -l INFO -p open,close,read,write," in text
    for denied in ("rmdir", "symlink", "hardlink", "posix-rename", "copy-data"):
        assert denied not in text.split("-p ", 1)[1].split("\n", 1)[0].split(",")
    keys = render("backup_server", "authorized_keys.j2", item={"source": "db01", "address": "10.77.30.23"},
                  hostvars={"db01": {"backup_client_public_key": "ssh-ed25519 AAAAC3Nza rampart-backup@db01"}})
    assert 'restrict,from="10.77.30.23" ssh-ed25519 AAAAC3Nza rampart-backup@db01' in keys
    cfg = json.loads(render("backup_server", "config.json.j2", rampart_host=view))
    assert cfg["clients"]["vault01"] == {"account": "bk-vault01", "repository": "/srv/backup/vault01/repo",
                                         "password_file": "/etc/rampart-backup-server/passwords/vault01"}
    assert cfg["retention"]["daily"] == 14 and cfg["check_subsets"] == 7
