"""What the topology loader and validator refuse (issue 14, finding 4), how they fail (one escaped, short
line naming file, key path and problem; never a traceback), `from: any` (finding 9) and linear work."""

from __future__ import annotations

import copy
import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rampart import topology
from rampart.bench import synthetic_topology
from rampart.topology import TopologyError, load, parse
from support.plugins import load_plugin

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventory" / "lab" / "topology.yml"
PROD = ROOT / "inventory" / "prod" / "topology.yml"
LAB_TEXT = LAB.read_text()
MAX_MESSAGE = 600


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(LAB_TEXT)


def one_line(msg: str) -> bool:
    return len(msg) <= MAX_MESSAGE and all(" " <= ch <= "~" for ch in msg)


def refused(raw, mutate) -> str:
    data = copy.deepcopy(raw)
    mutate(data)
    with pytest.raises(TopologyError) as exc:
        parse(data, "t.yml")
    msg = str(exc.value)
    assert one_line(msg), msg
    return msg


def refused_file(tmp_path, content: bytes | str) -> str:
    path = tmp_path / "topology.yml"
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    with pytest.raises(TopologyError) as exc:
        load(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: "), msg
    assert one_line(msg), msg
    return msg


# ---- the file: size, encoding, YAML features that hide or multiply content ---------------------------

def test_duplicate_top_level_key_is_refused(tmp_path):
    msg = refused_file(tmp_path, LAB_TEXT + "gateway: bot01\n")
    assert ": gateway: duplicate key" in msg and "first at line" in msg


def test_duplicate_nested_key_is_refused_with_its_path(tmp_path):
    text = LAB_TEXT.replace("bot01: {zone: trading, roles: [bot]}", "bot01: {zone: trading, roles: [bot], zone: data}")
    assert ": hosts.bot01.zone: duplicate key" in refused_file(tmp_path, text)


def test_duplicate_host_is_refused(tmp_path):
    text = LAB_TEXT.replace("  db01: {zone: data", "  bot01: {zone: data, roles: [db]}\n  db01: {zone: data")
    assert ": hosts.bot01: duplicate key" in refused_file(tmp_path, text)


def test_duplicate_key_in_a_list_item_is_refused(tmp_path):
    text = LAB_TEXT.replace("{from: trading, to: postgres,", "{from: trading, to: postgres, to: vault,")
    assert ": flows[5].to: duplicate key" in refused_file(tmp_path, text)


def test_aliases_are_refused(tmp_path):
    text = LAB_TEXT.replace("  bot01: {zone: trading, roles: [bot]}",
                            "  bot01: &bot {zone: trading, roles: [bot]}\n  bot02: *bot")
    assert "anchors are not allowed" in refused_file(tmp_path, text)


def test_alias_bomb_gives_a_short_message_fast(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = "\n".join(lines) + "\nname: *a8\n"
    assert len(bomb) < 4096
    assert "not allowed" in refused_file(tmp_path, bomb)


def test_merge_keys_are_refused(tmp_path):
    text = LAB_TEXT.replace("bot01: {zone: trading, roles: [bot]}", "bot01: {<<: {zone: trading}, roles: [bot]}")
    assert ": hosts.bot01: merge key '<<'" in refused_file(tmp_path, text)


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path, opening, closing):
    msg = refused_file(tmp_path, "name: " + opening * 20000 + "1" + closing * 20000 + "\n")
    assert "nested more than" in msg


@pytest.mark.parametrize("encoding, words", [
    ("utf-16", "encoded as UTF-16"),
    ("utf-16-le", "NUL bytes"),
    ("utf-32", "encoded as UTF-32"),
    ("latin-1", "not UTF-8 (byte 0xe9)"),
])
def test_other_encodings_are_refused(tmp_path, encoding, words):
    text = LAB_TEXT.replace("# The lab environment", "# The lab environment (café)")
    assert words in refused_file(tmp_path, text.encode(encoding))


def test_a_utf8_bom_is_tolerated(tmp_path):
    path = tmp_path / "topology.yml"
    path.write_bytes(b"\xef\xbb\xbf" + LAB_TEXT.encode())
    assert load(path).rules() == load(LAB).rules()


def test_files_beyond_the_size_limit_are_refused(tmp_path):
    padding = ("# " + "x" * 98 + "\n") * 11000  # a valid topology with ~1.1 MB of comments
    assert "larger than 1048576 bytes" in refused_file(tmp_path, LAB_TEXT + padding)


def test_values_python_cannot_build_are_refused(tmp_path):
    msg = refused_file(tmp_path, LAB_TEXT.replace("port: 5432", "port: " + "9" * 5000))
    assert "cannot read this value" in msg and "line" in msg


def test_control_characters_in_keys_are_escaped(tmp_path):
    text = LAB_TEXT.replace("  db01: {zone: data", '  "db\\e[31m\\r\\u202e01": {zone: data')
    msg = refused_file(tmp_path, text)
    assert "hosts.db\\x1b[31m\\r\\u202e01" in msg and "invalid name" in msg


def test_a_huge_value_gives_a_short_message(raw):
    msg = refused(raw, lambda d: d.update(name="N" * 500_000))
    assert msg.startswith("t.yml: name: invalid name")


def test_control_characters_in_yaml_text_are_refused(tmp_path):
    assert "character '\\x1b' is not allowed" in refused_file(tmp_path, LAB_TEXT + "# \x1b[2J\n")


# ---- the validator: every item of finding 4 -----------------------------------------------------------

@pytest.mark.parametrize("domain", ["lab.internal\n10.66.66.66 vault01.lab.internal vault01", "Lab.Internal",
                                    "lab_x.internal", "lab..internal", "-lab.internal", "lab.internal.", "",
                                    "a" * 64 + ".internal", 42, ["lab"]])
def test_invalid_domain_is_refused(raw, domain):
    assert refused(raw, lambda d: d.update(domain=domain)).startswith("t.yml: domain: invalid domain")


def test_default_domain_from_an_invalid_name_is_refused(raw):
    def mutate(d):
        d.pop("domain")
        d["name"] = "my_lab"
    assert refused(raw, mutate).startswith("t.yml: name: invalid domain 'my_lab.rampart.internal'")


def test_gateway_cannot_be_the_controller(raw):
    assert "is the controller, which is not managed" in refused(raw, lambda d: d.update(gateway="controller"))


def test_gateway_cannot_be_an_external_host(raw):
    msg = refused(raw, lambda d: d.update(gateway="admin"))
    assert msg.startswith("t.yml: gateway: ") and "external zone 'internet'" in msg


@pytest.mark.parametrize("host, also, words", [
    ("bot01", ["internet"], "direct access to the outside, bypassing the gateway"),
    ("db01", ["trading"], "without crossing the gateway"),
    ("db01", ["vpn"], "is the vpn zone"),
    ("admin", ["trading"], "lives outside the platform"),
    ("admin", ["mgmt"], "lives outside the platform"),
    ("controller", ["data"], "without crossing the gateway"),
    ("db01", ["mgmt", "mgmt"], "listed twice"),
    ("db01", ["data"], "listed twice"),
])
def test_legs_that_bypass_the_gateway_are_refused(raw, host, also, words):
    msg = refused(raw, lambda d: d["hosts"][host].update(also=also))
    assert msg.startswith(f"t.yml: hosts.{host}.also[") and words in msg


def test_also_on_the_gateway_is_refused(raw):
    msg = refused(raw, lambda d: d["hosts"]["gateway"].update(also=["internet"]))
    assert msg == "t.yml: hosts.gateway.also: the gateway has a leg in every zone already; remove also"


def test_safe_legs_are_accepted(raw):
    data = copy.deepcopy(raw)
    data["hosts"]["db01"]["also"] = ["mgmt"]  # every internal host has it anyway
    data["zones"]["partner"] = {"cidr": "10.77.5.0/24", "external": True}
    data["hosts"]["admin"]["also"] = ["partner"]  # outside hosts may join other outside networks
    topo = parse(data, "t.yml")
    assert topo.hosts["controller"].also == ("internet",)  # the lab's upstream of the simulated internet
    assert "partner" in topo.hosts["admin"].addresses


def test_controller_must_live_in_the_management_zone(raw):
    msg = refused(raw, lambda d: d["hosts"]["controller"].update(zone="edge"))
    assert msg.startswith("t.yml: hosts.controller.zone: the controller must live in the management zone")


@pytest.mark.parametrize("cidr, words", [
    ("127.0.0.0/24", "loopback"),
    ("224.0.5.0/24", "multicast"),
    ("169.254.3.0/24", "link-local"),
    ("0.0.0.0/24", "'this network'"),
    ("240.0.0.0/24", "reserved"),
    ("255.255.255.0/24", "reserved"),
    ("8.8.8.0/24", "not private address space"),
    ("100.64.0.0/24", "not private address space"),
])
def test_zone_address_space_is_checked(raw, cidr, words):
    msg = refused(raw, lambda d: d["zones"]["backup"].update(cidr=cidr))
    assert msg.startswith("t.yml: zones.backup.cidr: ") and words in msg


@pytest.mark.parametrize("cidr", ["127.77.0.0/24", "224.77.0.0/24", "169.254.77.0/24", "240.77.0.0/24"])
def test_external_zones_need_unicast_space_too(raw, cidr):
    assert refused(raw, lambda d: d["zones"]["internet"].update(cidr=cidr)).startswith("t.yml: zones.internet.cidr: ")


def test_external_zones_may_be_public():
    assert load(PROD).zones["internet"].cidr == ipaddress.IPv4Network("203.0.113.0/24")


@pytest.mark.parametrize("address, words", [("10.77.30.0", "network address"), ("10.77.30.255", "broadcast address")])
def test_hosts_pinned_to_network_or_broadcast_are_refused(raw, address, words):
    msg = refused(raw, lambda d: d["hosts"]["db01"].update(address=address))
    assert msg.startswith("t.yml: hosts.db01.address: ") and words in msg


def test_hosts_pinned_to_an_external_zones_router_are_refused(raw):
    def mutate(d):
        d["hosts"]["controller"].pop("also")
        d["hosts"]["exchange"]["address"] = "10.77.0.1"
    assert "reserved for the upstream router" in refused(raw, mutate)


@pytest.mark.parametrize("keyword", ["platform", "all", "any"])
def test_zones_named_like_keywords_are_refused(raw, keyword):
    def mutate(d):
        d["zones"][keyword] = d["zones"].pop("backup")
        d["hosts"]["backup01"]["zone"] = keyword
    msg = refused(raw, mutate)
    assert msg.startswith(f"t.yml: zones.{keyword}: zone name {keyword!r} is a keyword")


def test_hosts_named_like_keywords_are_refused(raw):
    def mutate(d):
        d["hosts"]["any"] = d["hosts"].pop("backup01")
    assert refused(raw, mutate).startswith("t.yml: hosts.any: host name 'any' is a keyword")


@pytest.mark.parametrize("name, words", [("backupstorage", "at most 12"), ("lo", "system interface"),
                                         ("wg0", "system interface")])
def test_zone_names_must_work_as_interface_names(raw, name, words):
    def mutate(d):
        d["zones"][name] = d["zones"].pop("backup")
        d["hosts"]["backup01"]["zone"] = name
    msg = refused(raw, mutate)
    assert msg.startswith(f"t.yml: zones.{name}: ") and words in msg


@pytest.mark.parametrize("name", ["backup_01", "backup01-", "b" * 64])
def test_host_names_must_be_dns_labels(raw, name):
    def mutate(d):
        d["hosts"][name] = d["hosts"].pop("backup01")
    assert "host names are DNS labels" in refused(raw, mutate)


@pytest.mark.parametrize("why, char", [("operators dial in — from home", "\\u2014"),
                                       ("the bot trades on the exchange (café)", "\\xe9"),
                                       ("line one\nline two", "\\n"), ("tab\there", "\\t"),
                                       ("colour \x1b[31mred", "\\x1b")])
def test_why_must_be_printable_ascii(raw, why, char):
    msg = refused(raw, lambda d: d["flows"][3].update(why=why))
    assert msg.startswith("t.yml: flows[3].why: character ") and char in msg


@pytest.mark.skipif(not shutil.which("nft") or not shutil.which("unshare"), reason="needs nft and unshare")
def test_the_non_ascii_why_the_check_refuses_would_fail_nft(tmp_path):
    """Why ASCII only: the firewall clips comments to 120 characters, and nft allows 128 bytes."""
    comment = ("€ " * 60)[:120]
    rule = tmp_path / "r.nft"
    rule.write_text(f'table inet t {{\n chain c {{\n  tcp dport 22 accept comment "{comment}"\n }}\n}}\n')
    proc = subprocess.run(["unshare", "-rn", "nft", "-c", "-f", str(rule)], capture_output=True, text=True)
    assert proc.returncode != 0


# ---- from: any (finding 9) -------------------------------------------------------------------------------

def with_any(raw, source="any") -> dict:
    data = copy.deepcopy(raw)
    flow = next(f for f in data["flows"] if f["to"] == "wireguard")
    flow["from"] = source
    return data


def test_any_lets_operators_dial_in_from_anywhere(raw):
    topo = parse(with_any(raw), "t.yml")
    [rule] = [r for r in topo.rules() if r.path.source == "any@internet"]
    assert rule.endpoint.host == "gateway" and rule.endpoint.service == "wireguard"
    assert rule.path.src_address == ipaddress.IPv4Network("0.0.0.0/0")
    assert (rule.path.in_zone, rule.path.via_gateway, rule.path.nat) == ("internet", False, False)
    assert rule in topo.inbound("gateway")


def test_any_keeps_the_matrix_of_declared_outside_hosts(raw):
    before, after = parse(with_any(raw, "internet"), "t.yml"), parse(with_any(raw), "t.yml")
    assert after.matrix() == before.matrix()
    assert {r for r in before.rules()} < set(after.rules())


def test_any_works_for_the_prod_example():
    data = with_any(yaml.safe_load(PROD.read_text()))
    before, after = parse(with_any(yaml.safe_load(PROD.read_text()), "internet"), "prod.yml"), parse(data, "prod.yml")
    assert not [r for r in before.rules() if r.endpoint.service == "wireguard" and r.path.source != "exchange"]
    assert [str(r.path.src_address) for r in after.rules()
            if r.endpoint.service == "wireguard" and r.path.source.startswith("any@")] == ["0.0.0.0/0"]


@pytest.mark.parametrize("to, words", [("ssh", "'ssh' does not"), ("postgres", "'postgres' does not"),
                                       (["wireguard", "grafana"], "'grafana' does not")])
def test_any_reaches_only_the_gateways_front_door(raw, to, words):
    def mutate(d):
        d["flows"].append({"from": ["vpn", "any"], "to": to, "why": "too open"})
    msg = refused(raw, mutate)
    assert msg.startswith(f"t.yml: flows[{len(raw['flows'])}].to") and words in msg


def test_any_is_not_a_service_host_selector(raw):
    msg = refused(raw, lambda d: d["services"]["wireguard"].update(hosts="any"))
    assert msg.startswith("t.yml: services.wireguard.hosts: 'any' is a flow source only")


@pytest.mark.skipif(not shutil.which("nft") or not shutil.which("unshare"), reason="needs nft and unshare")
def test_an_any_rule_renders_and_passes_nft_check(raw, tmp_path):
    filters = load_plugin("plugins/filter/rampart.py", "rampart_filters_any")
    topo_file = tmp_path / "topology.yml"
    topo_file.write_text(yaml.safe_dump(with_any(raw), sort_keys=False))
    fw = filters.rampart_firewall(str(topo_file), "gateway", "wg0")
    assert {"iif": "internet", "saddr": "0.0.0.0/0", "port": 51820} in [
        {k: r[k] for k in ("iif", "saddr", "port")} for r in fw["inbound"]]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "roles/firewall/templates"),
                             undefined=jinja2.StrictUndefined, autoescape=jinja2.select_autoescape(["html"]))
    env.filters["basename"] = lambda p: Path(p).name
    defaults = yaml.safe_load((ROOT / "roles/firewall/defaults/main.yml").read_text())
    text = env.get_template("nftables.conf.j2").render(**defaults, ansible_managed="test",
                                                       inventory_hostname="gateway",
                                                       rampart_topology_file=str(topo_file), firewall_model=fw)
    assert 'iifname "internet" ip saddr 0.0.0.0/0 ip daddr 10.77.1.1 udp dport 51820 accept' in text
    rules = tmp_path / "gateway.nft"
    rules.write_text(text)
    proc = subprocess.run(["unshare", "-rn", "nft", "-c", "-f", str(rules)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---- work grows linearly with the topology (counted, not timed) ------------------------------------------

def calls_to_load(hosts: int) -> int:
    spec = synthetic_topology(hosts)
    count = 0
    source = topology.__file__

    def profiler(frame, event, arg):
        nonlocal count
        if event == "call" and frame.f_code.co_filename == source:
            count += 1

    sys.setprofile(profiler)
    try:
        topo = parse(spec, "bench.yml")
    finally:
        sys.setprofile(None)
    assert len(topo.hosts) == hosts
    return count


def test_validation_work_grows_linearly_with_hosts():
    small, big = calls_to_load(150), calls_to_load(300)
    assert big < 2.5 * small, f"{small} → {big} calls: validation is no longer linear in the hosts"


# ---- anything at all: a topology or one clean error ----------------------------------------------------

def loads_or_refuses(tmp_path, data: bytes) -> None:
    path = tmp_path / "fuzz.yml"
    path.write_bytes(data)
    try:
        load(path)
    except TopologyError as exc:
        assert one_line(str(exc)), str(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_load_or_fail_cleanly(tmp_path, data):
    loads_or_refuses(tmp_path, data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, len(LAB_TEXT)), st.text(max_size=12))
def test_the_lab_file_with_anything_inserted_loads_or_fails_cleanly(tmp_path, at, text):
    loads_or_refuses(tmp_path, (LAB_TEXT[:at] + text + LAB_TEXT[at:]).encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["domain", "why", "zone", "host"]), st.text(max_size=80))
def test_any_string_in_a_name_or_reason_is_accepted_or_refused_cleanly(raw, where, value):
    data = copy.deepcopy(raw)
    if where == "domain":
        data["domain"] = value
    elif where == "why":
        data["flows"][3]["why"] = value
    elif where == "zone":
        data["zones"][value] = data["zones"].pop("backup")
        data["hosts"]["backup01"]["zone"] = value
    else:
        data["hosts"][value] = data["hosts"].pop("backup01")
    try:
        topo = parse(data, "t.yml")
    except TopologyError as exc:
        assert one_line(str(exc)), str(exc)
        return
    # accepted: then it is safe where it ends up (hosts files, interface names, nft comments)
    assert one_line(topo.domain) and all(one_line(f.why) for f in topo.flows)
    assert all(len(z) <= 12 for z in topo.zones) and all(len(h) <= 63 for h in topo.hosts)


def test_controller_leg_in_a_real_external_zone_is_refused(raw):
    """Finding 3: the controller holds every key; only the lab's simulated internet may have it as upstream."""
    def mutate(d):
        d["zones"]["internet"].pop("simulated")
    msg = refused(raw, mutate)
    assert "hosts.controller.also" in msg and "must not have a leg in external zone 'internet'" in msg


def test_simulated_applies_to_external_zones_only(raw):
    msg = refused(raw, lambda d: d["zones"]["data"].update(simulated=True))
    assert "zones.data.simulated" in msg


def test_unmanaged_hosts_are_outside_the_inventory_and_need_no_ssh_path():
    prod = load(PROD)
    assert "exchange" in prod.hosts and "exchange" not in {h.name for h in prod.managed_hosts()}
    assert "exchange" not in prod.hosts_of("all")
    assert prod.hosts["controller"].also == ()


def test_only_outside_hosts_can_be_unmanaged(raw):
    msg = refused(raw, lambda d: d["hosts"]["db01"].update(managed=False))
    assert "hosts.db01.managed" in msg
