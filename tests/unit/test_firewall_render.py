"""The firewall and WireGuard filters: what they derive from the lab topology, the rendered ruleset passes
`nft -c`, and bad input is refused with the file and the entry named."""

import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml
from rampart.topology import TopologyError, parse
from support.plugins import load_plugin

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "inventory/lab/topology.yml"
filters = load_plugin("plugins/filter/rampart.py", "rampart_filters")
FilterError = filters.AnsibleFilterError
KEY = "wQ+YA105Wg0dqVRxOSXBdzcdTutMQo4Rj3HdxnACSww="


def render(host: str, output_filtering: bool = True) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "roles/firewall/templates"),
                             undefined=jinja2.StrictUndefined, autoescape=jinja2.select_autoescape(["html"]))
    env.filters["basename"] = lambda p: Path(p).name
    defaults = yaml.safe_load((ROOT / "roles/firewall/defaults/main.yml").read_text())
    defaults["firewall_output_filtering"] = output_filtering
    return env.get_template("nftables.conf.j2").render(
        **defaults, ansible_managed="test",
        inventory_hostname=host, rampart_topology_file=str(TOPOLOGY),
        firewall_model=filters.rampart_firewall(str(TOPOLOGY), host))


def test_bot01_talks_only_along_its_flows():
    fw = filters.rampart_firewall(str(TOPOLOGY), "bot01")
    outbound = {(r["daddr"], r["port"]) for r in fw["outbound"]}
    # the exchange (NATed by the gateway), the database, Vault, logs (Loki, journal), apt proxy, time: nothing else
    assert outbound == {("10.77.0.178", 9443), ("10.77.30.88", 5432), ("10.77.40.118", 8200),
                        ("10.77.50.136", 3100), ("10.77.10.1", 3142), ("10.77.10.1", 123), ("10.77.50.136", 19532)}
    assert all(r["saddr"] == "10.77.20.80" for r in fw["outbound"] if r["port"] not in (3142, 123))
    assert {"saddr": "10.77.10.1", "daddr": "10.77.10.80", "port": 22} in [
        {k: r[k] for k in ("saddr", "daddr", "port")} for r in fw["inbound"]]
    assert fw["controller_ssh"] and not fw["forward"] and not fw["nat"]


def test_gateway_forwards_declared_flows_and_nats_only_egress():
    fw = filters.rampart_firewall(str(TOPOLOGY), "gateway", "wg0")
    assert {(r["iif"], r["oif"]) for r in fw["forward"]} >= {("trading", "internet"), ("wg0", "mgmt")}
    assert all(r["iif"] != "internet" for r in fw["forward"]), "nothing enters the platform from outside"
    assert [(r["oif"], r["saddr"], r["to"]) for r in fw["nat"]] == [("internet", "10.77.20.80", "10.77.0.208")]
    vpn_in = [r for r in fw["inbound"] if r["saddr"] == "10.77.99.0/24"]
    assert vpn_in and all(r["iif"] == "wg0" for r in vpn_in)


@pytest.mark.skipif(not shutil.which("nft") or not shutil.which("unshare"), reason="needs nft and unshare")
@pytest.mark.parametrize("host", ["gateway", "bot01", "db01", "mon01", "exchange"])
def test_rendered_ruleset_passes_nft_check(tmp_path, host):
    path = tmp_path / f"{host}.nft"
    path.write_text(render(host, output_filtering=host != "exchange"))
    proc = subprocess.run(["unshare", "-rn", "nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert 'log prefix "rampart-drop-in: "' in path.read_text()


@pytest.mark.skipif(not shutil.which("nft") or not shutil.which("unshare"), reason="needs nft and unshare")
def test_a_bad_rule_fails_nft_check(tmp_path):
    """What the role's `validate: nft -c -f %s` guards against: the file is never installed."""
    path = tmp_path / "bad.nft"
    path.write_text(render("bot01").replace("tcp dport 22 accept", "tcp dport 99999 accept", 1))
    proc = subprocess.run(["unshare", "-rn", "nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "99999" in proc.stderr


def test_flow_to_unknown_service_is_rejected():
    data = yaml.safe_load(TOPOLOGY.read_text())
    data["flows"].append({"from": "trading", "to": "redis", "why": "cache"})
    index = len(data["flows"]) - 1
    with pytest.raises(TopologyError, match=rf"lab.yml: flows\[{index}\]\.to: unknown service 'redis'"):
        parse(data, "lab.yml")


def test_topology_without_controller_ssh_is_rejected():
    data = yaml.safe_load(TOPOLOGY.read_text())
    data["flows"] = [f for f in data["flows"] if f["to"] != "ssh"]
    with pytest.raises(TopologyError, match="no flow lets the controller reach ssh"):
        parse(data, "lab.yml")


def test_hub_from_the_topology():
    hub = filters.rampart_wireguard_hub(str(TOPOLOGY))
    assert hub == {"address": "10.77.99.1/24", "cidr": "10.77.99.0/24", "port": 51820,
                   "endpoint": "10.77.1.1", "allowed_ips": ["10.77.10.0/24"]}


def test_peer_addresses_are_stable_and_keyed_by_name():
    one = filters.rampart_wireguard_peers([{"name": "alice"}], str(TOPOLOGY))
    two = filters.rampart_wireguard_peers([{"name": "alice"}, {"name": "bob", "public_key": KEY}], str(TOPOLOGY))
    assert one[0] == two[0]
    assert two[1]["public_key"] == KEY and two[1]["address"] != two[0]["address"]
    pinned = filters.rampart_wireguard_peers([{"name": "carol", "address": "10.77.99.50"}], str(TOPOLOGY))
    assert pinned[0]["address"] == "10.77.99.50"


@pytest.mark.parametrize("peers, words", [
    ([{"name": "alice"}, {"name": "alice"}], "vpn.yml[1].name: duplicate peer name 'alice'"),
    ([{"name": "bob", "public_key": "not-a-key"}], "vpn.yml[0].public_key: malformed WireGuard key"),
    ([{"name": "bob", "public_key": KEY[:-1]}], "vpn.yml[0].public_key: malformed"),
    ([{"name": "Bob"}], "vpn.yml[0].name: invalid peer name"),
    ([{"name": "bob", "address": "10.77.10.5"}], "vpn.yml[0].address: 10.77.10.5 is not a usable peer address"),
    ([{"name": "bob", "address": "10.77.99.1"}], "is not a usable peer address"),
    ([{"name": "bob", "port": 1}], "vpn.yml[0]: unknown key(s) port"),
    ("alice", "vpn.yml: expected a list of peers"),
])
def test_bad_peers_are_rejected_naming_the_entry(peers, words):
    with pytest.raises(FilterError) as err:
        filters.rampart_wireguard_peers(peers, str(TOPOLOGY), "vpn.yml")
    assert words in str(err.value)


def test_every_accept_is_bound_to_the_leg_it_must_arrive_on():
    """A source address is trusted only on its own leg: a spoofed controller address arriving anywhere else
    (or a VPN address not routed in by the gateway) matches nothing."""
    for host in ("bot01", "db01", "mon01", "exchange"):
        fw = filters.rampart_firewall(str(TOPOLOGY), host)
        for r in fw["inbound"]:
            assert r["iif"], f"{host}: accept without an interface: {r}"
        if host != "exchange":  # outside hosts have no management leg
            mgmt = [r for r in fw["inbound"] if r["saddr"] in ("10.77.10.1", "10.77.99.0/24")]
            assert mgmt and all(r["iif"] == "mgmt" for r in mgmt), host


def test_ping_only_for_operators_and_no_router_advertisements():
    text = render("bot01", output_filtering=True)
    echo = [line for line in text.splitlines() if "echo-request" in line]
    assert echo and all('iifname "mgmt"' in line and "ip saddr" in line for line in echo), echo
    assert {line.split("ip saddr ")[1].split()[0] for line in echo} == {"10.77.10.1", "10.77.99.0/24"}
    assert "nd-router-advert" not in text


@pytest.mark.skipif(not shutil.which("nft") or not shutil.which("unshare"), reason="needs nft and unshare")
def test_rollback_floor_is_default_deny_with_only_the_controllers_ssh(tmp_path):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "roles/firewall/templates"),
                             undefined=jinja2.StrictUndefined, autoescape=jinja2.select_autoescape(["html"]))
    text = env.get_template("minimal.nft.j2").render(
        ansible_managed="test", inventory_hostname="db01",
        firewall_model=filters.rampart_firewall(str(TOPOLOGY), "db01"))
    accepts = [line.strip() for line in text.splitlines() if line.strip().endswith('SSH"')]
    assert accepts == ['ip saddr 10.77.10.1 ip daddr 10.77.10.88 tcp dport 22 accept comment "the controller\'s SSH"',
                       'ip saddr 10.77.10.88 ip daddr 10.77.10.1 tcp sport 22 accept comment "the controller\'s SSH"']
    assert text.count("policy drop") == 3
    path = tmp_path / "minimal.nft"
    path.write_text(text)
    proc = subprocess.run(["unshare", "-rn", "nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
