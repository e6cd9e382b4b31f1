"""The topology model: loading, validation messages, derivation, and its invariants (hypothesis)."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rampart.topology import TopologyError, load, parse

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventory" / "lab" / "topology.yml"
APPENDED = len(yaml.safe_load(LAB.read_text())["flows"])  # the index a flow appended by a test gets


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(LAB.read_text())


@pytest.fixture(scope="module")
def lab():
    return load(LAB)


def broken(raw, mutate):
    data = copy.deepcopy(raw)
    mutate(data)
    with pytest.raises(TopologyError) as exc:
        parse(data, "t.yml")
    return str(exc.value)


# ---- the shipped topologies -------------------------------------------------------------------------

@pytest.mark.parametrize("env", sorted(p.parent.name for p in (ROOT / "inventory").glob("*/topology.yml")))
def test_shipped_topologies_load(env):
    topo = load(ROOT / "inventory" / env / "topology.yml")
    assert topo.rules()


def test_addresses_are_inside_their_zones_and_unique(lab):
    seen = set()
    for h in lab.hosts.values():
        for zone, addr in h.addresses.items():
            assert addr in lab.zones[zone].cidr
            assert (zone, addr) not in seen
            seen.add((zone, addr))


def test_gateway_is_first_address_of_internal_zones_and_default_route(lab):
    gw = lab.hosts[lab.gateway]
    for z in lab.zones.values():
        if z.internal and not z.management:
            assert gw.addresses[z.name] == next(z.cidr.hosts())
    assert lab.default_gateway("bot01") == gw.addresses["trading"]


def test_address_plan_is_stable_when_a_host_is_added(raw, lab):
    data = copy.deepcopy(raw)
    data["hosts"]["db02"] = {"zone": "data", "roles": ["postgres"]}
    bigger = parse(data, "t.yml")
    for name, h in lab.hosts.items():
        assert bigger.hosts[name].addresses == h.addresses


def test_pinned_address_is_honoured(raw):
    data = copy.deepcopy(raw)
    data["hosts"]["db01"]["address"] = "10.77.30.50"
    assert str(parse(data).hosts["db01"].addresses["data"]) == "10.77.30.50"


def test_the_bot_reaches_exactly_its_declared_dependencies(lab):
    out = {(r.endpoint.host, r.endpoint.service) for r in lab.outbound("bot01")}
    assert out == {("exchange", "exchange_api"), ("db01", "postgres"), ("vault01", "vault"),
                   ("mon01", "loki"), ("controller", "apt_proxy"), ("controller", "ntp"),
                   ("mon01", "journal_remote")}


def test_egress_is_natted_on_the_gateway(lab):
    [rule] = [r for r in lab.forwarded() if r.endpoint.service == "exchange_api"]
    assert rule.path.nat and rule.path.src_address == lab.hosts[lab.gateway].addresses["internet"]
    assert not any(r.path.nat for r in lab.forwarded() if r.endpoint.service != "exchange_api")


def test_vpn_reaches_ssh_through_the_gateway_but_not_outside_hosts(lab):
    vpn_ssh = {r.endpoint.host for r in lab.rules() if r.path.source == "vpn" and r.endpoint.service == "ssh"}
    assert "db01" in vpn_ssh and "admin" not in vpn_ssh and "exchange" not in vpn_ssh


def test_management_services_listen_on_management_addresses(lab):
    for ep in lab.endpoints():
        if lab.services[ep.service].plane == "mgmt" and ep.zone == "mgmt":
            assert ep.address == lab.hosts[ep.host].addresses["mgmt"]


def test_scrape_targets_cover_every_platform_node_exporter(lab):
    targets = lab.scrape_targets()["node_exporter"]
    assert len(targets) == len(lab.hosts_of("platform"))
    assert all(t.endswith(":9100") for t in targets)


def test_hosts_need_a_route_back_to_vpn_peers(lab):
    assert lab.host_routes("db01") == [(lab.vpn_zone.cidr, lab.hosts[lab.gateway].addresses["mgmt"])]
    assert lab.host_routes(lab.gateway) == []


# ---- bad input: file, key path and problem, no traceback -----------------------------------------------

@pytest.mark.parametrize("mutate, path, words", [
    (lambda d: d["hosts"]["bot01"].update(zone="nowhere"), "hosts.bot01.zone", "unknown zone 'nowhere'"),
    (lambda d: d["zones"]["data"].update(cidr="10.77.20.0/25"), "zones.data.cidr", "overlaps zone 'trading'"),
    (lambda d: d["zones"]["data"].update(cidr="10.77.30.1/24"), "zones.data.cidr", "not an IPv4 network"),
    (lambda d: d["hosts"]["db01"].update(address="10.77.99.5"), "hosts.db01.address", "outside zone 'data'"),
    (lambda d: d["hosts"]["db01"].update(address="10.77.30.1"), "hosts.db01.address", "already used"),
    (lambda d: d["flows"].append({"from": "trading", "to": "redis", "why": "x"}), f"flows[{APPENDED}].to",
     "unknown service 'redis'"),
    (lambda d: d["flows"].append({"from": "dmz", "to": "ssh", "why": "x"}), f"flows[{APPENDED}].from",
     "unknown zone or host 'dmz'"),
    (lambda d: d["zones"].update(spare={"cidr": "10.77.70.0/24"}), "zones.spare", "zone has no hosts"),
    (lambda d: d["services"].update(pg2={"port": 5432, "hosts": ["db01"]}), "services.pg2.port",
     "already taken by 'postgres'"),
    (lambda d: d["services"]["vault"].update(hosts=["vault09"]), "services.vault.hosts[0]",
     "unknown host or zone 'vault09'"),
    (lambda d: d["services"]["vault"].update(port=70000), "services.vault.port", "1-65535"),
    (lambda d: d["hosts"]["db01"].update(colour="blue"), "hosts.db01.colour", "unknown key"),
    (lambda d: d["flows"][0].pop("why"), "flows[0].why", "missing required key"),
    (lambda d: d["zones"]["trading"].update(egress=False), "flows[4]", "egress: true"),
    (lambda d: d.update(flows=d["flows"][1:]), "flows", "locked out"),
    (lambda d: d["hosts"].update(bot01="oops"), "hosts.bot01", "expected a mapping"),
    (lambda d: d["hosts"].update({"Bot 2": {"zone": "trading"}}), "hosts.Bot 2", "invalid name"),
    (lambda d: d.update(gateway="router9"), "gateway", "unknown host 'router9'"),
])
def test_invalid_topologies_are_rejected_with_a_clear_message(raw, mutate, path, words):
    msg = broken(raw, mutate)
    assert msg.startswith(f"t.yml: {path}: "), msg
    assert words in msg


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(TopologyError, match="cannot read"):
        load(tmp_path / "missing.yml")
    bad = tmp_path / "topology.yml"
    bad.write_text("zones: [a\n")
    with pytest.raises(TopologyError, match=r"topology.yml: line \d+: not valid YAML"):
        load(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(TopologyError, match=r"\(top\): expected a mapping"):
        load(bad)


def test_cli_reports_errors_in_one_line(tmp_path, capsys, monkeypatch):
    from rampart import cli

    (tmp_path / "inventory" / "bad").mkdir(parents=True)
    (tmp_path / "inventory" / "bad" / "topology.yml").write_text("name: x\nzones: {}\n")
    monkeypatch.setenv("RAMPART_ROOT", str(tmp_path))
    assert cli.main(["--env", "bad", "topology", "check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "topology.yml: (top).gateway: missing required key" in err
    assert "Traceback" not in err


# ---- invariants over generated topologies ------------------------------------------------------------

ZONE_NAMES = ["alpha", "bravo", "charlie", "delta", "echo"]
SERVICE_PORTS = {"web": 443, "db": 5432, "cache": 6379, "metrics": 9100}


@st.composite
def topologies(draw):
    nzones = draw(st.integers(1, len(ZONE_NAMES)))
    zones = ZONE_NAMES[:nzones]
    spec = {"name": "gen", "gateway": "gw",
            "zones": {"mgmt": {"cidr": "10.9.0.0/24", "management": True},
                      "outer": {"cidr": "10.9.200.0/24", "external": True, "simulated": True},
                      "vpn": {"cidr": "10.9.250.0/24", "vpn": True}},
            "hosts": {"controller": {"zone": "mgmt", "also": ["outer"], "roles": ["controller"]},
                      "gw": {"zone": zones[0]}, "peer": {"zone": "outer"}},
            "services": {"ssh": {"port": 22, "plane": "mgmt", "hosts": "all"}},
            "flows": [{"from": "mgmt", "to": "ssh", "why": "ansible"}]}
    for i, z in enumerate(zones):
        spec["zones"][z] = {"cidr": f"10.9.{i + 1}.0/24", "egress": draw(st.booleans())}
        for j in range(draw(st.integers(1, 3))):
            spec["hosts"][f"{z}{j}"] = {"zone": z}
    hosts = sorted(h for h in spec["hosts"] if h != "controller")
    for name, port in SERVICE_PORTS.items():
        chosen = draw(st.lists(st.sampled_from(hosts), min_size=1, max_size=3, unique=True))
        spec["services"][name] = {"port": port, "hosts": chosen,
                                  "plane": draw(st.sampled_from(["zone", "mgmt"]))}
    sources = [*zones, "vpn", "outer", "platform", *hosts]
    for _ in range(draw(st.integers(0, 6))):
        spec["flows"].append({"from": draw(st.lists(st.sampled_from(sources), min_size=1, max_size=3)),
                              "to": draw(st.lists(st.sampled_from(list(SERVICE_PORTS)), min_size=1,
                                                  max_size=2)),
                              "why": f"generated flow {len(spec['flows'])}"})
    return spec


def parse_or_reject(spec):
    try:
        return parse(spec, "gen.yml")
    except TopologyError as exc:
        # The only rejection a generated topology may earn: a flow that can allow nothing.
        assert "allows nothing" in str(exc), str(exc)
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies())
def test_matrix_cells_come_from_declared_flows_and_flows_yield_cells(spec):
    topo = parse_or_reject(spec)
    if topo is None:
        return
    cells = topo.matrix()
    rules = {(r.path.source, r.endpoint): r for r in topo.rules()}
    for (src, ep), allowed in cells.items():
        if allowed:
            why = rules[(src, ep)].why
            flow = next(f for f in topo.flows if f.why == why and ep.service in f.services)
            assert any(src == s or src in topo.hosts_of(s) for s in flow.sources if s not in topo.zones
                       or not topo.zones[s].vpn)
    for flow in topo.flows:
        assert any(r.why == flow.why and r.endpoint.service in flow.services for r in topo.rules())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies())
def test_derivation_invariants(spec):
    topo = parse_or_reject(spec)
    if topo is None:
        return
    for r in topo.rules():
        ep, path = r.endpoint, r.path
        assert ep.host != path.source, "no rule for a host talking to itself"
        assert ep.address in topo.zones[ep.zone].cidr
        if path.nat:
            src_zone = topo.hosts[path.source].zone
            assert topo.zones[src_zone].egress and topo.zones[ep.zone].external
            assert path.src_address == topo.hosts[topo.gateway].addresses[ep.zone]
        if path.via_gateway:
            assert path.in_zone != path.out_zone
        elif isinstance(path.src_address, ipaddress.IPv4Address):
            # Direct traffic leaves from an address on the endpoint's own network, or, for the gateway
            # (which has a leg everywhere), from the source's own zone.
            assert path.src_address in topo.zones[ep.zone].cidr or (
                ep.host == topo.gateway and path.src_address in topo.zones[path.in_zone].cidr)
    # Every cell of the matrix is a (host, endpoint) pair, and only declared pairs are allowed.
    assert set(topo.matrix()) == {(h, ep) for h in topo.hosts for ep in topo.endpoints() if ep.host != h}
    # The address plan never depends on the order hosts are declared in.
    reordered = dict(spec, hosts=dict(reversed(list(spec["hosts"].items()))))
    again = parse(reordered, "gen.yml")
    assert {h: x.addresses for h, x in again.hosts.items()} == {h: x.addresses for h, x in topo.hosts.items()}
