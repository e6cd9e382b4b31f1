"""What Docker must create for a topology: networks, containers, their addresses and privileges.

Pure (no Pulumi, no Docker): :func:`build` takes a loaded :class:`~rampart.topology.Topology` and the stack
:class:`~rampart.pulumi.settings.Settings` and returns a :class:`Plan`, or raises :class:`PlanError` when
the topology is one Docker cannot express. The program and the policy pack's tests both read it.

Address plan on Docker
- Every zone except the ``vpn`` one (WireGuard lives inside the gateway) is one bridge network with the
  zone's CIDR. External zones are the only non-internal networks; egress from internal zones goes through
  the gateway's NAT, so even ``egress: true`` zones stay internal.
- Docker needs an IPAM gateway address per network. Where the topology gives a zone's first address to the
  controller (or leaves it to the upstream router of an external zone), the Docker host *is* that
  controller/upstream, so the IPAM gateway is that first address. Where the gateway container owns the
  first address (internal zones), the IPAM gateway is the zone's last usable address, and the bridge is
  given no address at all (``inhibit_ipv4``) so the Docker host has no leg in that zone.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from rampart import inventory
from rampart.pulumi.settings import Settings
from rampart.topology import Topology

# Docker's default set minus MKNOD and NET_RAW: what systemd as PID 1, sshd, sudo and dpkg need.
# AUDIT_WRITE: sshd/PAM login records. SETPCAP: systemd narrowing each unit's bounding set.
# SETFCAP: dpkg installing packages that ship file capabilities. SYS_CHROOT: sshd privilege separation.
BASE_CAPABILITIES = (
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
)
# Extra capabilities, each tied to a reason the topology states.
NET_ADMIN = "NET_ADMIN"  # nftables rulesets, routes via the gateway, WireGuard interfaces
IPC_LOCK = "IPC_LOCK"  # Vault mlock()s its memory so secrets never reach swap
# Which host needs IPC_LOCK and /dev/net/tun is the topology model's call (HostView.memlock / .tun).
ALLOWED_CAPABILITIES = (*BASE_CAPABILITIES, NET_ADMIN, IPC_LOCK)

# Directories whose contents must survive a container being replaced (new image, changed settings).
ROLE_DATA_DIRS: dict[str, tuple[str, ...]] = {
    "postgres": ("/var/lib/postgresql",),
    "vault": ("/var/lib/vault",),
    "prometheus": ("/var/lib/prometheus",),
    "alertmanager": ("/var/lib/alertmanager",),
    "loki": ("/var/lib/loki",),
    "grafana": ("/var/lib/grafana",),
    "backup_server": ("/srv/backup",),
    "bot": ("/var/lib/rampart-bot",),
}

# net.* sysctls are per network namespace, and /proc/sys is read-only inside a Docker container, so the
# hardening baseline the role would set on a real host is set here at creation instead.
BASE_SYSCTLS = {
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.all.log_martians": "1",
    # unprivileged ICMP echo sockets, so ping works without NET_RAW
    "net.ipv4.ping_group_range": "0 2147483647",
}
GATEWAY_SYSCTLS = {"net.ipv4.ip_forward": "1"}

# systemd mounts nothing itself without CAP_SYS_ADMIN, so /run, /run/lock and /tmp come pre-mounted.
TMPFS = {
    "/run": "rw,nosuid,nodev,mode=755",
    "/run/lock": "rw,nosuid,nodev,noexec",
    # The hardening baseline's flags (os-14..16): containers cannot remount, so they come mounted this way.
    "/tmp": "rw,nosuid,nodev,noexec",  # noqa: S108 - a mount point inside the container, not a temp file
    "/var/tmp": "rw,nosuid,nodev,noexec",  # noqa: S108 - a mount point too
    "/dev/shm": "rw,nosuid,nodev,noexec",  # noqa: S108 - a mount point too
}
CGROUP_DELEGATION_ROOT = "/sys/fs/cgroup"


class PlanError(ValueError):
    """A topology the Docker backend cannot express; the message names the key or setting to change."""


@dataclass(frozen=True)
class NetworkPlan:
    zone: str
    name: str  # the Docker network name
    subnet: ipaddress.IPv4Network
    ipam_gateway: ipaddress.IPv4Address
    internal: bool
    host_leg: bool  # whether the Docker host keeps an address on this bridge


@dataclass(frozen=True)
class Attachment:
    zone: str
    network: str
    address: ipaddress.IPv4Address


@dataclass(frozen=True)
class PublishedPort:
    port: int
    proto: str
    bind: str
    service: str


@dataclass(frozen=True)
class ContainerPlan:
    host: str
    name: str
    zone: str
    roles: tuple[str, ...]
    attachments: tuple[Attachment, ...]
    capabilities: tuple[str, ...]
    devices: tuple[str, ...]
    sysctls: dict[str, str]
    data_dirs: tuple[str, ...]
    ports: tuple[PublishedPort, ...] = ()

    @property
    def zones(self) -> tuple[str, ...]:
        return tuple(a.zone for a in self.attachments)


@dataclass(frozen=True)
class Plan:
    stack: str
    topology: Topology
    settings: Settings
    networks: dict[str, NetworkPlan]
    containers: dict[str, ContainerPlan]
    wireguard: PublishedPort | None = None
    labels: dict[str, str] = field(default_factory=dict)
    root: Path = Path(".")  # the project root, for printing the topology path as configured

    def _zone_output(self, zone: str) -> dict[str, object]:
        net = self.networks.get(zone)
        return {
            "cidr": str(self.topology.zones[zone].cidr),
            "internal": self.topology.zones[zone].internal,
            "network": net.name if net else None,
            "dockerGateway": str(net.ipam_gateway) if net else None,
        }

    def outputs(self) -> dict[str, object]:
        """Everything Ansible needs, as plain JSON-able values (the stack outputs)."""
        topo = self.topology
        hosts = {}
        for c in self.containers.values():
            view = topo.host_view(c.host).as_vars()
            hosts[c.host] = {
                "zone": c.zone,
                "zones": list(c.zones),  # the Docker networks it is attached to
                "roles": list(c.roles),
                "accessAddress": view["access_address"],
                # the controller (= the Docker host's bridge) on a network this host shares, if any
                "controllerAddress": view["controller_address"],
                "container": c.name,
                "view": view,  # the model's per-host view: the inventory's rampart_host
            }
        try:
            topology_file = str(self.settings.topology.relative_to(self.root))
        except ValueError:
            topology_file = str(self.settings.topology)
        out: dict[str, object] = {
            "stack": self.stack,
            "topologyName": topo.name,
            "domain": topo.domain,
            "topologyFile": topology_file,
            "dockerHost": self.settings.docker_host,
            "sshUser": self.settings.ssh_user,
            # every zone; the vpn zone has no Docker network (it lives inside the gateway)
            "zones": {z.name: self._zone_output(z.name) for z in topo.zones.values()},
            "hosts": hosts,
            # the topology's whole address plan per host, including legs with no Docker network (vpn)
            "addresses": {
                c.host: {z: str(a) for z, a in topo.hosts[c.host].addresses.items()}
                for c in self.containers.values()
            },
            "wireguard": None,
            "topologyVars": inventory.topology_vars(topo),
        }
        if self.wireguard is not None:
            gw = self.containers[topo.gateway]
            outside = next((a for a in gw.attachments if topo.zones[a.zone].external), None)
            out["wireguard"] = {
                "host": gw.host,
                "port": self.wireguard.port,
                "proto": self.wireguard.proto,
                "address": str(outside.address) if outside else None,
                "published": f"{self.wireguard.bind}:{self.wireguard.port}/{self.wireguard.proto}",
            }
        return out


def docker_name(stack: str, name: str) -> str:
    """Docker object names: prefixed so several stacks can share one Docker host."""
    return f"rampart-{stack}-{name}"


def slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def _networks(topo: Topology, settings: Settings, stack: str) -> dict[str, NetworkPlan]:
    owners: dict[str, dict[ipaddress.IPv4Address, str]] = {z: {} for z in topo.zones}
    for h in topo.hosts.values():
        for z, addr in h.addresses.items():
            owners[z][addr] = h.name
    out = {}
    for z in topo.zones.values():
        if z.vpn:
            continue  # WireGuard peers: an interface inside the gateway, not a Docker network
        for reserved in settings.reserved_subnets:
            if z.cidr.overlaps(reserved):
                raise PlanError(
                    f"{topo.source}: zones.{z.name}.cidr: {z.cidr} overlaps {reserved}, which "
                    "rampart:reservedSubnets says is already in use on the Docker host; pick another CIDR"
                )
        first = next(z.cidr.hosts())
        first_owner = owners[z.name].get(first)
        if first_owner is None or topo.hosts[first_owner].is_controller:
            gateway, host_leg = first, True
        else:
            gateway, host_leg = z.cidr.broadcast_address - 1, False
            clash = owners[z.name].get(gateway)
            if clash is not None:
                raise PlanError(
                    f"{topo.source}: hosts.{clash}: has {gateway}, the last usable address of zone "
                    f"{z.name!r}, which the Docker backend reserves as the network's IPAM gateway; "
                    f"pin hosts.{clash}.address to another address in {z.cidr}"
                )
        out[z.name] = NetworkPlan(z.name, docker_name(stack, z.name), z.cidr, gateway,
                                  internal=not z.external, host_leg=host_leg)
    return out


def _container(topo: Topology, settings: Settings, stack: str, networks: dict[str, NetworkPlan],
               host: str) -> ContainerPlan:
    h = topo.hosts[host]
    attachments = tuple(
        Attachment(z, networks[z].name, addr) for z, addr in h.addresses.items() if not topo.zones[z].vpn
    )
    zone = topo.zones[h.zone]
    is_gateway = host == topo.gateway
    view = topo.host_view(host)
    tunnel = view.tun
    caps = list(BASE_CAPABILITIES)
    # The gateway routes and NATs; internal hosts run their own default-deny nftables firewall (the
    # management bridge bypasses the gateway) and need a route via the gateway; tunnel hosts run WireGuard.
    if is_gateway or zone.internal or tunnel:
        caps.append(NET_ADMIN)
    if view.memlock:
        caps.append(IPC_LOCK)
    devices = ("/dev/net/tun",) if tunnel else ()
    dirs: list[str] = []
    for role in h.roles:
        for d in (*ROLE_DATA_DIRS.get(role, ()), *settings.data_dirs.get(role, ())):
            if d not in dirs:
                dirs.append(d)
    taken = {}
    for d in dirs:
        key = slug(d)
        if key in taken:
            raise PlanError(f"rampart:dataDirs: {d!r} and {taken[key]!r} on host {host!r} map to one volume")
        taken[key] = d
    ports = ()
    wg = topo.services.get("wireguard")
    if wg is not None and host in wg.hosts:
        ports = (PublishedPort(wg.port, wg.proto, settings.wireguard_bind_address, wg.name),)
    sysctls = dict(BASE_SYSCTLS)
    if is_gateway:
        sysctls.update(GATEWAY_SYSCTLS)
    return ContainerPlan(host, docker_name(stack, host), h.zone, h.roles, attachments, tuple(sorted(caps)),
                         devices, sysctls, tuple(dirs), ports)


def build(topo: Topology, settings: Settings, stack: str, root: Path = Path(".")) -> Plan:
    networks = _networks(topo, settings, stack)
    wg = topo.services.get("wireguard")
    if wg is not None and wg.hosts != (topo.gateway,):
        raise PlanError(f"{topo.source}: services.wireguard.hosts: the Docker backend publishes WireGuard "
                        f"only on the gateway ({topo.gateway!r}), got {', '.join(wg.hosts)}")
    if wg is not None and not any(topo.zones[z].external for z in topo.hosts[topo.gateway].addresses):
        raise PlanError(f"{topo.source}: gateway: {topo.gateway!r} has no leg in an external zone, so "
                        "nothing outside could reach its WireGuard port")
    containers = {h.name: _container(topo, settings, stack, networks, h.name)
                  for h in sorted(topo.managed_hosts(), key=lambda h: h.name)}
    published = [p for c in containers.values() for p in c.ports]
    return Plan(stack, topo, settings, networks, containers, published[0] if published else None,
                {"rampart.stack": stack, "rampart.topology": topo.name}, root)
