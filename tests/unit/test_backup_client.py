"""The client's job runner (roles/backup_client/files/rampart-backup) against real restic and a local repository:
backup from stdin and restore, paths, a snapshot file read with a token from a root-only HOME, the metrics file
(values and atomic replacement), and the failures - a failing dump, a wrong password, a missing repository -
each a failed-run metric and one clear log line, with the source untouched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_backup_lib import CLIENT_SCRIPT, RESTIC, load_script, metrics, needs_restic, restic

runner = load_script(CLIENT_SCRIPT, "rampart_backup_client")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def repo(tmp_path):
    if RESTIC is None:
        pytest.skip("needs Debian's restic")
    password = tmp_path / "password"
    password.write_text("correct horse\n")
    password.chmod(0o400)
    path = tmp_path / "repo"
    result = restic(str(path), password, "init")
    assert result.returncode == 0, result.stderr
    return path, password


def write_config(tmp_path: Path, repo_path: str, password: Path, jobs: dict, **extra) -> Path:
    cfg = {"host": "db01", "repository": repo_path, "password_file": str(password),
           "textfile_dir": str(tmp_path / "textfile"), "lock_file": str(tmp_path / "lock"),
           "cache_dir": str(tmp_path / "cache"), "lock_retries": 0, "jobs": jobs, **extra}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def run(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLIENT_SCRIPT), "--config", str(config), *args],
                          capture_output=True, text=True, check=False)


@needs_restic
def test_a_dump_from_stdin_is_backed_up_restored_and_measured(tmp_path, repo):
    repo_path, password = repo
    dump = tmp_path / "source.dump"
    dump.write_bytes(os.urandom(3_000_000))
    digest = sha(dump)
    jobs = {"postgres": {"kind": "stream", "command": ["cat", str(dump)], "filename": "postgres/rampart.dump"}}
    config = write_config(tmp_path, str(repo_path), password, jobs)

    before = time.time()
    first = run(config, "run", "postgres")
    assert first.returncode == 0, first.stderr
    assert "job postgres ok" in first.stderr
    prom = tmp_path / "textfile/rampart_backup_postgres.prom"
    m = metrics(prom)
    assert m['rampart_backup_last_run_success{job="postgres"}'] == 1
    assert before <= m['rampart_backup_last_success_timestamp_seconds{job="postgres"}'] <= time.time()
    assert m['rampart_backup_snapshots{job="postgres"}'] == 1
    assert m['rampart_backup_bytes_added{job="postgres"}'] >= 3_000_000  # random data does not deduplicate
    assert 0 < m['rampart_backup_duration_seconds{job="postgres"}'] < 120

    second = run(config, "run", "postgres")
    assert second.returncode == 0, second.stderr
    m2 = metrics(prom)
    assert m2['rampart_backup_snapshots{job="postgres"}'] == 2
    assert m2['rampart_backup_bytes_added{job="postgres"}'] < 100_000  # the same dump again: only metadata

    restored = restic(str(repo_path), password, "dump", "latest", "/postgres/rampart.dump")
    assert restored.returncode == 0, restored.stderr
    assert hashlib.sha256(restored.stdout).hexdigest() == digest
    snaps = json.loads(restic(str(repo_path), password, "snapshots", "--json").stdout)
    assert {tuple(s["tags"]) for s in snaps} == {("postgres",)} and {s["hostname"] for s in snaps} == {"db01"}
    check = restic(str(repo_path), password, "check", "--read-data")
    assert check.returncode == 0, check.stderr
    assert sha(dump) == digest


@needs_restic
def test_a_failing_dump_makes_no_snapshot_and_a_failed_metric(tmp_path, repo):
    repo_path, password = repo
    jobs = {"good": {"kind": "stream", "command": ["printf", "complete dump"], "filename": "db.dump"},
            # writes half a dump, then fails: restic must not commit what it has read
            "bad": {"kind": "stream", "command": ["sh", "-c", "head -c 2000000 /dev/urandom; echo 'pg_dump: error: "
                                                  "connection failed' >&2; exit 1"], "filename": "db.dump"}}
    config = write_config(tmp_path, str(repo_path), password, jobs)
    assert run(config, "run", "good").returncode == 0
    # the failed job keeps the last good time of its own previous success: seed one
    (tmp_path / "textfile/rampart_backup_bad.prom").write_text(
        '# TYPE rampart_backup_last_success_timestamp_seconds gauge\n'
        'rampart_backup_last_success_timestamp_seconds{job="bad"} 1700000000\n')
    result = run(config, "run", "bad")
    assert result.returncode == 1
    assert "job bad FAILED: sh exited 1, no snapshot made: pg_dump: error: connection failed" in result.stderr
    m = metrics(tmp_path / "textfile/rampart_backup_bad.prom")
    assert m['rampart_backup_last_run_success{job="bad"}'] == 0
    assert m['rampart_backup_last_success_timestamp_seconds{job="bad"}'] == 1700000000
    snaps = json.loads(restic(str(repo_path), password, "snapshots", "--json").stdout)
    assert [s["tags"] for s in snaps] == [["good"]]


@needs_restic
@pytest.mark.parametrize("fault, message", [
    ("password", "wrong repository password"),
    ("missing", "no repository at the configured location"),
    ("password_file", "repository password file"),
])
def test_bad_repository_or_password_fails_clearly_and_leaves_the_source_alone(tmp_path, repo, fault, message):
    repo_path, password = repo
    source = tmp_path / "etc"
    source.mkdir()
    (source / "keep.conf").write_text("precious\n")
    stamp = (source / "keep.conf").stat().st_mtime_ns
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    target = {"password": (str(repo_path), wrong), "missing": (str(tmp_path / "nowhere"), password),
              "password_file": (str(repo_path), tmp_path / "absent")}[fault]
    jobs = {"config": {"kind": "paths", "paths": [str(source)]},
            "postgres": {"kind": "stream", "command": ["sh", "-c", f"touch {tmp_path}/dump-ran; echo x"],
                         "filename": "db.dump"}}
    config = write_config(tmp_path, target[0], target[1], jobs)
    for job in ("config", "postgres"):
        result = run(config, "run", job)
        assert result.returncode == 1
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines == [f"rampart-backup: job {job} FAILED: {lines[0].split('FAILED: ', 1)[1]}"]
        assert message in lines[0]
        assert "Traceback" not in result.stderr
        assert metrics(tmp_path / f"textfile/rampart_backup_{job}.prom")[
            f'rampart_backup_last_run_success{{job="{job}"}}'] == 0
    assert not (tmp_path / "dump-ran").exists(), "the dump ran although the repository was not usable"
    assert (source / "keep.conf").read_text() == "precious\n" and (source / "keep.conf").stat().st_mtime_ns == stamp
    assert restic(str(repo_path), password, "snapshots", "--json").stdout.strip() in (b"[]", b"null")


@needs_restic
def test_config_paths_and_a_snapshot_file_with_the_token_from_a_private_home(tmp_path, repo):
    repo_path, password = repo
    source = tmp_path / "etc/wireguard"
    source.mkdir(parents=True)
    (source / "wg0.key").write_text("private key\n")
    home = tmp_path / "vault-home"
    home.mkdir(mode=0o700)
    (home / ".vault-token").write_text("s.secret-token")
    # A stand-in for `bao operator raft snapshot save {output}`: reads its token the way bao's default token
    # helper does, and proves the token is in neither its argv nor its environment.
    fake_bao = tmp_path / "fake-bao"
    fake_bao.write_text("#!/bin/sh\nset -e\n"
                        "if env | grep -q secret-token; then echo 'token in environment' >&2; exit 9; fi\n"
                        "case \"$*\" in *secret-token*) echo 'token in argv' >&2; exit 9;; esac\n"
                        "printf 'raft snapshot made with %s\\n' \"$(cat \"$HOME/.vault-token\")\" > \"$5\"\n")
    fake_bao.chmod(0o755)
    jobs = {"config": {"kind": "paths", "paths": [str(source), str(tmp_path / "absent")]},
            "vault": {"kind": "snapshot_file", "command": [str(fake_bao), "operator", "raft", "snapshot", "save",
                                                            "{output}"],
                      "filename": "vault/raft.snap", "home": str(home), "env": {"BAO_ADDR": "https://127.0.0.1:1"}}}
    config = write_config(tmp_path, str(repo_path), password, jobs, work_dir=str(tmp_path))
    for job in ("config", "vault"):
        result = run(config, "run", job)
        assert result.returncode == 0, result.stderr
    assert "skipped: " + str(tmp_path / "absent") in run(config, "run", "config").stderr
    snap = restic(str(repo_path), password, "dump", "latest", "/vault/raft.snap", extra=("--tag", "vault"))
    assert snap.stdout == b"raft snapshot made with s.secret-token\n"
    out = tmp_path / "restore"
    restored = restic(str(repo_path), password, "restore", "latest", "--tag", "config", "--target", str(out))
    assert restored.returncode == 0, restored.stderr
    assert (out / str(source).lstrip("/") / "wg0.key").read_text() == "private key\n"
    assert not list(tmp_path.glob("rampart-backup-*")), "the snapshot's scratch directory was left behind"


@needs_restic
def test_a_failing_snapshot_command_fails_the_job(tmp_path, repo):
    repo_path, password = repo
    jobs = {"vault": {"kind": "snapshot_file", "command": ["sh", "-c", "echo 'Error: permission denied' >&2; exit 2",
                                                            "{output}"], "filename": "vault/raft.snap"}}
    result = run(write_config(tmp_path, str(repo_path), password, jobs), "run", "vault")
    assert result.returncode == 1 and "job vault FAILED: sh exited 2, no snapshot made: Error: permission denied" \
        in result.stderr


def test_unknown_job_and_bad_config_are_one_line_errors(tmp_path):
    config = write_config(tmp_path, "/nowhere", tmp_path / "pw", {"config": {"kind": "paths", "paths": ["/etc"]}})
    result = run(config, "run", "nope")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "no job 'nope'" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = run(bad, "list")
    assert result.returncode == 1 and "is not valid JSON" in result.stderr and "Traceback" not in result.stderr


def test_metrics_are_replaced_atomically(tmp_path, monkeypatch):
    good = {"rampart_backup_last_run_success": 1, "rampart_backup_last_success_timestamp_seconds": 1700000000.5,
            "rampart_backup_duration_seconds": 12.25, "rampart_backup_bytes_added": 1024, "rampart_backup_snapshots": 3}
    target = runner.write_metrics(str(tmp_path), "postgres", good)
    text = target.read_text()
    assert 'rampart_backup_last_success_timestamp_seconds{job="postgres"} 1700000000.500' in text
    assert 'rampart_backup_snapshots{job="postgres"} 3' in text
    assert text.count("# TYPE") == 5 and oct(target.stat().st_mode & 0o777) == "0o644"

    def crash(src, dst):
        raise OSError("disk gone")
    monkeypatch.setattr(runner.os, "replace", crash)
    with pytest.raises(OSError):
        runner.write_metrics(str(tmp_path), "postgres", {"rampart_backup_last_run_success": 0})
    assert target.read_text() == text, "a failed write must leave the previous file whole"
    assert [p.name for p in tmp_path.iterdir()] == ["rampart_backup_postgres.prom"], "temporary file left behind"


def test_a_locked_repository_is_retried_then_reported(tmp_path, monkeypatch):
    calls = []

    def locked(self, base, job):
        calls.append(1)
        if len(calls) < 3:
            raise runner.JobError("repository locked by another process")
        return {"message_type": "summary", "data_added": 5, "snapshot_id": "abcdef12"}
    monkeypatch.setattr(runner.Backup, "preflight", lambda self: None)
    monkeypatch.setattr(runner.Backup, "_stream", locked)
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    cfg = {"host": "h", "repository": "r", "password_file": "p", "textfile_dir": str(tmp_path), "lock_retries": 2,
           "jobs": {"pg": {"kind": "stream", "command": ["true"], "filename": "x"}}}
    assert runner.Backup(cfg).run("pg")["data_added"] == 5 and len(calls) == 3
    calls.clear()
    cfg["lock_retries"] = 1
    with pytest.raises(runner.JobError, match="locked"):
        runner.Backup(cfg).run("pg")
    assert len(calls) == 2


def test_jobs_of_one_host_never_overlap(tmp_path):
    """A second job waits for the host-wide lock the first one holds."""
    import fcntl

    lock_path = tmp_path / "lock"
    config = write_config(tmp_path, "/nowhere", tmp_path / "absent", {"config": {"kind": "paths", "paths": ["/x"]}})
    done = threading.Event()
    with open(lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        thread = threading.Thread(target=lambda: (run(config, "run", "config"), done.set()))
        thread.start()
        assert not done.wait(1.5), "the job ran while another held the lock"
    thread.join(30)
    assert done.is_set()


@pytest.mark.parametrize("stderr, meaning", [
    ("Fatal: wrong password or no key found\n", "wrong repository password"),
    ("Fatal: unable to open config file: stat /srv/x/config: no such file or directory\nIs there a repository at "
     "the following location?\nsftp:x:/repo", "no repository at the configured location"),
    ("ssh: connect to host 127.0.0.1 port 9: Connection refused\nFatal: unable to open repository", "unreachable"),
    ("Fatal: unable to create lock in backend: repository is already locked exclusively by PID 1", "locked"),
    ("Save(<data/ab>) failed: write /srv/backup/x: no space left on device", "disk is full"),
    ("something new\n", "restic failed: something new"),
])
def test_diagnoses(stderr, meaning):
    assert meaning in runner.diagnose(stderr)
