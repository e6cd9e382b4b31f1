"""The Ansible inventory of a topology, as plain data: hosts with their variables, groups, global vars.

One function serves both adapters, so they cannot drift: the inventory plugin feeds it the model's host
views directly, the Pulumi inventory feeds it the same views read back from the stack outputs.

Groups: one per zone (hosts whose home zone it is), one per role, ``service_<name>`` per service a host
runs, ``client_<name>`` per service a host may connect to, and ``platform`` / ``outside``. ``ansible_host``
is the address the controller SSHes to; everything else a role needs about its host is in ``rampart_host``
(see :class:`rampart.topology.HostView`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rampart.topology import Topology

SERVICE_GROUP_PREFIX = "service_"  # hosts that run the service
CLIENT_GROUP_PREFIX = "client_"  # hosts the topology lets connect to it


def topology_vars(topo: Topology) -> dict[str, Any]:
    """Variables every host sees: the environment, the services and the labelled scrape targets."""
    return {
        "rampart_environment": topo.name,
        "rampart_domain": topo.domain,
        "rampart_services": {s.name: {"port": s.port, "proto": s.proto, "plane": s.plane, "hosts": list(s.hosts)}
                             for s in topo.services.values()},
        "rampart_scrape_targets": topo.scrape_endpoints(),
    }


def build(views: Mapping[str, Mapping[str, Any]], zones: Iterable[str],
          global_vars: Mapping[str, Any]) -> dict[str, Any]:
    """``{"vars": …, "hosts": {name: hostvars}, "groups": {group: [hosts]}}`` from per-host views (the
    ``as_vars()`` form) of the managed hosts."""
    groups: dict[str, set[str]] = {z: set() for z in zones}  # every zone, even one with no home hosts
    hosts: dict[str, dict[str, Any]] = {}
    for name in sorted(views):
        view = views[name]
        hosts[name] = {"ansible_host": view["access_address"], "rampart_host": dict(view)}
        member_of = [view["zone"], "platform" if view["platform"] else "outside", *view["roles"],
                     *(SERVICE_GROUP_PREFIX + s for s in view["listens"]),
                     *(CLIENT_GROUP_PREFIX + s for s in view["connects"])]
        for group in member_of:
            groups.setdefault(group, set()).add(name)
    return {"vars": dict(global_vars), "hosts": hosts,
            "groups": {g: sorted(members) for g, members in sorted(groups.items())}}


def from_topology(topo: Topology) -> dict[str, Any]:
    views = {h.name: topo.host_view(h.name).as_vars() for h in topo.managed_hosts()}
    return build(views, topo.zones, topology_vars(topo))
