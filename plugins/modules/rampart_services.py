#!/usr/bin/python
"""Ansible module: several systemd units brought to their wanted state (masked, enabled, running) in one call.

`systemd_service` in a loop asks systemctl three or four times per unit and costs a module call per unit; a
role that keeps a few units in shape paid that on every host in every converge. This reads every unit's state
with one `systemctl show` and runs systemctl only for what differs, with the same meanings as
systemd_service (enabled = `is-enabled` would succeed: enabled, static, alias, indirect …)."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: rampart_services
short_description: Several systemd units masked/enabled/started as wanted, in one call
description:
  - Reads all units with one C(systemctl show) and changes only what differs, in the order mask/unmask,
    enable/disable, start/stop. A unit systemd does not know fails the task, naming it.
options:
  units:
    description: "Each: name, and any of masked (bool), enabled (bool), state (started or stopped); an option
      left out (or null) is not managed."
    type: list
    elements: dict
    required: true
  daemon_reload:
    description: Run C(systemctl daemon-reload) first (when a unit file changed).
    type: bool
    default: false
"""

RETURN = r"""
actions:
  description: The systemctl commands run (or that would run, in check mode), as "verb unit".
  returned: always
  type: list
"""

PROPERTIES = ("Id", "LoadState", "UnitFileState", "ActiveState")
# `systemctl is-enabled` exits 0 for these: what systemd_service calls enabled.
ENABLED = {"enabled", "enabled-runtime", "static", "alias", "indirect", "generated", "linked", "linked-runtime"}
RUNNING = {"active", "activating", "reloading", "refreshing"}


def parse_show(text: str) -> list[dict[str, str]]:
    """`systemctl show -p ... a b` output: one block of KEY=value lines per unit, blank-line separated."""
    units, current = [], {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if current:
                units.append(current)
            current = {}
            continue
        key, _, value = line.partition("=")
        current[key] = value
    return units


def plan(wanted: dict, state: dict[str, str]) -> list[str]:
    """The systemctl verbs that bring one unit from `state` (its show properties) to `wanted`."""
    verbs = []
    file_state = state.get("UnitFileState", "")
    if wanted.get("masked") is True and file_state not in ("masked", "masked-runtime"):
        verbs.append("mask")
        file_state = "masked"
    elif wanted.get("masked") is False and file_state in ("masked", "masked-runtime"):
        verbs.append("unmask")
        file_state = "disabled"
    if wanted.get("enabled") is True and file_state not in ENABLED:
        verbs.append("enable")
    elif wanted.get("enabled") is False and file_state in ("enabled", "enabled-runtime"):
        verbs.append("disable")
    running = state.get("ActiveState", "") in RUNNING
    if wanted.get("state") == "started" and not running:
        verbs.append("start")
    elif wanted.get("state") == "stopped" and running:
        verbs.append("stop")
    return verbs


def main() -> None:
    module = AnsibleModule(argument_spec={"units": {"type": "list", "elements": "dict", "required": True},
                                          "daemon_reload": {"type": "bool", "default": False}},
                           supports_check_mode=True)
    units = module.params["units"]
    for index, unit in enumerate(units):
        unknown = sorted(set(unit) - {"name", "masked", "enabled", "state"})
        if not isinstance(unit.get("name"), str) or not unit["name"] or unknown:
            module.fail_json(msg=f"units[{index}]: needs a name and only masked, enabled, state (got {sorted(unit)})")
        if unit.get("state") not in (None, "started", "stopped"):
            module.fail_json(msg=f"{unit['name']}: state must be started or stopped, got {unit['state']!r}")
    systemctl = module.get_bin_path("systemctl", required=True)
    if module.params["daemon_reload"] and not module.check_mode:
        rc, _, err = module.run_command([systemctl, "daemon-reload"])
        if rc != 0:
            module.fail_json(msg=f"systemctl daemon-reload failed: {err.strip()}")
    names = [unit["name"] for unit in units]
    if not names:  # `systemctl show` without a unit would describe the manager itself
        module.exit_json(changed=False, actions=[])
    rc, out, err = module.run_command([systemctl, "show", "--property=" + ",".join(PROPERTIES), "--", *names])
    if rc != 0:
        module.fail_json(msg=f"systemctl show failed: {err.strip()}")
    shown = parse_show(out)
    if len(shown) != len(names):
        module.fail_json(msg=f"systemctl show answered for {len(shown)} of {len(names)} units: {out[:500]}")
    actions = []
    for unit, state in zip(units, shown, strict=True):
        if state.get("LoadState") == "not-found":
            module.fail_json(msg=f"{unit['name']}: systemd knows no such unit", actions=actions)
        for verb in plan(unit, state):
            actions.append(f"{verb} {unit['name']}")
            if module.check_mode:
                continue
            rc, _, err = module.run_command([systemctl, verb, "--", unit["name"]])
            if rc != 0:
                module.fail_json(msg=f"systemctl {verb} {unit['name']} failed: {err.strip()}", actions=actions)
    module.exit_json(changed=bool(actions), actions=actions)


if __name__ == "__main__":
    main()
