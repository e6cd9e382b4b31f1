"""plugins/modules/rampart_services: what systemctl must do for each unit, decided from one `systemctl show`.
The module itself runs in the lab converge (units on real systemd hosts; this controller has no systemd)."""

from __future__ import annotations

import pytest
from support.plugins import load_plugin, run_ansible

module = load_plugin("plugins/modules/rampart_services.py")

SHOW = """Id=chrony.service
LoadState=loaded
UnitFileState=enabled
ActiveState=inactive

Id=apt-daily.timer
LoadState=loaded
UnitFileState=masked
ActiveState=inactive

Id=nope.service
LoadState=not-found
UnitFileState=
ActiveState=inactive
"""


def test_show_output_is_one_block_per_unit_in_order():
    units = module.parse_show(SHOW)
    assert [u["Id"] for u in units] == ["chrony.service", "apt-daily.timer", "nope.service"]
    assert units[1] == {"Id": "apt-daily.timer", "LoadState": "loaded", "UnitFileState": "masked",
                        "ActiveState": "inactive"}


@pytest.mark.parametrize(("wanted", "file_state", "active", "verbs"), [
    ({"enabled": True, "state": "started"}, "enabled", "active", []),  # the usual no-op
    ({"enabled": True, "state": "started"}, "disabled", "failed", ["enable", "start"]),
    ({"enabled": True}, "static", "inactive", []),  # is-enabled succeeds for static: nothing to enable
    ({"enabled": True, "state": None}, "enabled", "inactive", []),  # state not managed
    ({"enabled": False, "masked": True}, "enabled", "active", ["mask"]),  # masked first, then nothing to disable
    ({"enabled": False, "masked": True}, "masked", "inactive", []),
    ({"enabled": True, "masked": False}, "masked", "inactive", ["unmask", "enable"]),
    ({"enabled": False}, "enabled", "active", ["disable"]),
    ({"state": "stopped"}, "enabled", "activating", ["stop"]),
    ({"state": "started"}, "enabled", "reloading", []),
])
def test_only_what_differs_is_run(wanted, file_state, active, verbs):
    assert module.plan(wanted, {"UnitFileState": file_state, "ActiveState": active}) == verbs


def test_an_empty_unit_list_changes_nothing_and_asks_systemctl_nothing():
    """A role whose list came out empty (no stale timers, say): `systemctl show` without a unit would describe
    the manager itself, so the module must answer before asking. Runs the module for real (on a controller
    without a running systemd, asking would fail)."""
    rc, tasks = run_ansible("-m", "rampart_services", "-a", '{"units": []}')
    result = next(iter(tasks.values()))
    assert rc == 0, result
    assert result["changed"] is False and result["actions"] == []
