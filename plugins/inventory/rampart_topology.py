"""Ansible inventory plugin: the hosts, groups and addresses of ``inventory/<env>/topology.yml``.

A thin adapter over ``rampart.topology`` (the one place the topology is understood)."""

from __future__ import annotations

import sys
from pathlib import Path

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

DOCUMENTATION = r"""
name: rampart_topology
short_description: hosts and groups from a rampart topology.yml
description:
  - Reads a rampart topology file (the one naming this plugin) and adds every host but the
    controller, one group per zone and one per role, with C(ansible_host) set to the host's management
    address and the derived addresses as host variables.
options:
  plugin:
    description: the name of this plugin
    required: true
    choices: [rampart_topology]
"""

# The plugin lives in the repository next to the package it adapts.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))

from rampart.topology import TopologyError, load  # noqa: E402


class InventoryModule(BaseInventoryPlugin):
    NAME = "rampart_topology"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and Path(path).name == "topology.yml"

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        try:
            topo = load(path)
        except TopologyError as exc:
            raise AnsibleParserError(str(exc)) from None
        ctl = topo.controller
        mgmt = topo.management_zone.name
        for zone in topo.zones:
            self.inventory.add_group(zone)
        for host in topo.managed_hosts():
            self.inventory.add_host(host.name, group=host.zone)
            for role in host.roles:
                self.inventory.add_group(role)
                self.inventory.add_host(host.name, group=role)
            if topo.zones[host.zone].external:
                self.inventory.add_group("outside")
                self.inventory.add_host(host.name, group="outside")
            else:
                self.inventory.add_group("platform")
                self.inventory.add_host(host.name, group="platform")
            v = {
                "ansible_host": str(topo.access_address(host.name)),
                "rampart_zone": host.zone,
                "rampart_roles": list(host.roles),
                "rampart_addresses": {z: str(a) for z, a in host.addresses.items()},
                # The controller's address on a network this host shares (apt proxy, time source).
                "rampart_controller_address": str(next(
                    (ctl.addresses[z] for z in sorted(host.addresses, key=lambda z: z != mgmt)
                     if z in ctl.addresses), topo.access_address(host.name))),
            }
            for key, value in v.items():
                self.inventory.set_variable(host.name, key, value)
        self.inventory.set_variable("all", "rampart_topology_file", str(Path(path).resolve()))
        self.inventory.set_variable("all", "rampart_environment", topo.name)
        self.inventory.set_variable("all", "rampart_domain", topo.domain)
