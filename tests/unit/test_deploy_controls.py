"""Compliance controls rampart-bot-* over facts shaped like the collector's, with the role's own rendered unit:
the role's output passes, each kind of drift fails with a message naming it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_deploy_units import render

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compliance"))
import compliance_core as core  # noqa: E402
import controls_bot as cb  # noqa: E402


def _st(user="root", group="root", mode=0o600, file=True):
    return {"mode": mode, "uid": 0, "gid": 0, "user": user, "group": group, "dir": not file, "file": file, "size": 1}


def _data(unit: str | None = None) -> dict:
    unit = render("bot", "rampart-bot.service.j2") if unit is None else unit
    stat = {cb.CREDENTIALS_DIR: _st(mode=0o700, file=False), cb.UNIT: _st(mode=0o644),
            cb.CONFIG: _st(group="rampart-bot", mode=0o640)}
    stat.update({f"{cb.CREDENTIALS_DIR}/{n}": _st() for n in ("api_key", "api_secret", "operator_token")})
    stat.update({p: _st(mode=0o755, file=False) for p in cb.RELEASE_DIRS})
    return {
        "users": [{"name": "rampart-bot", "uid": 998, "gid": 998, "home": "/var/lib/rampart-bot",
                   "shell": "/usr/sbin/nologin"}],
        "groups": {"sudo": ["ops"], "rampart-bot": []},
        "files": {cb.UNIT: unit, cb.CONFIG: render("bot", "bot.toml.j2")},
        "stat": stat,
        "units": "Id=rampart-bot.service\nActiveState=active\nSubState=running\nUnitFileState=enabled\n",
    }


def _facts(data: dict) -> core.Facts:
    return core.Facts(name="bot01", env="lab", data=data, roles=("bot",))


CHECKS = [cb.bot_user, cb.bot_credentials, cb.bot_no_secret_in_unit, cb.bot_sandbox, cb.bot_files, cb.bot_running]


def test_the_roles_output_passes_every_control():
    for check in CHECKS:
        check(_facts(_data()))


def test_the_controls_apply_to_bot_hosts_only():
    registered = {c.id: c for c in core.CONTROLS.values() if c.id.startswith("rampart-bot-")}
    assert sorted(registered) == [f"rampart-bot-0{i}" for i in range(1, 7)]
    other = core.Facts(name="db01", env="lab", data={}, roles=("postgres",))
    assert not any(c.applies(other) for c in registered.values())


def _unit(old: str, new: str) -> str:
    unit = render("bot", "rampart-bot.service.j2")
    assert old in unit
    return unit.replace(old, new)


@pytest.mark.parametrize("check, change, message", [
    (cb.bot_user, lambda d: d["users"][0].update(uid=1001), "not a system uid"),
    (cb.bot_user, lambda d: d["users"][0].__setitem__("shell", "/bin/bash"), "login shell /bin/bash"),
    (cb.bot_user, lambda d: d["groups"]["sudo"].append("rampart-bot"), r"in \['sudo'\]"),
    (cb.bot_user, lambda d: d["files"].update({cb.UNIT: _unit("User=rampart-bot", "User=root")}), "runs as"),
    (cb.bot_credentials, lambda d: d["stat"].update({f"{cb.CREDENTIALS_DIR}/api_key": _st(mode=0o644)}),
     "api_key is root:root 0644"),
    (cb.bot_credentials, lambda d: d["stat"].pop(f"{cb.CREDENTIALS_DIR}/operator_token"), "operator_token is missing"),
    (cb.bot_credentials, lambda d: d["stat"].update({cb.CREDENTIALS_DIR: _st(mode=0o755, file=False)}),
     "credentials is root:root 0755"),
    (cb.bot_credentials, lambda d: d["files"].update(
        {cb.UNIT: _unit("api_key:/etc/rampart-bot/credentials/api_key", "api_key:/tmp/api_key")}),
     "not one of the known"),
    (cb.bot_no_secret_in_unit, lambda d: d["files"].update(
        {cb.UNIT: _unit("[Service]\n", "[Service]\nEnvironment=API_SECRET=x\n")}), r"sets \['Environment'\]"),
    (cb.bot_no_secret_in_unit, lambda d: d["files"].update(
        {cb.UNIT: _unit("--config /etc/rampart-bot/bot.toml", "--config /etc/rampart-bot/bot.toml --api-key=abc")}),
     "passes"),
    (cb.bot_sandbox, lambda d: d["files"].update({cb.UNIT: _unit("ProtectSystem=strict", "ProtectSystem=full")}),
     "ProtectSystem"),
    (cb.bot_sandbox, lambda d: d["files"].update({cb.UNIT: _unit("CapabilityBoundingSet=\n", "")}),
     "CapabilityBoundingSet missing"),
    (cb.bot_sandbox, lambda d: d["files"].update(
        {cb.UNIT: _unit("PrivateTmp=yes", "PrivateTmp=yes\nReadWritePaths=/etc")}), "ReadWritePaths"),
    (cb.bot_files, lambda d: d["stat"].update({cb.CONFIG: _st(group="rampart-bot", mode=0o644)}), "bot.toml is"),
    (cb.bot_files, lambda d: d["files"].update({cb.CONFIG: 'api_secret = "x"\n'}), r"sets \['api_secret'\]"),
    (cb.bot_files, lambda d: d["stat"].update({"/opt/rampart-bot/releases": _st("rampart-bot", mode=0o755,
                                                                                 file=False)}), "releases is"),
    (cb.bot_running, lambda d: d.update(units="Id=rampart-bot.service\nActiveState=failed\nUnitFileState=enabled\n"),
     "failed"),
])
def test_drift_fails_with_its_name(check, change, message):
    data = _data()
    change(data)
    with pytest.raises(AssertionError, match=message):
        check(_facts(data))
