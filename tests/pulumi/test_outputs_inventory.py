"""Stack outputs carry what Ansible needs, and the adapter turns them into the inventory."""

from __future__ import annotations

import json

import pytest
import yaml
from rampart.pulumi import inventory


def test_outputs_describe_hosts_addresses_zones_and_user(lab_run):
    topo = lab_run.topology
    out = lab_run.outputs
    assert out["sshUser"] == "ansible"
    assert set(out["hosts"]) == {h.name for h in topo.managed_hosts()}
    assert set(out["zones"]) == set(topo.zones)
    for name, h in out["hosts"].items():
        assert h["accessAddress"] == str(topo.access_address(name))
        assert h["zone"] == topo.hosts[name].zone
        assert h["roles"] == list(topo.hosts[name].roles)
        assert out["addresses"][name] == {z: str(a) for z, a in topo.hosts[name].addresses.items()}
    wg = topo.services["wireguard"]
    assert out["wireguard"]["host"] == topo.gateway
    assert out["wireguard"]["port"] == wg.port
    assert out["wireguard"]["published"] == f"0.0.0.0:{wg.port}/{wg.proto}"
    outside = next(z for z in topo.hosts[topo.gateway].addresses if topo.zones[z].external)
    assert out["wireguard"]["address"] == str(topo.hosts[topo.gateway].addresses[outside])


def test_inventory_groups_match_the_topology(lab_run):
    topo = lab_run.topology
    inv = inventory.build_inventory(lab_run.outputs)["all"]
    assert inv["vars"]["ansible_user"] == "ansible"
    assert "ansible_ssh_common_args" not in inv["vars"]  # local Docker: no jump host
    assert set(inv["hosts"]) == {h.name for h in topo.managed_hosts()}
    for name, hv in inv["hosts"].items():
        assert hv["ansible_host"] == str(topo.access_address(name))
    groups = inv["children"]
    for zone in topo.zones:
        members = set((groups.get(zone) or {}).get("hosts", {}))
        assert members == {h.name for h in topo.managed_hosts() if h.zone == zone}, zone
    for role in {r for h in topo.managed_hosts() for r in h.roles}:
        assert set(groups[role]["hosts"]) == {h.name for h in topo.managed_hosts() if role in h.roles}
    assert set(groups["outside"]["hosts"]) == {h.name for h in topo.managed_hosts()
                                               if topo.zones[h.zone].external}
    assert set(groups["platform"]["hosts"]) == {h.name for h in topo.managed_hosts()
                                                if not topo.zones[h.zone].external}


def test_cli_reads_stdin_json_and_writes_yaml(lab_run, tmp_path, monkeypatch, capsys):
    src = tmp_path / "outputs.json"
    src.write_text(json.dumps(lab_run.outputs))
    dest = tmp_path / "inventory.yml"
    assert inventory.main([str(src), "-o", str(dest)]) == 0
    from_file = yaml.safe_load(dest.read_text())
    monkeypatch.setattr("sys.stdin", open(src))  # noqa: SIM115
    assert inventory.main(["-"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == from_file
    assert from_file == inventory.build_inventory(lab_run.outputs)


def test_ssh_docker_host_adds_a_jump(lab_run):
    outputs = dict(lab_run.outputs, dockerHost="ssh://deploy@docker01.example.net:2222")
    inv = inventory.build_inventory(outputs)["all"]
    assert inv["vars"]["ansible_ssh_common_args"] == "-o ProxyJump=deploy@docker01.example.net:2222"
    assert "ansible_ssh_common_args" not in inventory.build_inventory(outputs, jump=False)["all"]["vars"]


@pytest.mark.parametrize("outputs, message", [
    ({}, "missing stack output(s): hosts, sshUser, topologyVars"),
    ({"hosts": {}, "sshUser": "ansible", "topologyVars": {}}, "run `pulumi up` first"),
    ({"hosts": {"a": {"zone": "z"}}, "sshUser": "u", "topologyVars": {}}, "hosts.a: missing 'view'"),
    ([], "expected the JSON object"),
])
def test_bad_outputs_are_clear_errors(outputs, message):
    with pytest.raises(inventory.OutputsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        inventory.build_inventory(outputs)


def test_cli_reports_bad_json_without_traceback(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    assert inventory.main([str(bad)]) == 2
    assert "not JSON" in capsys.readouterr().err
