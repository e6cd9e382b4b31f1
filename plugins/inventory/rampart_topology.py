"""Ansible inventory plugin: the hosts, groups and variables of ``inventory/<env>/topology.yml``.

A thin adapter: :mod:`rampart.inventory` decides the hosts, groups and variables (the same data the Pulumi
inventory writes); this only hands them to Ansible."""

from __future__ import annotations

from pathlib import Path

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin
from rampart import inventory
from rampart.topology import TopologyError, load

DOCUMENTATION = r"""
name: rampart_topology
short_description: hosts and groups from a rampart topology.yml
description:
  - Reads a rampart topology file (the one naming this plugin) and adds every host but the controller,
    one group per zone, per role and per service (C(service_<name>)), plus C(platform) and C(outside).
    C(ansible_host) is the address the controller SSHes to; C(rampart_host) is the model's per-host view
    (addresses, listen addresses, clients, peers, apt proxy, time servers, substrate needs).
options:
  plugin:
    description: the name of this plugin
    required: true
    choices: [rampart_topology]
"""


class InventoryModule(BaseInventoryPlugin):
    NAME = "rampart_topology"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and Path(path).name == "topology.yml"

    def parse(self, inv, loader, path, cache=True):
        super().parse(inv, loader, path, cache)
        try:
            data = inventory.from_topology(load(path))
        except TopologyError as exc:
            raise AnsibleParserError(str(exc)) from None
        for group, members in data["groups"].items():
            self.inventory.add_group(group)
            for host in members:
                self.inventory.add_host(host, group=group)
        for host, hostvars in data["hosts"].items():
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)
        for key, value in data["vars"].items():
            self.inventory.set_variable("all", key, value)
        self.inventory.set_variable("all", "rampart_topology_file", str(Path(path).resolve()))
