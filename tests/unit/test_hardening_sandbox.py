"""The reusable systemd sandbox drop-in: base settings, per-unit overrides (null drops one), and the same
validation the role runs before installing it (systemd-analyze reports a bad line but exits 0)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hardening_templates import ROOT, render

VALIDATE = yaml.safe_load((ROOT / "roles/hardening/vars/main.yml").read_text())["hardening_sandbox_validate"]


def _dropin(**overrides) -> str:
    return render("hardening", "systemd-sandbox.conf.j2", hardening_sandbox_unit="x.service",
                  hardening_sandbox_overrides=overrides)


def test_base_settings_and_overrides():
    text = _dropin(ProtectSystem="strict", ReadWritePaths=["/var/lib/x", "/var/log/x"], ProtectClock=None)
    lines = set(text.splitlines())
    assert {"[Service]", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/x /var/log/x", "SystemCallArchitectures=native",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"} <= lines
    assert not any(line.startswith("ProtectClock") for line in lines)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
@pytest.mark.parametrize("extra, ok", [({}, True), ({"ProtectSystem": "strictest"}, False),
                                       ({"NoNewPrivilegs": "yes"}, False)])
def test_the_validator_catches_bad_lines(tmp_path, extra, ok):
    path = tmp_path / "dropin.conf"
    path.write_text(_dropin(**extra))
    command = VALIDATE.replace("%s", str(path))
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=False)
    assert (result.returncode == 0) == ok, result.stdout + result.stderr


def test_the_aide_check_uses_it():
    tasks = (ROOT / "roles/aide/tasks/main.yml").read_text()
    assert "tasks_from: sandbox" in tasks and "rampart-aide-check.service:" in tasks
    assert Path(ROOT / "roles/hardening/meta/argument_specs.yml").read_text().count("\n  sandbox:\n") == 1
