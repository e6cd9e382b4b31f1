"""The aide role: its configuration passes `aide --config-check`, watches the critical files, and the check
script — run for real against a scratch tree — makes the database once, reports changes as node_exporter
textfile metrics, and accepts a reviewed change."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hardening_templates import render, role_vars

AIDE = shutil.which("aide") or ("/usr/bin/aide" if Path("/usr/bin/aide").exists() else None)
needs_aide = pytest.mark.skipif(AIDE is None, reason="needs Debian's aide (apt-get install aide)")


def test_the_critical_files_are_watched_with_content_hashes():
    conf = render("aide", "aide.conf.j2")
    for path in ("/etc/ssh", r"/etc/sudoers$", r"/etc/sudoers\.d", r"/etc/passwd$", r"/etc/shadow$",
                 r"/etc/nftables\.conf$", "/usr/local/sbin", "/etc/systemd/system", "/usr/bin", "/usr/sbin"):
        assert re.search(rf"^{re.escape(path)} Critical$", conf, re.M), path
    assert re.search(r"^Critical = .*\bsha256\b", conf, re.M)
    assert "database_in=file:/var/lib/aide/rampart-aide.db.gz" in conf


def test_metrics_go_to_node_exporters_textfile_directory():
    assert role_vars("aide")["aide_textfile_dir"] == "/var/lib/prometheus/node-exporter"
    assert "metrics=\"$textfile_dir/rampart_aide.prom\"" in render("aide", "rampart-aide.sh.j2")


@needs_aide
def test_the_configuration_passes_aides_own_check(tmp_path):
    path = tmp_path / "aide.conf"
    path.write_text(render("aide", "aide.conf.j2"))
    result = subprocess.run([AIDE, "--config-check", "--config", str(path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def _metrics(path: Path) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[1]) for line in path.read_text().splitlines()
            if line and not line.startswith("#")}


@needs_aide
def test_init_check_accept_and_the_metrics(tmp_path):
    watched = tmp_path / "etc"
    watched.mkdir()
    (watched / "sudoers").write_text("root ALL=(ALL:ALL) ALL\n")
    (watched / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    textfiles = tmp_path / "textfile"
    overrides = {"aide_config_file": str(tmp_path / "aide.conf"), "aide_database": str(tmp_path / "db/aide.db.gz"),
                 "aide_report_file": str(tmp_path / "log/last-check.txt"), "aide_textfile_dir": str(textfiles),
                 "aide_watch": {str(watched): "Critical"}, "aide_ignore": []}
    (tmp_path / "aide.conf").write_text(render("aide", "aide.conf.j2", **overrides))
    (tmp_path / "db").mkdir()
    script = tmp_path / "rampart-aide"
    script.write_text(render("aide", "rampart-aide.sh.j2", **overrides).replace("/usr/bin/aide", AIDE))
    script.chmod(0o755)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), *args], capture_output=True, text=True, check=False)

    assert run("init").returncode == 0
    prom = textfiles / "rampart_aide.prom"
    first = _metrics(prom)
    assert first["rampart_aide_check_success"] == 1
    assert first["rampart_aide_last_check_timestamp_seconds"] > 0
    assert first['rampart_aide_changed_files{change="changed"}'] == 0

    (watched / "sudoers").write_text("root ALL=(ALL:ALL) ALL\nevil ALL=(ALL) NOPASSWD: ALL\n")
    (watched / "rootkit").write_text("x")
    (watched / "passwd").unlink()
    result = run("check")
    assert result.returncode == 0 and "changes found" in result.stdout
    after = _metrics(prom)
    assert after['rampart_aide_changed_files{change="added"}'] == 1
    assert after['rampart_aide_changed_files{change="removed"}'] == 1
    assert after['rampart_aide_changed_files{change="changed"}'] >= 1  # the file (and its directory)
    assert "sudoers" in (tmp_path / "log/last-check.txt").read_text()

    assert run("accept").returncode == 0
    accepted = _metrics(prom)
    assert sum(v for k, v in accepted.items() if k.startswith("rampart_aide_changed_files")) == 0

    (tmp_path / "aide.conf").write_text("this is not aide syntax\n")
    assert run("check").returncode != 0
    broken = _metrics(prom)
    assert broken["rampart_aide_check_success"] == 0
    assert broken["rampart_aide_last_check_timestamp_seconds"] == accepted["rampart_aide_last_check_timestamp_seconds"]


def test_usage_is_a_one_line_error(tmp_path):
    script = tmp_path / "rampart-aide"
    script.write_text(render("aide", "rampart-aide.sh.j2"))
    result = subprocess.run(["bash", str(script), "frobnicate"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and result.stderr.strip() == "usage: rampart-aide init|check|accept"
