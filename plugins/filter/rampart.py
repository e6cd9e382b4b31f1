"""Ansible filters: per-host views of the topology for the firewall and WireGuard roles.

Thin adapters over ``rampart.topology`` (the one place the topology is understood): they load the file the
inventory plugin names in ``rampart_topology_file`` (cached per path and modification time) and return
plain dicts and lists the templates can loop over. Nothing here decides who may talk to whom.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os

from ansible.errors import AnsibleFilterError
from rampart.topology import Rule, Topology, TopologyError, allocate, load, valid_name

_CACHE: dict[tuple[str, float], Topology] = {}


def _topology(path: str) -> Topology:
    try:
        key = (str(path), os.stat(path).st_mtime)
    except OSError as exc:
        raise AnsibleFilterError(f"{path}: cannot read the topology: {exc.strerror}") from None
    if key not in _CACHE:
        try:
            _CACHE[key] = load(path)
        except TopologyError as exc:
            raise AnsibleFilterError(str(exc)) from None
    return _CACHE[key]


def _iface(topo: Topology, zone: str, vpn_interface: str) -> str:
    """Interfaces are named after their zones; the vpn zone is the WireGuard interface."""
    vpn = topo.vpn_zone
    return vpn_interface if vpn is not None and zone == vpn.name else zone


def _comment(rule: Rule) -> str:
    text = f"{rule.path.source} -> {rule.endpoint.host}:{rule.endpoint.service}: {rule.why}"
    return text.replace('"', "'")[:120]


def _unique(items: list[dict]) -> list[dict]:
    seen, out = set(), []
    for item in items:
        key = tuple(sorted((k, str(v)) for k, v in item.items() if k != "comment"))
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def rampart_firewall(topology_file: str, host: str, vpn_interface: str = "wg0") -> dict:
    """Everything the nftables template needs for ``host``: its inbound and outbound flows and, on the
    gateway, the forward policy and the source NAT, each entry with addresses, port, protocol and a
    comment naming the flow."""
    topo = _topology(topology_file)
    if host not in topo.hosts:
        raise AnsibleFilterError(f"{topology_file}: hosts: no host {host!r} in the topology")
    h = topo.hosts[host]
    is_gateway = host == topo.gateway

    def entry(rule: Rule, saddr, **extra) -> dict:
        ep = rule.endpoint
        return {"saddr": str(saddr), "daddr": str(ep.address), "proto": ep.proto, "port": ep.port,
                "comment": _comment(rule), **extra}

    # Every accept names the interface the packet must arrive on as well as its source: on the gateway the
    # zone it routes in from, elsewhere the leg that owns the destination address (a spoofed source on
    # another leg, e.g. the management LAN, matches nothing).
    inbound = [entry(r, r.path.src_address,
                     iif=_iface(topo, r.path.in_zone if is_gateway else r.endpoint.zone, vpn_interface))
               for r in topo.inbound(host)]
    outbound = [entry(r, topo.own_source(r)) for r in topo.outbound(host)]
    forward, nat = [], []
    if is_gateway:
        for r in topo.forwarded():
            forward.append(entry(r, topo.own_source(r), iif=_iface(topo, r.path.in_zone, vpn_interface),
                                 oif=_iface(topo, r.path.out_zone, vpn_interface)))
            if r.path.nat:
                nat.append(entry(r, topo.own_source(r), oif=_iface(topo, r.path.out_zone, vpn_interface),
                                 to=str(r.path.src_address)))
    return {
        "host": host,
        "gateway": is_gateway,
        "external": topo.zones[h.zone].external,
        "addresses": {z: str(a) for z, a in sorted(h.addresses.items())},
        "controller": [str(a) for a in topo.controller.addresses.values()],
        # The loader already rejects a topology without it; the role checks again before applying.
        "controller_ssh": host == topo.controller.name or bool(topo.controller_ssh_sessions(host)),
        # The controller's SSH sessions, for the output rule that keeps a session conntrack has not seen
        # (the very first ruleset load on a host) alive.
        "controller_sessions": _unique([
            {"saddr": str(r.endpoint.address), "daddr": str(r.path.src_address), "port": r.endpoint.port}
            for r in topo.controller_ssh_sessions(host)]),
        # ICMP echo (ping) is answered for operators only: the controller and VPN peers, on the management leg.
        "echo_sources": _echo_sources(topo, host, vpn_interface),
        "inbound": _unique(inbound),
        "outbound": _unique(outbound),
        "forward": _unique(forward),
        "nat": _unique(nat),
    }


def _echo_sources(topo: Topology, host: str, vpn_interface: str) -> list[dict]:
    view = topo.host_view(host)
    out = []
    if view.controller_address is not None:
        zone = next(z for z in view.addresses if view.controller_address in topo.zones[z].cidr)
        out.append({"iif": _iface(topo, zone, vpn_interface), "saddr": str(view.controller_address)})
    vpn = topo.vpn_zone
    if vpn is not None and view.management_address is not None:
        # Peers arrive on the gateway's wg interface, on every other host over the management leg.
        zone = vpn.name if view.gateway else topo.management_zone.name
        out.append({"iif": _iface(topo, zone, vpn_interface), "saddr": str(vpn.cidr)})
    return out


def rampart_wireguard_hub(topology_file: str) -> dict:
    """The hub's side of the VPN: interface address, listen port, public endpoint and the split-tunnel
    ranges (the management zone, where SSH and the UIs listen)."""
    topo = _topology(topology_file)
    vpn = topo.vpn_zone
    if vpn is None:
        raise AnsibleFilterError(f"{topology_file}: zones: no zone is marked vpn: true")
    svc = topo.services.get("wireguard")
    if svc is None or svc.proto != "udp":
        raise AnsibleFilterError(f"{topology_file}: services.wireguard: declare the WireGuard port (proto: udp)")
    endpoint = next(e for e in topo.endpoints() if e.service == "wireguard")
    return {
        "address": f"{next(vpn.cidr.hosts())}/{vpn.cidr.prefixlen}",
        "cidr": str(vpn.cidr),
        "port": svc.port,
        "endpoint": str(endpoint.address),
        "allowed_ips": [str(topo.management_zone.cidr)],
    }


def _valid_key(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 44:
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def rampart_wireguard_peers(peers: object, topology_file: str, source: str = "wireguard_peers") -> list[dict]:
    """Validate the declared peers and give each a stable address in the vpn zone.

    A peer is ``{name, public_key?, address?}``. Without ``public_key`` the controller generates the
    key pair; with one, the operator keeps the private key. Addresses come from a hash of the name
    (declaration order settles the rare collision, so appending a peer never moves another), unless
    given explicitly. Any problem fails with the source and the entry, before anything is applied."""
    hub = rampart_wireguard_hub(topology_file)
    cidr = ipaddress.IPv4Network(hub["cidr"])
    hub_addr = ipaddress.IPv4Address(hub["address"].split("/")[0])
    if peers is None:
        peers = []
    if not isinstance(peers, list):
        raise AnsibleFilterError(f"{source}: expected a list of peers, got {type(peers).__name__}")
    out: list[dict] = []
    names: dict[str, int] = {}
    taken = {hub_addr: "the hub"}
    explicit: dict[ipaddress.IPv4Address, str] = {}
    for i, peer in enumerate(peers):
        where = f"{source}[{i}]"
        if not isinstance(peer, dict):
            raise AnsibleFilterError(f"{where}: expected a mapping like {{name: alice}}")
        unknown = set(peer) - {"name", "public_key", "address"}
        if unknown:
            raise AnsibleFilterError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                                     "(allowed: name, public_key, address)")
        name = peer.get("name")
        if not valid_name(name):
            raise AnsibleFilterError(f"{where}.name: invalid peer name {name!r}: use lower-case letters, "
                                     "digits, '-' and '_'")
        if name in names:
            raise AnsibleFilterError(f"{where}.name: duplicate peer name {name!r} "
                                     f"(already declared at {source}[{names[name]}])")
        names[name] = i
        if "public_key" in peer and not _valid_key(peer["public_key"]):
            raise AnsibleFilterError(f"{where}.public_key: malformed WireGuard key for peer {name!r} "
                                     "(expected 44 characters of base64 encoding 32 bytes)")
        if "address" in peer:
            try:
                addr = ipaddress.IPv4Address(str(peer["address"]))
            except ValueError as exc:
                raise AnsibleFilterError(f"{where}.address: {exc}") from None
            if addr not in cidr or addr in (cidr.network_address, cidr.broadcast_address, hub_addr):
                raise AnsibleFilterError(f"{where}.address: {addr} is not a usable peer address in {cidr}")
            if addr in explicit:
                raise AnsibleFilterError(f"{where}.address: {addr} is already given to {explicit[addr]!r}")
            explicit[addr] = name
    taken.update(explicit)
    for i, peer in enumerate(peers):
        name = peer["name"]
        if "address" in peer:
            addr = ipaddress.IPv4Address(str(peer["address"]))
        else:
            addr = allocate(cidr, name, taken)  # the hub is .1; peers hash into the rest, like hosts
            if addr is None:
                raise AnsibleFilterError(f"{source}[{i}]: no free address left in {cidr} for peer {name!r}")
            taken[addr] = name
        out.append({"name": name, "address": str(addr), "public_key": peer.get("public_key", "")})
    return out


class FilterModule:
    def filters(self):
        return {
            "rampart_firewall": rampart_firewall,
            "rampart_wireguard_hub": rampart_wireguard_hub,
            "rampart_wireguard_peers": rampart_wireguard_peers,
        }
