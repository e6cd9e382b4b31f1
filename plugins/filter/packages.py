"""Ansible filter: which of a role's Debian packages are not installed yet, from `ansible_facts.packages`
(package_facts' shape; the common role reads it once per converge with plugins/modules/rampart_packages).
Roles skip their apt task when nothing is missing: the apt module opens the package cache on every call
(1-3 s per host in the lab), which made apt tasks a fifth of a no-op converge. Without facts (a role run on
its own) every package counts as missing and apt decides."""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError


def rampart_missing_packages(specs, installed=None) -> list[str]:
    """The entries of ``specs`` ("name" or "name=version") that ``installed`` (package_facts' mapping of
    name to a list of {version: ...}) does not satisfy. ``installed`` None or undefined: all of them."""
    if isinstance(specs, str):
        specs = [specs]
    if not isinstance(specs, list) or not all(isinstance(s, str) and s.strip() for s in specs):
        raise AnsibleFilterError(f"rampart_missing_packages: expected package names, got {specs!r}")
    if installed is None:
        return list(specs)
    if not isinstance(installed, Mapping):
        raise AnsibleFilterError("rampart_missing_packages: the installed packages must be package_facts' mapping")
    missing = []
    for spec in specs:
        name, _, version = spec.partition("=")
        versions = {entry.get("version") for entry in installed.get(name, []) if isinstance(entry, Mapping)}
        if not versions or (version and version not in versions):
            missing.append(spec)
    return missing


class FilterModule:
    def filters(self):
        return {"rampart_missing_packages": rampart_missing_packages}
