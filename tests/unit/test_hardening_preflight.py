"""The hardening role's lock-out check, run for real (include_role tasks_from=preflight on localhost): it only
reads, so nothing on this machine changes. One check names every reason at once."""

from __future__ import annotations

import json

from test_data_support import inventory, run_playbook, write_playbook


def _preflight(tmp_path, address="127.0.0.1", **overrides):
    play = write_playbook(tmp_path, "preflight.yml", [{
        "name": "preflight", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Lock-out check", "ansible.builtin.include_role":
                   {"name": "hardening", "tasks_from": "preflight"}}],
    }])
    inv = inventory(tmp_path, hostvars={"ansible_host": address})
    return run_playbook(play, inv, "-e", json.dumps(overrides))


def test_every_way_to_lock_the_automation_user_out_is_named(tmp_path):
    run = _preflight(tmp_path, hardening_ssh_automation_user="rampart-nobody", hardening_ssh_allow_users=["ops"],
                     hardening_ssh_listen_address="127.0.0.1", hardening_ssh_listen_extra=[],
                     hardening_sudo_nopasswd_users=["ops"])
    assert run.rc != 0
    failure = run.failures()
    assert "hardening on db01:" in failure
    assert "would lock out rampart-nobody@127.0.0.1: allow_users=['ops']" in failure
    assert "rampart-nobody has no authorized key" in failure
    assert "rampart-nobody must stay in hardening_sudo_nopasswd_users" in failure


def test_a_listen_address_that_is_not_the_way_in_is_refused(tmp_path):
    run = _preflight(tmp_path, address="127.0.0.5", hardening_ssh_automation_user="root",
                     hardening_ssh_allow_users=["root"], hardening_ssh_listen_address="10.99.0.1",
                     hardening_ssh_listen_extra=[],
                     hardening_sudo_enabled=False)
    assert run.rc != 0
    assert "would lock out root@127.0.0.5: allow_users=['root'], listen=['10.99.0.1'], port=22" in run.failures()


def test_with_ssh_and_sudo_left_alone_there_is_nothing_to_refuse(tmp_path):
    run = _preflight(tmp_path, hardening_ssh_enabled=False, hardening_sudo_enabled=False)
    assert run.rc == 0, run.failures()
