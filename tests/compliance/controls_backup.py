"""Backup controls (`rampart-backup-NN`): the backup host's sftp service and repositories, and each backup
client's key, password file, jobs and fresh metrics. Who is which comes from the topology: the host that runs
backup_sftp, and the hosts with a flow to it."""

import re

from compliance_core import Facts, control, describe, mode_at_most

SSHD_CONFIG = "/etc/ssh/rampart-backup/sshd_config"
CLIENT_DIR = "/etc/rampart-backup"
CLIENT_FILES = {f"{CLIENT_DIR}/repository-password": 0o400, f"{CLIENT_DIR}/id_ed25519": 0o600,
                f"{CLIENT_DIR}/config.json": 0o600}
STALE_AFTER = 2 * 86400  # the config job is daily; BackupStale alerts well before this


def _view(facts: Facts):
    if facts.topology is None or facts.name not in getattr(facts.topology, "hosts", {}):
        return None
    try:
        return facts.topology.host_view(facts.name)
    except (KeyError, ValueError):
        return None


def _server(facts: Facts) -> bool:
    view = _view(facts)
    return bool(view and "backup_sftp" in view.listens)


def _client(facts: Facts) -> bool:
    view = _view(facts)
    return bool(view and view.connects.get("backup_sftp"))


def _owned(facts: Facts, path: str, max_mode: int, *, kind: str = "file") -> None:
    st = facts.stat(path)
    assert st is not None, f"{path} missing"
    assert st[kind], f"{path} is not a {kind}"
    assert st["user"] == "root", f"{path} is {describe(st)}, want root-owned"
    assert mode_at_most(st, max_mode), f"{path} is {describe(st)}, want at most {max_mode:04o}"


@control("rampart-backup-01", "The backup sftp service is sftp-only, key-only, chrooted per account",
         applies=_server, read=[SSHD_CONFIG])
def sftp_config(facts: Facts) -> None:
    text = facts.file(SSHD_CONFIG)
    assert text, f"{SSHD_CONFIG} missing"
    settings = {line.split(None, 1)[0].lower(): line.split(None, 1)[1].strip() for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#") and len(line.split(None, 1)) == 2}
    assert settings.get("forcecommand", "").startswith("internal-sftp"), "no ForceCommand internal-sftp"
    assert "-p " in settings.get("forcecommand", ""), "no sftp request allow-list (-p)"
    for key, want in (("passwordauthentication", "no"), ("kbdinteractiveauthentication", "no"),
                      ("permitrootlogin", "no"), ("disableforwarding", "yes"), ("permittty", "no"),
                      ("authenticationmethods", "publickey")):
        assert settings.get(key, "").lower() == want, f"{key} is {settings.get(key)!r}, want {want}"
    accounts = re.findall(r"^Match User (\S+)\s*\n\s+ChrootDirectory (\S+)", text, re.M)
    assert accounts, "no chrooted account"


@control("rampart-backup-02", "The backup sftp service runs, on the topology's backup_sftp address only",
         applies=_server, units=["rampart-backup-sshd.service"])
def sftp_running(facts: Facts) -> None:
    unit = facts.unit("rampart-backup-sshd.service")
    assert unit.get("ActiveState") == "active", f"rampart-backup-sshd is {unit.get('ActiveState')}"
    assert unit.get("UnitFileState") == "enabled", f"rampart-backup-sshd is {unit.get('UnitFileState')}"
    want = _view(facts).listens["backup_sftp"]
    tcp = [(a, p) for proto, a, p in facts.listening if proto == "tcp" and p == want.port]
    assert tcp == [(str(want.address), want.port)], f"listening on {tcp}, want {want.address}:{want.port} only"


@control("rampart-backup-03", "Repositories and upkeep secrets: chroot roots root-owned, passwords root-only",
         applies=_server, stat=["/srv/backup", "/etc/rampart-backup-server", "/etc/rampart-backup-server/passwords"])
def server_files(facts: Facts) -> None:
    _owned(facts, "/srv/backup", 0o755, kind="dir")
    _owned(facts, "/etc/rampart-backup-server", 0o700, kind="dir")
    _owned(facts, "/etc/rampart-backup-server/passwords", 0o700, kind="dir")


@control("rampart-backup-04", "A backup client's key, repository password and job file are root-only",
         applies=_client, stat=[CLIENT_DIR, *CLIENT_FILES])
def client_files(facts: Facts) -> None:
    _owned(facts, CLIENT_DIR, 0o700, kind="dir")
    for path, mode in CLIENT_FILES.items():
        _owned(facts, path, mode)


@control("rampart-backup-05", "The config backup job is scheduled and its last run succeeded within two days",
         applies=_client, units=["rampart-backup@config.timer"],
         read=["/var/lib/prometheus/node-exporter/rampart_backup_config.prom"])
def client_fresh(facts: Facts) -> None:
    timer = facts.unit("rampart-backup@config.timer")
    assert timer.get("UnitFileState") == "enabled" and timer.get("ActiveState") == "active", \
        f"rampart-backup@config.timer is {timer.get('UnitFileState')}/{timer.get('ActiveState')}"
    text = facts.file("/var/lib/prometheus/node-exporter/rampart_backup_config.prom")
    assert text, "no backup metrics yet: systemctl start rampart-backup@config"
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line and not line.startswith("#") and len(line.split()) == 2}
    assert values.get('rampart_backup_last_run_success{job="config"}') == 1, "the last config backup failed"
    age = facts.data["time"] - values.get('rampart_backup_last_success_timestamp_seconds{job="config"}', 0)
    assert age < STALE_AFTER, f"last successful config backup {age / 3600:.0f} h ago"
