"""plugins/action/rampart_files (+ modules/rampart_file_state): many managed files in one task, run for real by
ansible-playbook against this machine (connection local) inside a temporary directory."""

from __future__ import annotations

import grp
import json
import os
import pwd
from pathlib import Path

import pytest
from support.plugins import run_ansible

OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name

PLAY = """
- hosts: localhost
  gather_facts: false
  vars:
    greeting: hello
  tasks:
    - name: Write the files
      rampart_files:
        owner: {owner}
        group: {group}
        files: {files}
      register: written
    - name: Show what changed
      ansible.builtin.debug:
        var: written.changed_files
  handlers:
    - name: First handler
      ansible.builtin.debug:
        msg: first fired
    - name: Second handler
      ansible.builtin.debug:
        msg: second fired
"""


def run(tmp: Path, files: list[dict], *extra: str) -> tuple[int, dict]:
    """ansible-playbook with the json callback; the play's tasks by name -> localhost's result."""
    (tmp / "play.yml").write_text(PLAY.format(owner=OWNER, group=GROUP, files=json.dumps(files)))
    return run_ansible(str(tmp / "play.yml"), *extra, playbook=True)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates/greeting.j2").write_text(
        "{{ greeting }} from {{ inventory_hostname }}\n{% if true %}\nx\n{% endif %}\n")
    (tmp_path / "files").mkdir()
    (tmp_path / "files/script.sh").write_bytes(b"#!/bin/sh\necho verbatim {{ not templated }}\n")
    return tmp_path


def files_for(tmp: Path) -> list[dict]:
    out = tmp / "out"
    return [
        {"dest": str(out), "state": "directory", "mode": "0750"},
        {"src": "greeting.j2", "dest": str(out / "greeting"), "mode": "0640", "notify": "First handler"},
        {"content": "literal\n", "dest": str(out / "literal"), "mode": "0600", "notify": "Second handler"},
        {"copy": "script.sh", "dest": str(out / "script"), "mode": "0755", "validate": "/bin/sh -n %s"},
        {"content": "never\n", "dest": str(out / "disabled"), "mode": "0644", "enabled": False},
        {"dest": str(out / "stale"), "state": "absent"},
    ]


def test_first_run_writes_everything_and_a_second_changes_nothing(tree: Path):
    out = tree / "out"
    rc, tasks = run(tree, files_for(tree))
    assert rc == 0, tasks
    result = tasks["Write the files"]
    assert result["changed"] is True
    assert result["changed_files"] == [str(out), str(out / "greeting"), str(out / "literal"), str(out / "script")]
    # rendered exactly as ansible.builtin.template renders (trim_blocks), copied verbatim, literal as given
    assert (out / "greeting").read_text() == "hello from localhost\nx\n"
    assert (out / "script").read_bytes() == b"#!/bin/sh\necho verbatim {{ not templated }}\n"
    assert (out / "literal").read_text() == "literal\n"
    assert not (out / "disabled").exists()
    modes = {name: oct((out / name).stat().st_mode & 0o7777) for name in ("greeting", "literal", "script")}
    assert modes == {"greeting": "0o640", "literal": "0o600", "script": "0o755"}
    assert oct(out.stat().st_mode & 0o7777) == "0o750"
    assert {"First handler", "Second handler"} <= set(tasks)  # both notified: both files were new

    rc, tasks = run(tree, files_for(tree))
    assert rc == 0
    assert tasks["Write the files"]["changed"] is False and tasks["Write the files"]["changed_files"] == []
    assert "First handler" not in tasks and "Second handler" not in tasks


def test_a_drifted_file_is_restored_and_notifies_only_its_own_handler(tree: Path):
    out = tree / "out"
    assert run(tree, files_for(tree))[0] == 0
    (out / "literal").write_text("tampered\n")
    (out / "greeting").chmod(0o666)  # mode only: content unchanged
    (out / "stale").write_text("left over\n")
    rc, tasks = run(tree, files_for(tree))
    assert rc == 0
    assert tasks["Write the files"]["changed_files"] == [str(out / name) for name in ("greeting", "literal", "stale")]
    assert (out / "literal").read_text() == "literal\n"
    assert oct((out / "greeting").stat().st_mode & 0o7777) == "0o640"
    assert not (out / "stale").exists()
    assert "Second handler" in tasks and "First handler" in tasks  # greeting's mode changed, literal's content


def test_check_mode_reports_but_writes_nothing(tree: Path):
    out = tree / "out"
    assert run(tree, files_for(tree))[0] == 0
    (out / "literal").write_text("tampered\n")
    rc, tasks = run(tree, files_for(tree), "--check", "--diff")
    assert rc == 0
    assert tasks["Write the files"]["changed_files"] == [str(out / "literal")]
    assert (out / "literal").read_text() == "tampered\n"


def test_a_file_that_fails_validation_is_not_installed(tree: Path):
    out = tree / "out"
    assert run(tree, files_for(tree))[0] == 0
    (tree / "files/script.sh").write_text("#!/bin/sh\nif then fi (\n")
    rc, tasks = run(tree, files_for(tree))
    result = tasks["Write the files"]
    assert rc != 0 and result["failed"] is True
    assert result["msg"].startswith(f"{out / 'script'}: ")
    assert (out / "script").read_bytes() == b"#!/bin/sh\necho verbatim {{ not templated }}\n"  # the old one stays


@pytest.mark.parametrize(("entry", "message"), [
    ({"dest": "relative/path", "content": "x", "mode": "0644"}, "dest must be an absolute path"),
    ({"dest": "/nonexistent/x", "content": "x", "mode": 644}, 'mode must be a quoted octal string such as "0644"'),
    ({"dest": "/nonexistent/x", "content": "x", "src": "greeting.j2", "mode": "0644"}, "one of src (template), copy"),
    ({"dest": "/nonexistent/x", "content": "x", "mode": "0644", "owner_typo": "root"}, "unknown keys owner_typo"),
    ({"dest": "/nonexistent/x", "state": "absent", "mode": "0644"}, "mode cannot go with state absent"),
    ({"dest": "/nonexistent/x", "src": "missing.j2", "mode": "0644"}, "/nonexistent/x: Could not find or access"),
])
def test_bad_entries_are_named_and_nothing_is_written(tree: Path, entry: dict, message: str):
    good = {"content": "x\n", "dest": str(tree / "good"), "mode": "0644"}
    rc, tasks = run(tree, [good, entry])
    result = tasks["Write the files"]
    assert rc != 0 and result["failed"] is True
    assert message in result["msg"], result["msg"]
    assert not (tree / "good").exists()  # checked before anything is written
