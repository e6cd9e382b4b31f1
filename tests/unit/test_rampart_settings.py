"""plugins/modules/rampart_settings: KEY value lines set in one call, as a lineinfile per key would set them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.plugins import load_plugin, run_ansible

apply = load_plugin("plugins/modules/rampart_settings.py").apply

LOGIN_DEFS = "# comment\nUMASK\t\t022\n#PASS_MAX_DAYS 99999\nPASS_MIN_DAYS 0\nPASS_MIN_DAYS 1\nLOG_OK_LOGINS\t\tyes"


def test_the_last_setting_line_is_replaced_a_commented_one_used_and_a_missing_key_appended():
    text, keys = apply(LOGIN_DEFS, {"UMASK": "027", "PASS_MAX_DAYS": "60", "PASS_MIN_DAYS": "7",
                                    "LOG_OK_LOGINS": "yes", "ENCRYPT_METHOD": "SHA512"}, "\t\t")
    assert text == ("# comment\nUMASK\t\t027\nPASS_MAX_DAYS\t\t60\nPASS_MIN_DAYS 0\nPASS_MIN_DAYS\t\t7\n"
                    "LOG_OK_LOGINS\t\tyes\nENCRYPT_METHOD\t\tSHA512\n")
    assert keys == ["UMASK", "PASS_MAX_DAYS", "PASS_MIN_DAYS", "ENCRYPT_METHOD"]  # LOG_OK_LOGINS already right
    assert apply(text, {"UMASK": "027", "ENCRYPT_METHOD": "SHA512"}, "\t\t") == (text, [])


def test_a_key_is_not_matched_inside_a_longer_key():
    text, keys = apply("UMASK_EXTRA 1\n", {"UMASK": "027"}, " ")
    assert text == "UMASK_EXTRA 1\nUMASK 027\n" and keys == ["UMASK"]


def _module(path: Path, settings: dict, *extra: str) -> tuple[int, dict]:
    args = json.dumps({"path": str(path), "settings": settings, "owner": "root", "group": "root", "mode": "0640"})
    rc, tasks = run_ansible("-m", "rampart_settings", "-a", args, *extra)
    return rc, next(iter(tasks.values()))


@pytest.mark.skipif(os.getuid() != 0, reason="sets root ownership")
def test_run_for_real_idempotent_with_mode_and_check_mode(tmp_path: Path):
    path = tmp_path / "login.defs"
    path.write_text(LOGIN_DEFS)
    path.chmod(0o600)
    rc, result = _module(path, {"UMASK": "027"}, "--check")
    assert rc == 0 and result["changed"] and result["set"] == ["UMASK"]
    assert path.read_text() == LOGIN_DEFS  # check mode wrote nothing
    rc, result = _module(path, {"UMASK": "027"})
    assert rc == 0 and result["changed"] and "UMASK\t\t027\n" in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    rc, result = _module(path, {"UMASK": "027"})
    assert rc == 0 and result["changed"] is False and result["set"] == []


def test_a_missing_file_or_a_bad_key_is_named(tmp_path: Path):
    rc, result = _module(tmp_path / "absent", {"UMASK": "027"})
    assert rc != 0 and result["msg"] == f"cannot read {tmp_path / 'absent'}: No such file or directory"
    (tmp_path / "f").write_text("")
    rc, result = _module(tmp_path / "f", {"BAD KEY": "1", "OK": "two\nlines"})
    assert rc != 0 and result["msg"] == f"{tmp_path / 'f'}: invalid keys or multi-line values: BAD KEY, OK"
    assert (tmp_path / "f").read_text() == ""
