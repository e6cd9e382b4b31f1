"""Firewall (nftables) and admin VPN (WireGuard) controls, checked against the topology."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import yaml
from compliance_core import Facts, control, describe, mode_at_most

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ("input", "output", "forward")


def _platform(facts: Facts) -> bool:
    """Platform hosts (those with a management leg) filter their output too; outside hosts do not."""
    topo = facts.topology
    return topo is not None and topo.management_zone.name in facts.addresses


def _hub(facts: Facts) -> bool:
    return facts.topology is not None and facts.name == facts.topology.gateway and facts.topology.vpn_zone


def _ruleset(facts: Facts) -> list[dict]:
    nft = facts.data["nft"]
    assert nft["rc"] == 0, f"nft -j list ruleset failed: {nft['err'].strip()}"
    return json.loads(nft["out"])["nftables"]


def _base_chains(facts: Facts) -> dict[tuple[str, str, str], dict]:
    """(family, table, hook) -> chain, for every chain attached to a netfilter hook."""
    return {(c["family"], c["table"], c["hook"]): c for item in _ruleset(facts) if (c := item.get("chain"))
            and "hook" in c}


def _rules(facts: Facts, chain: str) -> list[dict]:
    return [r["rule"] for r in _ruleset(facts)
            if "rule" in r and r["rule"]["table"] == "rampart" and r["rule"]["chain"] == chain]


def _has(rule: dict, key: str) -> bool:
    return any(key in expr for expr in rule["expr"])


@control("rampart-fw-01", "Input is default-deny (table inet rampart, policy drop)")
def input_default_deny(facts: Facts) -> None:
    chain = _base_chains(facts).get(("inet", "rampart", "input"))
    assert chain, "no input chain in table inet rampart"
    assert chain["policy"] == "drop", f"input policy is {chain['policy']}"


@control("rampart-fw-02", "Output is default-deny on platform hosts", applies=_platform)
def output_default_deny(facts: Facts) -> None:
    chain = _base_chains(facts).get(("inet", "rampart", "output"))
    assert chain and chain["policy"] == "drop", f"output chain: {chain}"


@control("rampart-fw-03", "Forward is default-deny")
def forward_default_deny(facts: Facts) -> None:
    chain = _base_chains(facts).get(("inet", "rampart", "forward"))
    assert chain and chain["policy"] == "drop", f"forward chain: {chain}"


@control("rampart-fw-04", "No other filter base chain can accept what rampart's chains drop")
def no_other_filter_chains(facts: Facts) -> None:
    others = [f"{fam} {tbl} {hook}" for (fam, tbl, hook), c in _base_chains(facts).items()
              if tbl != "rampart" and c.get("type") == "filter"]
    assert not others, f"foreign filter base chains: {others}"


@control("rampart-fw-05", "Drops are counted and logged with a rate limit")
def drops_counted_and_logged(facts: Facts) -> None:
    for chain in ("input", "output", "forward") if _platform(facts) else ("input", "forward"):
        rules = _rules(facts, chain)
        assert any(_has(r, "drop") and _has(r, "counter") for r in rules), f"{chain}: no counted drop"
        if chain == "forward" and not facts.router:
            continue  # nothing is ever forwarded there: the counter is the record
        assert any(_has(r, "log") and _has(r, "limit") for r in rules), f"{chain}: no rate-limited drop log"


@control("rampart-fw-06", "Every inbound accept names its source and destination (no accept-from-anywhere)")
def inbound_accepts_are_scoped(facts: Facts) -> None:
    loose = []
    for r in _rules(facts, "input"):
        text = json.dumps(r["expr"])
        if _has(r, "accept") and '"dport"' in text and not ('"saddr"' in text and '"daddr"' in text):
            loose.append(r.get("comment", text[:120]))
    assert not loose, f"unscoped inbound accepts: {loose}"


def _matches(facts: Facts, chain: str) -> set[tuple[str, str, str, int]]:
    """(saddr, daddr, proto, dport) of every accept in a chain that names all four (the flow accepts)."""
    have = set()
    for r in _rules(facts, chain):
        match = {}
        for expr in r["expr"]:
            m = expr.get("match")
            if m and isinstance(m["left"], dict) and "payload" in m["left"]:
                field = m["left"]["payload"]["field"]
                right = m["right"]
                if isinstance(right, dict) and "prefix" in right:
                    right = f"{right['prefix']['addr']}/{right['prefix']['len']}"
                match[field] = right
        if {"saddr", "daddr", "dport"} <= set(match) and _has(r, "accept"):
            proto = next(e["match"]["left"]["payload"]["protocol"] for e in r["expr"]
                         if "match" in e and isinstance(e["match"]["left"], dict)
                         and e["match"]["left"].get("payload", {}).get("field") == "dport")
            have.add((str(match["saddr"]), str(match["daddr"]), proto, match["dport"]))
    return have


def _expect(rules, source) -> set[tuple[str, str, str, int]]:
    return {(source(r), str(r.endpoint.address), r.endpoint.proto, r.endpoint.port) for r in rules}


@control("rampart-fw-07", "Inbound accepts match the topology's declared flows exactly")
def inbound_matches_topology(facts: Facts) -> None:
    topo = facts.topology
    want = _expect(topo.inbound(facts.name), lambda r: str(r.path.src_address))
    have = _matches(facts, "input")
    assert have == want, f"missing: {sorted(want - have)}; undeclared: {sorted(have - want)}"


@control("rampart-fw-10", "Outbound accepts match the topology's declared flows exactly", applies=_platform)
def outbound_matches_topology(facts: Facts) -> None:
    topo = facts.topology
    want = _expect(topo.outbound(facts.name), lambda r: str(topo.own_source(r)))
    have = _matches(facts, "output")
    assert have == want, f"missing: {sorted(want - have)}; undeclared: {sorted(have - want)}"


@control("rampart-fw-11", "The gateway forwards exactly the topology's forwarded flows",
         applies=lambda facts: facts.router)
def forward_matches_topology(facts: Facts) -> None:
    topo = facts.topology
    want = _expect(topo.forwarded(), lambda r: str(topo.own_source(r)))
    have = _matches(facts, "forward")
    assert have == want, f"missing: {sorted(want - have)}; undeclared: {sorted(have - want)}"


@control("rampart-fw-08", "The ruleset is loaded at boot from a root-owned file", units=["nftables.service"],
         stat=["/etc/nftables.conf"], read=["/etc/nftables.conf"])
def persisted(facts: Facts) -> None:
    assert facts.unit("nftables.service").get("UnitFileState") == "enabled", "nftables.service not enabled"
    st = facts.stat("/etc/nftables.conf")
    assert st and st["user"] == "root" and mode_at_most(st, 0o750), f"/etc/nftables.conf is {describe(st)}"
    assert "table inet rampart {" in (facts.file("/etc/nftables.conf") or ""), "boot file lacks table rampart"


@control("rampart-fw-09", "Only the router forwards and NATs; its NAT covers exactly the egress flows")
def forwarding_only_on_router(facts: Facts) -> None:
    topo = facts.topology
    chains = _base_chains(facts)
    forward_accepts = [r for r in _rules(facts, "forward") if _has(r, "accept")]
    if facts.name != topo.gateway:
        assert not forward_accepts, f"{len(forward_accepts)} forward accepts on a non-router"
        assert ("inet", "rampart", "postrouting") not in chains, "NAT on a non-router"
        return
    nat_rules = [r for r in _rules(facts, "postrouting") if _has(r, "snat")]
    assert len(nat_rules) == len({(r.path.source, r.endpoint) for r in topo.forwarded() if r.path.nat})


def _peers(facts: Facts) -> list[list[str]]:
    wg = facts.data["wg"]
    assert wg["rc"] == 0 and wg["out"].strip(), "no WireGuard interface is up"
    return [line.split("\t") for line in wg["out"].splitlines() if len(line.split("\t")) == 9]


@control("rampart-vpn-01", "The WireGuard hub listens on the topology's port with the vpn zone's first address",
         applies=_hub)
def hub_up(facts: Facts) -> None:
    topo = facts.topology
    wg = facts.data["wg"]
    assert wg["rc"] == 0 and wg["out"].strip(), "wg0 is not up"
    iface = [line.split("\t") for line in wg["out"].splitlines() if len(line.split("\t")) == 5]
    port = topo.services["wireguard"].port
    assert iface and int(iface[0][3]) == port, f"listen port {iface[0][3] if iface else '-'} != {port}"
    assert facts.data["listen"].count(f":{port}") >= 1, f"nothing listens on udp/{port}"


def _declared_peers(facts: Facts) -> dict[str, str]:
    """name -> public key, from the inventory's vpn.yml and the keys generated on the controller."""
    env = facts.topology.name
    spec = yaml.safe_load((ROOT / "inventory" / env / "group_vars" / "all" / "vpn.yml").read_text())
    keys = ROOT / "output" / "wireguard" / env / "keys"
    out = {}
    for peer in spec.get("wireguard_peers", []):
        pub = peer.get("public_key") or (keys / f"{peer['name']}.pub").read_text().strip()
        out[peer["name"]] = pub
    return out


@control("rampart-vpn-02", "The hub has exactly the declared peers, each with a preshared key", applies=_hub)
def hub_peers(facts: Facts) -> None:
    want = _declared_peers(facts)
    peers = _peers(facts)
    have = {p[1] for p in peers}
    missing = sorted(name for name, key in want.items() if key not in have)
    undeclared = len(have - set(want.values()))
    assert not missing and not undeclared, f"peers missing on the hub: {missing}; undeclared peers: {undeclared}"
    no_psk = [p[1][:8] for p in peers if p[2] in ("(none)", "")]
    assert not no_psk, f"peers without a preshared key: {no_psk}"


@control("rampart-vpn-03", "Each peer may use only its own /32 inside the vpn zone", applies=_hub)
def peer_allowed_ips(facts: Facts) -> None:
    cidr = facts.topology.vpn_zone.cidr
    bad = []
    for p in _peers(facts):
        nets = [ipaddress.ip_network(n) for n in p[4].split(",") if n and n != "(none)"]
        if len(nets) != 1 or nets[0].prefixlen != 32 or not nets[0].subnet_of(cidr):
            bad.append(f"{p[1][:8]}…: {p[4]}")
    assert not bad, f"peers with broader AllowedIPs: {bad}"


@control("rampart-vpn-04", "VPN keys: the hub's key is made on the hub and private; no copy in its config or on "
         "the controller", applies=_hub, stat=["/etc/wireguard/wg0.conf", "/etc/wireguard/wg0.key"],
         read=["/etc/wireguard/wg0.conf"])
def key_modes(facts: Facts) -> None:
    # /etc/wireguard itself is covered by rampart-files-01 on every host.
    bad = []
    for name in ("wg0.conf", "wg0.key"):
        st = facts.stat(f"/etc/wireguard/{name}")
        if not (st and st["user"] == "root" and mode_at_most(st, 0o600)):
            bad.append(f"{name} is {describe(st)}")
    if "PrivateKey" in (facts.file("/etc/wireguard/wg0.conf") or ""):
        bad.append("wg0.conf carries a private key (the hub loads its own key file)")
    if any((ROOT / "output" / "wireguard" / facts.topology.name / "keys").glob("server.*")):
        bad.append("the controller keeps a copy of the hub's key")
    store = ROOT / "output" / "wireguard" / facts.topology.name
    for path in [store, *store.rglob("*")]:
        limit = 0o700 if path.is_dir() else 0o600
        if path.stat().st_mode & 0o777 & ~limit:
            bad.append(f"controller {path.relative_to(ROOT)} is {path.stat().st_mode & 0o777:04o}")
    assert not bad, "; ".join(bad)
