"""The topology model: load, validate and derive everything from ``inventory/<env>/topology.yml``.

Pure: no I/O besides :func:`load` reading the one file. Every adapter (the Ansible inventory plugin and
filters, the lab, the Pulumi program, the segmentation suite) consumes the objects built here, so the
rules for *who may talk to whom* exist exactly once.

Vocabulary
- zone: a network with a CIDR. ``external`` zones are outside the platform; the ``management`` zone gives
  every non-external host a second, out-of-band address; the ``vpn`` zone holds WireGuard peers.
- host: lives in one home ``zone`` (plus the management zone, plus any ``also`` zones). The ``gateway``
  host has a leg in every zone and routes between them.
- service: a port on one or more hosts, listening on the host's management address (``plane: mgmt``) or
  on its home-zone address (``plane: zone``).
- flow: ``from`` (zones, hosts, ``platform`` or ``any``) → ``to`` (services). Nothing else is allowed.
  ``any`` is the whole outside world: every host in an external zone plus any address beyond it, arriving
  on the gateway's leg in that zone (for the VPN endpoint, which operators dial from anywhere).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rampart import yamlsafe

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
SELECTOR_ALL = "all"
SELECTOR_PLATFORM = "platform"
SELECTOR_ANY = "any"
KEYWORDS = (SELECTOR_ALL, SELECTOR_PLATFORM, SELECTOR_ANY)
# `any` expands, per external zone, to this pseudo-source: every address beyond that zone.
ANY_PREFIX = f"{SELECTOR_ANY}@"
ANYWHERE = ipaddress.IPv4Network("0.0.0.0/0")
CONTROLLER_ROLE = "controller"
PROTOCOLS = ("tcp", "udp")
PLANES = ("zone", "mgmt")
# Host addresses are derived from a hash of the name, so adding a host never moves another one.
FIRST_HOST_OFFSET = 10
# What a host needs from its substrate (the lab's nspawn, Pulumi's containers), by the services it runs.
MLOCK_SERVICES = ("vault",)  # mlock()s its memory so secrets never reach swap: CAP_IPC_LOCK
TUNNEL_SERVICES = ("wireguard",)  # wireguard-go needs /dev/net/tun (no kernel module is assumed)
CLIENT_TUNNEL_ROLES = ("operator",)  # operator machines dial in to the VPN
APT_PROXY_SERVICE, TIME_SERVICE, SSH_SERVICE = "apt_proxy", "ntp", "ssh"


def _escape(text: str, limit: int) -> str:
    """Printable ASCII as is, anything else as a Python escape (a file must not write to the terminal),
    clipped so that no input can produce a huge message."""
    out = "".join(ch if " " <= ch <= "~" else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return out if len(out) <= limit else out[:limit - 3] + "..."


class TopologyError(ValueError):
    """A topology that cannot be used. The message names the file, the key path and the problem, on one
    line of printable ASCII at most about 600 characters long."""

    def __init__(self, source: str, path: str, problem: str):
        source, path, problem = _escape(str(source), 160), _escape(str(path), 120), _escape(str(problem), 300)
        self.source, self.path, self.problem = source, path, problem
        super().__init__(f"{source}: {path}: {problem}")


@dataclass(frozen=True)
class Zone:
    name: str
    cidr: ipaddress.IPv4Network
    external: bool = False
    management: bool = False
    vpn: bool = False
    egress: bool = False
    simulated: bool = False  # an external zone the lab builds as a stand-in for the internet

    @property
    def internal(self) -> bool:
        return not self.external


@dataclass(frozen=True)
class Host:
    name: str
    zone: str
    roles: tuple[str, ...]
    also: tuple[str, ...] = ()
    addresses: Mapping[str, ipaddress.IPv4Address] = field(default_factory=dict)
    managed: bool = True  # False: an outside host that is not ours (a venue): no SSH, not in the inventory

    @property
    def is_controller(self) -> bool:
        return CONTROLLER_ROLE in self.roles


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    proto: str
    plane: str
    hosts: tuple[str, ...]
    scrape: bool = False  # a Prometheus metrics endpoint


@dataclass(frozen=True)
class Flow:
    sources: tuple[str, ...]  # zone names, host names or "platform", as written
    services: tuple[str, ...]
    why: str
    index: int


@dataclass(frozen=True, order=True)
class Endpoint:
    """One service instance: a port on one host, at the address that plane gives it."""

    host: str
    service: str
    address: ipaddress.IPv4Address
    port: int
    proto: str
    zone: str


@dataclass(frozen=True, order=True)
class Route:
    """How a packet from ``source`` reaches an endpoint: its source address as the target sees it,
    and, when it crosses the gateway, the zones it enters and leaves by and whether it is NATed."""

    source: str
    src_address: ipaddress.IPv4Address | ipaddress.IPv4Network
    via_gateway: bool
    in_zone: str
    out_zone: str
    nat: bool


@dataclass(frozen=True)
class HostView:
    """Everything a consumer (inventory, roles, Pulumi, the lab) needs to know about one host, decided
    here once. :meth:`as_vars` is the plain form Ansible sees as ``rampart_host``."""

    name: str
    fqdn: str
    zone: str
    roles: tuple[str, ...]
    controller: bool
    platform: bool  # in an internal zone, not the management zone, not the controller
    external: bool
    gateway: bool  # routes (and forwards) between zones
    addresses: Mapping[str, ipaddress.IPv4Address]
    management_address: ipaddress.IPv4Address | None
    access_address: ipaddress.IPv4Address  # what the controller SSHes to
    controller_address: ipaddress.IPv4Address | None  # the controller as this host sees it
    apt_proxy_url: str | None
    time_servers: tuple[str, ...]
    memlock: bool
    tun: bool
    isolated_management: bool  # its management leg may reach only the controller and the gateway (L2)
    default_gateway: ipaddress.IPv4Address | None
    routes: tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...]
    listens: Mapping[str, Endpoint]
    clients: Mapping[str, tuple[tuple[str, str], ...]]  # service -> (source, address as seen here)
    connects: Mapping[str, tuple[Endpoint, ...]]

    def as_vars(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fqdn": self.fqdn,
            "zone": self.zone,
            "roles": list(self.roles),
            "platform": self.platform,
            "external": self.external,
            "gateway": self.gateway,
            "addresses": {z: str(a) for z, a in self.addresses.items()},
            "management_address": _str(self.management_address),
            "access_address": str(self.access_address),
            "controller_address": _str(self.controller_address),
            "apt_proxy_url": self.apt_proxy_url,
            "time_servers": list(self.time_servers),
            "needs": {"memlock": self.memlock, "tun": self.tun, "isolated_management": self.isolated_management},
            "default_gateway": _str(self.default_gateway),
            "routes": [{"to": str(net), "via": str(via)} for net, via in self.routes],
            "listens": {s: {"address": str(e.address), "port": e.port, "proto": e.proto, "zone": e.zone}
                        for s, e in self.listens.items()},
            "clients": {s: [{"source": src, "address": addr} for src, addr in cs]
                        for s, cs in self.clients.items()},
            "connects": {s: [{"host": e.host, "address": str(e.address), "port": e.port, "proto": e.proto}
                             for e in es] for s, es in self.connects.items()},
        }


def _str(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, order=True)
class Rule:
    """One allowed (source → endpoint) pair, the unit every firewall is rendered from."""

    endpoint: Endpoint
    path: Route
    why: str


class Topology:
    def __init__(self, name: str, domain: str, zones: dict[str, Zone], hosts: dict[str, Host],
                 services: dict[str, Service], flows: list[Flow], gateway: str, source: str):
        self.name, self.domain, self.source = name, domain, source
        self.zones, self.hosts, self.services, self.flows = zones, hosts, services, flows
        self.gateway = gateway

    # ---- lookups -------------------------------------------------------------------------------
    @property
    def management_zone(self) -> Zone:
        return next(z for z in self.zones.values() if z.management)

    @property
    def vpn_zone(self) -> Zone | None:
        return next((z for z in self.zones.values() if z.vpn), None)

    @functools.cached_property
    def controller(self) -> Host:
        return next(h for h in self.hosts.values() if h.is_controller)

    def managed_hosts(self) -> list[Host]:
        """Hosts Ansible manages: all but the controller."""
        return [h for h in self.hosts.values() if not h.is_controller and h.managed]

    def is_platform(self, host: str) -> bool:
        """In the platform: an internal zone's host, except the controller and the management zone's."""
        h = self.hosts[host]
        zone = self.zones[h.zone]
        return zone.internal and not zone.management and not h.is_controller

    def controller_address(self, host: str) -> ipaddress.IPv4Address | None:
        """The controller's address on a network ``host`` shares with it, the management zone first."""
        ctl = self.controller
        shared = sorted((z for z in self.hosts[host].addresses if z in ctl.addresses),
                        key=lambda z: (z != self.management_zone.name, z))
        return ctl.addresses[shared[0]] if shared else None

    def runs(self, host: str) -> list[str]:
        """The services ``host`` runs, by name."""
        return sorted(s.name for s in self.services.values() if host in s.hosts)

    def host_view(self, host: str) -> HostView:
        """The one per-host view every adapter reads (see :class:`HostView`)."""
        return self._views[host]

    @functools.cached_property
    def _views(self) -> dict[str, HostView]:
        inbound: dict[str, list[Rule]] = {h: [] for h in self.hosts}
        outbound: dict[str, list[Rule]] = {h: [] for h in self.hosts}
        for r in self.rules():
            inbound[r.endpoint.host].append(r)
            if r.path.source in outbound:
                outbound[r.path.source].append(r)
        listens: dict[str, dict[str, Endpoint]] = {h: {} for h in self.hosts}
        for ep in self.endpoints():
            listens[ep.host][ep.service] = ep
        mgmt = self.management_zone.name
        views = {}
        for name, h in self.hosts.items():
            runs = set(listens[name])
            clients: dict[str, list[tuple[str, str]]] = {}
            for r in inbound[name]:
                pair = (r.path.source, str(r.path.src_address))
                if pair not in clients.setdefault(r.endpoint.service, []):
                    clients[r.endpoint.service].append(pair)
            connects: dict[str, list[Endpoint]] = {}
            for r in outbound[name]:
                if r.endpoint not in connects.setdefault(r.endpoint.service, []):
                    connects[r.endpoint.service].append(r.endpoint)
            proxy = connects.get(APT_PROXY_SERVICE, [])
            ctl_addr = self.controller_address(name)
            views[name] = HostView(
                name=name, fqdn=f"{name}.{self.domain}", zone=h.zone, roles=h.roles,
                controller=h.is_controller, platform=self.is_platform(name),
                external=self.zones[h.zone].external, gateway=name == self.gateway,
                addresses=dict(h.addresses), management_address=h.addresses.get(mgmt),
                access_address=self.access_address(name), controller_address=ctl_addr,
                apt_proxy_url=f"http://{proxy[0].address}:{proxy[0].port}" if proxy else None,
                time_servers=tuple(str(e.address) for e in connects.get(TIME_SERVICE, []))
                or ((str(ctl_addr),) if ctl_addr is not None and not h.is_controller else ()),
                memlock=bool(runs & set(MLOCK_SERVICES)),
                tun=bool(runs & set(TUNNEL_SERVICES)) or (name == self.gateway and self.vpn_zone is not None)
                or any(r in CLIENT_TUNNEL_ROLES for r in h.roles),
                # Only hosts with a declared flow straight to another host's management address (Prometheus
                # scraping exporters) and the gateway (it routes VPN peers in) talk across the management
                # LAN; every other leg is isolated there, so a fallen host cannot reach its neighbours.
                isolated_management=mgmt in h.addresses and name != self.gateway and not h.is_controller
                and not any(r.endpoint.zone == mgmt and not r.path.via_gateway
                            and not self.hosts[r.endpoint.host].is_controller for r in outbound[name]),
                default_gateway=self.default_gateway(name),
                routes=tuple(self.host_routes(name)) if not h.is_controller else (),
                listens=listens[name],
                clients={s: tuple(v) for s, v in sorted(clients.items())},
                connects={s: tuple(v) for s, v in sorted(connects.items())},
            )
        return views

    def own_source(self, rule: Rule) -> ipaddress.IPv4Address | ipaddress.IPv4Network:
        """The source address as the sending host itself writes it (the gateway NATs egress afterwards)."""
        if rule.path.nat:
            src = self.hosts[rule.path.source]
            return src.addresses[src.zone]
        return rule.path.src_address

    def controller_ssh_sessions(self, host: str) -> list[Rule]:
        """The rules that let the controller SSH to ``host`` (the firewall keeps these sessions alive)."""
        return [r for r in self.inbound(host)
                if r.path.source == self.controller.name and r.endpoint.service == SSH_SERVICE]

    def access_address(self, host: str) -> ipaddress.IPv4Address:
        """The address the controller uses for SSH: management if the host has one, else home zone."""
        h = self.hosts[host]
        return h.addresses.get(self.management_zone.name, h.addresses[h.zone])

    def endpoints(self) -> list[Endpoint]:
        out = []
        for svc in self.services.values():
            for host in svc.hosts:
                h = self.hosts[host]
                zone = self.management_zone.name if svc.plane == "mgmt" and \
                    self.management_zone.name in h.addresses else h.zone
                out.append(Endpoint(host, svc.name, h.addresses[zone], svc.port, svc.proto, zone))
        return sorted(out)

    def hosts_of(self, selector: str) -> list[str]:
        """Expand a selector (host, zone, ``platform``, ``all`` or ``any``) to host names."""
        if selector in self.hosts:
            return [selector]
        if selector in self.zones:
            return sorted(h.name for h in self.hosts.values() if h.zone == selector)
        if selector == SELECTOR_PLATFORM:
            return sorted(h for h in self.hosts if self.is_platform(h))
        if selector == SELECTOR_ALL:
            return sorted(h.name for h in self.hosts.values() if not h.is_controller and h.managed)
        if selector == SELECTOR_ANY:  # the declared outside hosts; _rules adds the addresses beyond them
            return sorted(h.name for h in self.hosts.values() if self.zones[h.zone].external)
        raise KeyError(selector)

    # ---- derivation ------------------------------------------------------------------------------
    def path(self, source: str, endpoint: Endpoint) -> Route:
        """Route from a source host (or the vpn zone) to an endpoint."""
        target_zone = endpoint.zone
        if source.startswith(ANY_PREFIX):  # anywhere beyond an external zone: only the gateway is reached
            zone = source[len(ANY_PREFIX):]
            return Route(source, ANYWHERE, False, zone, zone, False)
        if source in self.zones:  # only the vpn zone is a source without hosts
            via_gateway = endpoint.host != self.gateway
            return Route(source, self.zones[source].cidr, via_gateway, source,
                         target_zone if via_gateway else source, False)
        h = self.hosts[source]
        if target_zone in h.addresses:  # directly connected (the gateway always is)
            return Route(source, h.addresses[target_zone], False, target_zone, target_zone, False)
        if endpoint.host == self.gateway:  # the gateway is reached on its leg in the source's zone
            return Route(source, h.addresses[h.zone], False, h.zone, h.zone, False)
        nat = self.zones[target_zone].external and self.zones[h.zone].internal
        src = self.hosts[self.gateway].addresses[target_zone] if nat else h.addresses[h.zone]
        return Route(source, src, True, h.zone, target_zone, nat)

    def rules(self) -> list[Rule]:
        """Every allowed (source, endpoint) pair with the route it takes. Self-traffic is excluded."""
        return list(self._rules)

    @functools.cached_property
    def _rules(self) -> tuple[Rule, ...]:
        by_service: dict[str, list[Endpoint]] = {}  # so the work is linear in the rules produced
        for ep in self.endpoints():
            by_service.setdefault(ep.service, []).append(ep)
        rules: dict[tuple[str, Endpoint], Rule] = {}
        for flow in self.flows:
            endpoints = [ep for svc in flow.services for ep in by_service.get(svc, ())]
            for sel in flow.sources:
                sources = [sel] if sel in self.zones and self.zones[sel].vpn else self.hosts_of(sel)
                if sel == SELECTOR_ANY:
                    sources += [ANY_PREFIX + z.name for z in self.zones.values() if z.external]
                for src in sources:
                    for ep in endpoints:
                        if ep.host != src and self._may_leave(src, ep):
                            rules.setdefault((src, ep), Rule(ep, self.path(src, ep), flow.why))
        return tuple(sorted(rules.values()))

    def _may_leave(self, source: str, endpoint: Endpoint) -> bool:
        """Traffic crosses from an internal zone to an external one only from zones declaring egress."""
        if not self.zones[endpoint.zone].external:
            return True
        if source in self.zones:
            return self.zones[source].egress
        h = self.hosts[source]
        return endpoint.zone in h.addresses or self.zones[h.zone].external or self.zones[h.zone].egress

    def matrix(self) -> dict[tuple[str, Endpoint], bool]:
        """The expected reachability of every (source host, endpoint) cell: True = must connect."""
        allowed = {(r.path.source, r.endpoint) for r in self.rules()}
        cells = {}
        for src in sorted(self.hosts):
            for ep in self.endpoints():
                if ep.host != src:
                    cells[(src, ep)] = (src, ep) in allowed
        return cells

    def inbound(self, host: str) -> list[Rule]:
        return [r for r in self.rules() if r.endpoint.host == host]

    def outbound(self, host: str) -> list[Rule]:
        return [r for r in self.rules() if r.path.source == host]

    def forwarded(self) -> list[Rule]:
        """What the gateway forwards between zones (everything else it drops)."""
        return [r for r in self.rules() if r.path.via_gateway]

    def scrape_targets(self) -> dict[str, list[str]]:
        """Prometheus jobs → ``address:port`` targets: every endpoint of every ``scrape: true`` service."""
        jobs: dict[str, list[str]] = {}
        for ep in self.endpoints():
            if self.services[ep.service].scrape:
                jobs.setdefault(ep.service, []).append(f"{ep.address}:{ep.port}")
        return {k: sorted(v) for k, v in sorted(jobs.items())}

    def scrape_endpoints(self) -> dict[str, list[dict[str, Any]]]:
        """Prometheus jobs → targets with the labels operators filter by (host, zone, role)."""
        jobs: dict[str, list[dict[str, Any]]] = {}
        for ep in self.endpoints():
            if self.services[ep.service].scrape:
                h = self.hosts[ep.host]
                jobs.setdefault(ep.service, []).append({
                    "target": f"{ep.address}:{ep.port}",
                    "labels": {"host": h.name, "zone": h.zone, "role": h.roles[0] if h.roles else "none"}})
        return {k: sorted(v, key=lambda t: t["target"]) for k, v in sorted(jobs.items())}

    def host_routes(self, host: str) -> list[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]]:
        """Extra routes a host needs: replies to VPN peers go back the way they came (via the gateway's
        management leg), so strict reverse-path filtering keeps working; outside hosts reach the edge
        zone (where the WireGuard endpoint lives) via the gateway's leg in their network."""
        h = self.hosts[host]
        gw = self.hosts[self.gateway]
        if self.zones[h.zone].external and h.zone in gw.addresses and gw.zone != h.zone:
            # The outside world reaches the platform's edge (the WireGuard endpoint) via the gateway's
            # leg in its own network, as an upstream provider routes to the edge's public addresses.
            return [(self.zones[gw.zone].cidr, gw.addresses[h.zone])]
        vpn, mgmt = self.vpn_zone, self.management_zone
        if vpn is None or host == self.gateway or mgmt.name not in h.addresses:
            return []
        return [(vpn.cidr, gw.addresses[mgmt.name])]

    def default_gateway(self, host: str) -> ipaddress.IPv4Address | None:
        """Internal hosts route via the gateway's leg in their zone; external ones via the zone's .1."""
        h = self.hosts[host]
        if host == self.gateway or h.is_controller:
            return None
        zone = self.zones[h.zone]
        if zone.external:
            return next(zone.cidr.hosts())
        return self.hosts[self.gateway].addresses[h.zone]


def allocate(net: ipaddress.IPv4Network, name: str, taken: Mapping[ipaddress.IPv4Address, object],
             offset: int = FIRST_HOST_OFFSET) -> ipaddress.IPv4Address | None:
    """The stable address for ``name`` in ``net``: derived from a hash of the name, probing upward past
    addresses already ``taken`` (so adding a name never moves another). None when the network is full.
    Hosts in zones and VPN peers both get their addresses here."""
    span = net.num_addresses - offset - 1
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    for step in range(span):
        addr = net.network_address + offset + (digest + step) % span
        if addr not in taken:
            return addr
    return None


def valid_name(value: object) -> bool:
    """Names of zones, hosts, services and VPN peers: lower-case letters, digits, '-' and '_'."""
    return isinstance(value, str) and bool(value) and set(value) <= NAME_CHARS and value[0] not in "-_"


# ---- loading and validation ----------------------------------------------------------------------

# Interface names are at most 15 characters (IFNAMSIZ - 1). Zones become interface names: the gateway's
# leg in a zone is named after it, and the lab's bridge for it is "rl-<zone>" (infra/rampart/lab).
MAX_ZONE_NAME = 15 - len("rl-")
# A host name is a host name (and the first label of host.domain in /etc/hosts): one DNS label.
MAX_HOST_NAME = 63
# Names that would make the gateway's firewall match something else than a zone's interface.
RESERVED_INTERFACES = re.compile(r"lo|wg[0-9]+")
DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# Address space no zone may use, whatever it is: these are not unicast networks a host can live on.
NOT_A_NETWORK = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved (240.0.0.0/4)"),
)
# Internal zones use private space only (RFC 1918): a public range inside would shadow the real one.
PRIVATE = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SHOW.maxlist = _SHOW.maxdict = _SHOW.maxtuple = _SHOW.maxset = 4
_SHOW.maxlevel = 2


def _show(value: Any) -> str:
    """A value for a message: repr, clipped (a value may be huge)."""
    return _SHOW.repr(value)


class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, problem: str) -> TopologyError:
        return TopologyError(self.source, path, problem)

    def mapping(self, value: Any, path: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_kind(value)}")
        return value

    def name(self, value: Any, path: str) -> str:
        if not valid_name(value):
            raise self.fail(path, f"invalid name {_show(value)}: use lower-case letters, digits, '-' and '_'")
        return value

    def names(self, value: Any, path: str) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail(path, "must not be empty")
        return tuple(self.name(v, f"{path}[{i}]" if isinstance(value, list) else path)
                     for i, v in enumerate(items))

    def not_keyword(self, value: str, path: str, what: str) -> None:
        if value in KEYWORDS:
            raise self.fail(path, f"{what} name {value!r} is a keyword of flows and services "
                            f"({', '.join(KEYWORDS)}); choose another name")

    def zone_name(self, value: Any, path: str) -> str:
        self.name(value, path)
        self.not_keyword(value, path, "zone")
        if len(value) > MAX_ZONE_NAME:
            raise self.fail(path, f"zone name {value!r} is {len(value)} characters; zones become interface "
                            f"names (rl-<zone> in the lab, <zone> on the gateway): at most {MAX_ZONE_NAME}")
        if RESERVED_INTERFACES.fullmatch(value):
            raise self.fail(path, f"zone name {value!r} is the name of a system interface (lo, wgN); "
                            "the gateway's firewall would match that interface instead")
        return value

    def host_name(self, value: Any, path: str) -> str:
        self.name(value, path)
        self.not_keyword(value, path, "host")
        if len(value) > MAX_HOST_NAME or not DNS_LABEL.fullmatch(value):
            raise self.fail(path, f"invalid host name {_show(value)}: host names are DNS labels (lower-case "
                            f"letters, digits and inner '-', at most {MAX_HOST_NAME} characters; no '_')")
        return value

    def only_keys(self, value: dict, allowed: set[str], path: str, required: Iterable[str] = ()) -> None:
        for key in value:
            if key not in allowed:
                raise self.fail(f"{path}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for key in required:
            if key not in value:
                raise self.fail(f"{path}.{key}", "missing required key")


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _domain(c: _Checker, value: Any, path: str) -> str:
    """A DNS name of lower-case labels: it is written into /etc/hosts on every host."""
    labels = value.split(".") if isinstance(value, str) else []
    if not labels or len(value) > 253 or not all(DNS_LABEL.fullmatch(label) for label in labels):
        raise c.fail(path, f"invalid domain {_show(value)}: use a DNS name of lower-case labels "
                     "([a-z0-9-], not starting or ending with '-') joined by '.'")
    return value


def load(path: str | Path) -> Topology:
    """Read and validate a topology file; raise :class:`TopologyError` on any problem."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(yamlsafe.MAX_BYTES + 1)  # never more: the size check needs one byte over
    except OSError as exc:
        raise TopologyError(str(path), "(file)", f"cannot read: {exc.strerror}") from None
    try:
        doc = yamlsafe.loads(data)
    except yamlsafe.YamlRefused as exc:
        raise TopologyError(str(path), exc.path, exc.problem) from None
    return parse(doc, str(path))


def parse(data: Any, source: str = "<topology>") -> Topology:
    c = _Checker(source)
    top = c.mapping(data, "(top)")
    c.only_keys(top, {"plugin", "name", "domain", "zones", "gateway", "hosts", "services", "flows"},
                "(top)", required=("name", "zones", "gateway", "hosts", "services", "flows"))
    name = c.name(top["name"], "name")
    # The default domain is derived from the name, so a name that makes it invalid is named at fault.
    domain = _domain(c, *((top["domain"], "domain") if "domain" in top else (f"{name}.rampart.internal", "name")))
    zones = _parse_zones(c, top["zones"])
    gateway = c.name(top["gateway"], "gateway")
    hosts = _parse_hosts(c, top["hosts"], zones, gateway)
    if gateway not in hosts:
        raise c.fail("gateway", f"unknown host {gateway!r}")
    if hosts[gateway].is_controller:
        raise c.fail("gateway", f"{gateway!r} is the controller, which is not managed: no forward policy "
                     "would ever be applied; name a managed host in an internal zone")
    if zones[hosts[gateway].zone].external:
        raise c.fail("gateway", f"{gateway!r} lives in external zone {hosts[gateway].zone!r}; the gateway is "
                     "the platform's edge router and must live in an internal zone")
    if hosts[gateway].also:
        raise c.fail(f"hosts.{gateway}.also", "the gateway has a leg in every zone already; remove also")
    for h in hosts:
        if len(h) + 1 + len(domain) > 253:
            raise c.fail(f"hosts.{h}", f"{h}.{domain} is longer than 253 characters: shorten the domain")
    hosts = _assign_addresses(c, zones, hosts, gateway)
    services = _parse_services(c, top["services"], zones, hosts)
    flows = _parse_flows(c, top["flows"], zones, hosts, services, gateway)
    topo = Topology(name, domain, zones, hosts, services, flows, gateway, source)
    _check_whole(c, topo)
    return topo


def _parse_zones(c: _Checker, raw: Any) -> dict[str, Zone]:
    zones: dict[str, Zone] = {}
    for zname, spec in c.mapping(raw, "zones").items():
        p = f"zones.{zname}"
        c.zone_name(zname, p)
        spec = c.mapping(spec, p)
        c.only_keys(spec, {"cidr", "external", "management", "vpn", "egress", "simulated"}, p, required=("cidr",))
        try:
            cidr = ipaddress.IPv4Network(str(spec["cidr"]), strict=True)
        except ValueError as exc:
            raise c.fail(f"{p}.cidr", f"not an IPv4 network: {exc}") from None
        if cidr.num_addresses < 16:
            raise c.fail(f"{p}.cidr", f"{cidr} is too small (need at least a /28)")
        flags = {}
        for flag in ("external", "management", "vpn", "egress", "simulated"):
            value = spec.get(flag, False)
            if not isinstance(value, bool):
                raise c.fail(f"{p}.{flag}", f"expected true or false, got {_show(value)}")
            flags[flag] = value
        if sum(flags[f] for f in ("external", "management", "vpn")) > 1:
            raise c.fail(p, "a zone can be only one of external, management, vpn")
        if flags["simulated"] and not flags["external"]:
            raise c.fail(f"{p}.simulated", "only an external zone can be simulated (the lab's stand-in internet)")
        for space, what in NOT_A_NETWORK:
            if cidr.overlaps(space):
                raise c.fail(f"{p}.cidr", f"{cidr} is in {what} address space, where no host can live")
        if not flags["external"] and not any(cidr.subnet_of(net) for net in PRIVATE):
            raise c.fail(f"{p}.cidr", f"{cidr} is not private address space: an internal zone must be inside "
                         "10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 (or be marked external: true)")
        for other in zones.values():
            if cidr.overlaps(other.cidr):
                raise c.fail(f"{p}.cidr", f"{cidr} overlaps zone {other.name!r} ({other.cidr})")
        zones[zname] = Zone(zname, cidr, **flags)
    for kind in ("management",):
        count = sum(getattr(z, kind) for z in zones.values())
        if count != 1:
            raise c.fail("zones", f"exactly one zone must be marked {kind}: true (found {count})")
    if sum(z.vpn for z in zones.values()) > 1:
        raise c.fail("zones", "at most one zone may be marked vpn: true")
    return zones


def _parse_hosts(c: _Checker, raw: Any, zones: dict[str, Zone], gateway: str) -> dict[str, Host]:
    hosts: dict[str, Host] = {}
    for hname, spec in c.mapping(raw, "hosts").items():
        p = f"hosts.{hname}"
        c.host_name(hname, p)
        if hname in zones:
            raise c.fail(p, f"host name {hname!r} clashes with a zone name")
        spec = c.mapping(spec, p)
        c.only_keys(spec, {"zone", "roles", "also", "address", "managed"}, p, required=("zone",))
        zone = c.name(spec["zone"], f"{p}.zone")
        if zone not in zones:
            raise c.fail(f"{p}.zone", f"unknown zone {zone!r} (zones: {', '.join(zones)})")
        if zones[zone].vpn:
            raise c.fail(f"{p}.zone", "hosts cannot live in the vpn zone; peers are declared to the VPN role")
        roles = c.names(spec.get("roles", []), f"{p}.roles") if spec.get("roles") else ()
        also = c.names(spec["also"], f"{p}.also") if spec.get("also") else ()
        for i, z in enumerate(also):
            _check_also(c, zones, hname, zone, CONTROLLER_ROLE in roles, gateway, also[:i], z,
                        f"{p}.also[{i}]" if isinstance(spec["also"], list) else f"{p}.also")
        pinned = {}
        if "address" in spec:
            try:
                addr = ipaddress.IPv4Address(str(spec["address"]))
            except ValueError as exc:
                raise c.fail(f"{p}.address", str(exc)) from None
            net = zones[zone].cidr
            if addr not in net:
                raise c.fail(f"{p}.address", f"{addr} is outside zone {zone!r} ({net})")
            if addr in (net.network_address, net.broadcast_address):
                which = "network" if addr == net.network_address else "broadcast"
                raise c.fail(f"{p}.address", f"{addr} is the {which} address of zone {zone!r} ({net})")
            if zones[zone].external and addr == next(net.hosts()):
                raise c.fail(f"{p}.address", f"{addr} is reserved for the upstream router of external zone "
                             f"{zone!r} (its first address)")
            pinned[zone] = addr
        managed = spec.get("managed", True)
        if not isinstance(managed, bool):
            raise c.fail(f"{p}.managed", f"expected true or false, got {_show(managed)}")
        if not managed and not zones[zone].external:
            raise c.fail(f"{p}.managed", "only a host outside the platform (external zone) can be unmanaged")
        hosts[hname] = Host(hname, zone, roles, also, pinned, managed=managed)
    controllers = [h.name for h in hosts.values() if h.is_controller]
    if len(controllers) != 1:
        raise c.fail("hosts", f"exactly one host must have the controller role (found {len(controllers)})")
    ctl = hosts[controllers[0]]
    if not zones[ctl.zone].management:
        raise c.fail(f"hosts.{ctl.name}.zone", f"the controller must live in the management zone, not {ctl.zone!r}")
    return hosts


def _check_also(c: _Checker, zones: dict[str, Zone], host: str, home: str, controller: bool, gateway: str,
                before: tuple[str, ...], zone: str, path: str) -> None:
    """A second leg must not let a host bypass the gateway. Only two kinds are safe: the management leg
    every internal host has anyway, and, for the controller (the lab's upstream of the simulated internet,
    or a bastion's own uplink), a leg in an external zone. Outside hosts may join other outside zones."""
    if zone not in zones:
        raise c.fail(path, f"unknown zone {zone!r}")
    if zone == home or zone in before:
        raise c.fail(path, f"zone {zone!r} is listed twice (home zone or also)")
    if host == gateway:  # parse() refuses its also once it knows the gateway is a valid one
        return
    target, inside = zones[zone], not zones[home].external
    if target.vpn:
        raise c.fail(path, f"{zone!r} is the vpn zone: only WireGuard peers live there, behind the gateway")
    if not inside and not target.external:
        raise c.fail(path, f"{host!r} lives outside the platform; a leg in internal zone {zone!r} would let it "
                     "in without crossing the gateway")
    if inside and target.external and not controller:
        raise c.fail(path, f"a leg in external zone {zone!r} would give {host!r} direct access to the outside, "
                     f"bypassing the gateway; declare egress: true on zone {home!r} and a flow instead")
    if controller and target.external and not target.simulated:
        raise c.fail(path, f"the controller holds every host's SSH key and every VPN key: it must not have a leg in "
                     f"external zone {zone!r}; it reaches the internet, if at all, through the gateway (only the "
                     "lab's simulated internet, `simulated: true`, may have the controller as its upstream)")
    if inside and not target.external and not target.management:
        raise c.fail(path, f"a leg in zone {zone!r} would connect it to zone {home!r} without crossing the "
                     "gateway; give the host one home zone and declare flows instead")


def _assign_addresses(c: _Checker, zones: dict[str, Zone], hosts: dict[str, Host],
                      gateway: str) -> dict[str, Host]:
    """Stable address plan. The gateway is .1 in every internal zone; the controller is .1 in the zones it
    joins (the management zone, and in the lab the simulated internet, whose upstream it plays); everyone
    else gets an address derived from a hash of its name, probing upward on collision."""
    mgmt = next(z for z in zones.values() if z.management)
    legs: dict[str, list[str]] = {}
    for h in hosts.values():
        zs = [h.zone, *h.also]
        if h.name == gateway:
            zs = [h.zone] + [z.name for z in zones.values() if z.name != h.zone]
        elif not zones[h.zone].external and mgmt.name not in zs:
            zs.append(mgmt.name)
        legs[h.name] = zs
    taken: dict[str, dict[ipaddress.IPv4Address, str]] = {z: {} for z in zones}

    def claim(zone: str, addr: ipaddress.IPv4Address, owner: str, path: str) -> None:
        if addr in taken[zone]:
            raise c.fail(path, f"address {addr} in zone {zone!r} is already used by {taken[zone][addr]!r}")
        taken[zone][addr] = owner

    first = {z: next(zones[z].cidr.hosts()) for z in zones}
    for h in hosts.values():
        for z in legs[h.name]:
            if h.is_controller or (h.name == gateway and zones[z].internal and not zones[z].management):
                claim(z, first[z], h.name, f"hosts.{h.name}")
        for z, addr in h.addresses.items():
            claim(z, addr, h.name, f"hosts.{h.name}.address")
    for z in zones.values():  # an external zone's .1 is its upstream router (the controller in the lab)
        if z.external and first[z.name] not in taken[z.name]:
            taken[z.name][first[z.name]] = "(upstream)"
    owned: dict[tuple[str, str], ipaddress.IPv4Address] = {}  # (zone, host) -> its first claimed address
    for z, claims in taken.items():
        for a, owner in claims.items():
            owned.setdefault((z, owner), a)
    out = {}
    for h in sorted(hosts.values(), key=lambda h: h.name):
        addrs = {}
        for z in legs[h.name]:
            if (z, h.name) in owned:
                addrs[z] = owned[(z, h.name)]
                continue
            addr = allocate(zones[z].cidr, h.name, taken[z])
            if addr is None:
                raise c.fail(f"zones.{z}.cidr", f"{zones[z].cidr} has no free address left for host {h.name!r}")
            taken[z][addr] = h.name
            addrs[z] = addr
        out[h.name] = Host(h.name, h.zone, h.roles, tuple(legs[h.name][1:]), addrs, managed=h.managed)
    return out


def _parse_services(c: _Checker, raw: Any, zones: dict[str, Zone], hosts: dict[str, Host]) -> dict[str, Service]:
    services: dict[str, Service] = {}
    listening: dict[tuple[str, int, str], str] = {}
    probe = Topology("probe", "", zones, hosts, {}, [], "", c.source)
    for sname, spec in c.mapping(raw, "services").items():
        p = f"services.{sname}"
        c.name(sname, p)
        spec = c.mapping(spec, p)
        c.only_keys(spec, {"port", "proto", "plane", "hosts", "scrape"}, p, required=("port", "hosts"))
        port = spec["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise c.fail(f"{p}.port", f"expected a port number 1-65535, got {_show(port)}")
        proto = spec.get("proto", "tcp")
        if proto not in PROTOCOLS:
            raise c.fail(f"{p}.proto", f"expected one of {', '.join(PROTOCOLS)}, got {_show(proto)}")
        plane = spec.get("plane", "zone")
        if plane not in PLANES:
            raise c.fail(f"{p}.plane", f"expected one of {', '.join(PLANES)}, got {_show(plane)}")
        on: list[str] = []
        for i, sel in enumerate(c.names(spec["hosts"], f"{p}.hosts")):
            where = f"{p}.hosts[{i}]" if isinstance(spec["hosts"], list) else f"{p}.hosts"
            if sel == SELECTOR_ANY:
                raise c.fail(where, f"{SELECTOR_ANY!r} is a flow source only (the outside world); name hosts or zones")
            try:
                on.extend(probe.hosts_of(sel))
            except KeyError:
                raise c.fail(where, f"unknown host or zone {sel!r}") from None
        on = sorted(set(on))
        if not on:
            raise c.fail(f"{p}.hosts", "selects no host")
        for host in on:
            key = (host, port, proto)
            if key in listening:
                raise c.fail(f"{p}.port", f"{proto}/{port} on {host!r} is already taken by {listening[key]!r}")
            listening[key] = sname
        scrape = spec.get("scrape", False)
        if not isinstance(scrape, bool):
            raise c.fail(f"{p}.scrape", f"expected true or false, got {_show(scrape)}")
        services[sname] = Service(sname, port, proto, plane, tuple(on), scrape)
    return services


def _parse_flows(c: _Checker, raw: Any, zones: dict[str, Zone], hosts: dict[str, Host],
                 services: dict[str, Service], gateway: str) -> list[Flow]:
    if not isinstance(raw, list):
        raise c.fail("flows", f"expected a list, got {_kind(raw)}")
    flows = []
    for i, spec in enumerate(raw):
        p = f"flows[{i}]"
        spec = c.mapping(spec, p)
        c.only_keys(spec, {"from", "to", "why"}, p, required=("from", "to", "why"))
        sources = c.names(spec["from"], f"{p}.from")
        for j, s in enumerate(sources):
            if s not in zones and s not in hosts and s not in (SELECTOR_PLATFORM, SELECTOR_ANY):
                raise c.fail(f"{p}.from" + (f"[{j}]" if isinstance(spec["from"], list) else ""),
                             f"unknown zone or host {s!r}")
        targets = c.names(spec["to"], f"{p}.to")
        for j, t in enumerate(targets):
            where = f"{p}.to" + (f"[{j}]" if isinstance(spec["to"], list) else "")
            if t not in services:
                raise c.fail(where, f"unknown service {t!r} (services: {', '.join(services)})")
            svc = services[t]
            # From anywhere, only the platform's front door: a service on the gateway's own zone address
            # (the WireGuard endpoint). Anything else would open an internal or management service to
            # every address on the internet.
            if SELECTOR_ANY in sources and (svc.hosts != (gateway,) or svc.plane != "zone"):
                raise c.fail(where, f"from {SELECTOR_ANY!r} (every outside address) may only reach services "
                             f"listening on the gateway alone with plane: zone; {t!r} does not")
        why = spec["why"]
        if not isinstance(why, str) or not why.strip():
            raise c.fail(f"{p}.why", "give a one-line reason for the flow")
        bad = next((ch for ch in why if not " " <= ch <= "~"), None)
        if bad is not None:
            raise c.fail(f"{p}.why", f"character {bad!r} at position {why.index(bad)}: use printable ASCII only "
                         "(the reason becomes an nftables comment, at most 128 bytes and shown in terminals)")
        flows.append(Flow(sources, targets, why.strip(), i))
    return flows


def _check_whole(c: _Checker, topo: Topology) -> None:
    """Whole-topology checks, each one pass over hosts or rules (1000 hosts validate in well under 2 s)."""
    lived_in = {h.zone for h in topo.hosts.values()}  # home zones
    legs = {z for h in topo.hosts.values() if h.name != topo.gateway for z in h.addresses} | lived_in
    for z in topo.zones.values():
        if not z.vpn and z.name not in legs:
            raise c.fail(f"zones.{z.name}", "zone has no hosts")
    for flow in topo.flows:
        for s in flow.sources:
            if s in topo.zones and not topo.zones[s].vpn and s not in lived_in:
                raise c.fail(f"flows[{flow.index}].from", f"zone {s!r} has no hosts to send from")
    rules = topo.rules()
    used = {(r.endpoint.service, r.why) for r in rules}
    for flow in topo.flows:
        if not any((svc, flow.why) in used for svc in flow.services):
            raise c.fail(f"flows[{flow.index}]", "allows nothing: its sources cannot reach any instance of "
                         f"{', '.join(flow.services)} (leaving the platform needs egress: true on the zone)")
    if "ssh" not in topo.services:
        raise c.fail("services", "no 'ssh' service: the controller would have no way in")
    controller = topo.controller.name
    reached = {r.endpoint.host for r in rules if r.path.source == controller and r.endpoint.service == "ssh"}
    unreachable = [h.name for h in topo.managed_hosts() if h.name not in reached]
    if unreachable:
        raise c.fail("flows", f"no flow lets the controller reach ssh on {', '.join(unreachable)}: "
                     "it would be locked out")
