"""The drills runner (infra/rampart/drills.py): verdicts against each drill's targets, the report (JSON list and
Markdown table, appended atomically), refusals that record nothing, a failed run that says what it left, and -
with the real ansible-playbook on localhost only - each bot/database drill refusing clearly when its hosts are
absent from the inventory."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from argparse import Namespace
from pathlib import Path

import pytest
from rampart import drills

ROOT = Path(__file__).resolve().parents[2]


def test_verdicts_follow_the_targets():
    a = drills.find("a")
    assert drills.verdict(a, {"status": "ok", "recovery_s": 3.2, "data_lost": {"orders": 0, "fills": 0}}) == \
        ("pass", [])
    result, reasons = drills.verdict(a, {"status": "ok", "recovery_s": 7.5, "data_lost": {"orders": 0, "fills": 2}})
    assert result == "fail" and reasons == ["recovery 7.5 s > target 5 s", "fills lost: 2"]
    d = drills.find("restore-verify")
    assert drills.verdict(d, {"status": "ok", "recovery_s": 10, "backup_s": 45, "data_lost": {"rows": 0}}) == \
        ("fail", ["backup_s 45.0 s > target 30 s"])
    e = drills.find("e")
    assert drills.verdict(e, {"status": "ok", "recovery_s": 400,
                              "data_lost": {"prometheus_samples": "all before the wipe"}}) == ("pass", [])
    assert drills.verdict(a, {"status": "failed", "reason": "kill-wait: boom"})[1][0] == "kill-wait: boom"
    assert drills.verdict(a, {"status": "refused", "reason": "drill a needs the bot"}) == \
        ("refused", ["drill a needs the bot"])
    f = drills.find("f")
    assert drills.verdict(f, {"status": "ok", "recovery_s": 50,
                              "data_lost": {"vault_writes_after_snapshot": None}}) == ("pass", [])


def test_unknown_drill_is_a_one_line_error():
    with pytest.raises(drills.DrillError, match=r"no drill 'z': choose one of a \(bot-kill\)"):
        drills.find("z")


def test_report_is_appended_as_json_and_markdown(tmp_path):
    a, c = drills.find("a"), drills.find("c")
    first = drills.record(a, {"status": "ok", "started": 1767225600, "recovery_s": 2.5, "detection_s": None,
                              "data_lost": {"orders": 0, "fills": 0}}, "lab", "abc123")
    second = drills.record(c, {"status": "failed", "started": 1767225700, "reason": "Restore: pg_restore failed",
                               "state_left": "data directory aside", "how_to_finish": "mv it back"}, "lab", "abc123")
    drills.append(tmp_path, first)
    drills.append(tmp_path, second)
    records = json.loads((tmp_path / "drills.json").read_text())
    assert [r["drill"] for r in records] == ["a", "c"]
    assert records[0] | {"measured": {}} == first | {"measured": {}}
    assert records[1]["result"] == "fail" and records[1]["commit"] == "abc123"
    md = (tmp_path / "drills.md").read_text()
    assert "| drill | fault | started | detection | recovery | target | data lost | result | commit |" in md
    assert "| a bot-kill | kill -9 of the bot's main process during an order burst | 2026-01-01 00:00:00 UTC | — | " \
           "2.5 s | 5.0 s | fills=0, orders=0 | PASS | abc123 |" in md
    assert "FAIL: Restore: pg_restore failed; no recovery measured" in md
    assert "data directory aside. To finish: mv it back" in md
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left"


def test_a_corrupt_report_is_refused_not_overwritten(tmp_path):
    (tmp_path / "drills.json").write_text("{broken")
    with pytest.raises(drills.DrillError, match="drills.json: not valid JSON"):
        drills.append(tmp_path, drills.record(drills.find("a"), {"status": "ok"}, "lab", "x"))
    assert (tmp_path / "drills.json").read_text() == "{broken"


def _fake_playbook(tmp_path: Path, result: dict | None, rc: int = 0) -> list[str]:
    """An ansible-playbook stand-in that writes `result` where the runner asked (-e drill_result_file=...)."""
    script = tmp_path / "fake-ansible-playbook"
    body = json.dumps(result) if result is not None else ""
    script.write_text("#!/usr/bin/env python3\nimport sys\n"
                      "path = [a.split('=', 1)[1] for a in sys.argv if a.startswith('drill_result_file=')][0]\n"
                      f"body = {body!r}\n"
                      "if body:\n    open(path, 'w').write(body)\n"
                      f"sys.exit({rc})\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return [str(script)]


@pytest.fixture()
def root(tmp_path):
    repo = tmp_path / "repo"
    (repo / "inventory/lab").mkdir(parents=True)
    (repo / "playbooks").mkdir()
    shutil.copytree(ROOT / "playbooks/drills", repo / "playbooks/drills")
    return repo


def test_run_records_a_pass_and_exit_codes(root, tmp_path, capsys):
    cmd = _fake_playbook(tmp_path, {"status": "ok", "started": 1767225600, "recovery_s": 1.5,
                                    "data_lost": {"orders": 0, "fills": 0}})
    assert drills.run("a", "lab", root, playbook_cmd=cmd) == 0
    assert "drill a: PASS (recovery 1.5 s, target 5.0 s)" in capsys.readouterr().out
    records = json.loads((root / "build/drills.json").read_text())
    assert records[0]["result"] == "pass" and records[0]["commit"] == "unknown"  # not a git checkout


def test_a_refusal_records_nothing(root, tmp_path):
    cmd = _fake_playbook(tmp_path, {"status": "refused", "reason": "drill c needs the bot deployed: run "
                                                                   "playbooks/deploy.yml"}, rc=2)
    with pytest.raises(drills.DrillError, match="drill c needs the bot deployed: run playbooks/deploy.yml"):
        drills.run("c", "lab", root, playbook_cmd=cmd)
    assert not (root / "build/drills.json").exists()


def test_a_playbook_that_dies_without_a_result_is_a_recorded_failure(root, tmp_path, capsys):
    assert drills.run("b", "lab", root, playbook_cmd=_fake_playbook(tmp_path, None, rc=4)) == 1
    out = capsys.readouterr().out
    assert "drill b: FAIL" in out and "ansible-playbook exited 4 before writing a result" in out
    assert "state left: unknown" in out


def test_a_second_drill_is_refused_while_one_runs(root, capsys):
    import fcntl

    (root / "build").mkdir(exist_ok=True)
    with open(root / "build" / ".drill.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert drills.main(Namespace(name="a", env="lab", extra_vars=[]), root) == 2
    assert "another drill is running" in capsys.readouterr().err
    assert not (root / "build" / "drills.json").exists()


def test_main_reports_refusals_in_one_line(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(drills, "run", lambda *a, **k: (_ for _ in ()).throw(drills.DrillError("drill d needs X")))
    assert drills.main(Namespace(name="d", env="lab", extra_vars=[]), root) == 2
    assert capsys.readouterr().err == "error: drill d needs X\n"


PLAYBOOK = shutil.which("ansible-playbook") or str(Path(os.sys.executable).with_name("ansible-playbook"))


@pytest.mark.skipif(not Path(PLAYBOOK).exists(), reason="needs ansible-playbook")
@pytest.mark.parametrize("name, message", [
    ("a", "drill a needs the bot deployed: run playbooks/deploy.yml"),
    ("b", "drill b needs the bot deployed: run playbooks/deploy.yml"),
    ("c", "drill c needs the bot deployed: run playbooks/deploy.yml"),
    ("d", "drill d needs PostgreSQL: run playbooks/site.yml"),
])
def test_the_real_playbooks_refuse_without_their_hosts(root, tmp_path, name, message):
    """ansible-playbook for real, against an inventory of localhost only: nothing but the controller is touched."""
    (root / "inventory/lab/hosts.yml").write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                                                  "      ansible_python_interpreter: " + os.sys.executable + "\n")
    env_cfg = tmp_path / "ansible.cfg"
    env_cfg.write_text("[defaults]\nstdout_callback = default\nretry_files_enabled = false\n")
    old = os.environ.get("ANSIBLE_CONFIG")
    os.environ["ANSIBLE_CONFIG"] = str(env_cfg)
    try:
        with pytest.raises(drills.DrillError) as err:
            drills.run(name, "lab", root, playbook_cmd=[PLAYBOOK])
    finally:
        if old is None:
            os.environ.pop("ANSIBLE_CONFIG")
        else:
            os.environ["ANSIBLE_CONFIG"] = old
    assert str(err.value) == message
    assert not (root / "build/drills.json").exists()
    cli = subprocess.run([os.sys.executable, "-m", "rampart.drills", "drill", name], capture_output=True, text=True,
                         env={**os.environ, "RAMPART_ROOT": str(root), "ANSIBLE_CONFIG": str(env_cfg),
                              "PATH": f"{Path(PLAYBOOK).parent}:{os.environ['PATH']}"}, check=False)
    assert cli.returncode == 2 and cli.stderr.strip().endswith(f"error: {message}")
