"""Bad stack settings and topologies Docker cannot express fail at preview with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest
from pulumi_harness import LAB_TOPOLOGY, ROOT, config_for, run_program
from rampart.pulumi import plan as planning
from rampart.pulumi import settings
from rampart.topology import load


def _fails(raw, match, tmp_path=None):
    with pytest.raises(pulumi.RunError, match=match):
        run_program(raw, via_main=True)


def test_main_reads_the_engine_config(tmp_path):
    run = run_program(config_for(tmp_path, sshUser="ops"), via_main=True)
    assert run.outputs["sshUser"] == "ops"
    assert set(run.containers) == {h.name for h in load(LAB_TOPOLOGY).managed_hosts()}


@pytest.mark.parametrize("missing", ["topology", "dockerHost", "sshPublicKeyFile"])
def test_missing_required_setting_is_named(tmp_path, missing):
    raw = config_for(tmp_path)
    del raw[missing]
    _fails(raw, rf"rampart:{missing}: missing required setting")


def test_unknown_setting_is_named(tmp_path):
    _fails(config_for(tmp_path, dockerHots="unix:///x"), r"rampart:dockerHots: unknown setting")


@pytest.mark.parametrize("key, value, match", [
    ("dockerHost", "tcp://10.0.0.1:2375", r"rampart:dockerHost: .*unix:///"),
    ("restartPolicy", "sometimes", r"rampart:restartPolicy: 'sometimes'"),
    ("systemdCgroup", "runtime", r"rampart:containerRuntime: required"),
    ("sshUser", "root", r"rampart:sshUser: 'root'"),
    ("keepData", "maybe", r"rampart:keepData: expected true or false"),
    ("reservedSubnets", '["10.0.0.0/33"]', r"rampart:reservedSubnets\[0\]"),
    ("image", '{"name": "x", "tag": "y"}', r"rampart:image.tag: unknown key"),
    ("dataDirs", '{"postgres": ["/etc"]}', r"rampart:dataDirs.postgres: '/etc'"),
    ("topology", "inventory/none/topology.yml", r"rampart:topology: .* does not exist"),
])
def test_bad_values_are_named(tmp_path, key, value, match):
    _fails(config_for(tmp_path, **{key: value}), match)


def test_private_key_is_refused(tmp_path):
    key = tmp_path / "id"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    _fails(config_for(tmp_path) | {"sshPublicKeyFile": str(key)}, r"rampart:sshPublicKeyFile: .*public key")


def test_zone_overlapping_a_reserved_subnet_is_refused(tmp_path):
    _fails(config_for(tmp_path, reservedSubnets='["10.77.20.0/22"]'),
           r"zones\.\w+\.cidr: .* overlaps 10\.77\.20\.0/22.*rampart:reservedSubnets")


def test_broken_topology_is_a_one_line_error(tmp_path):
    bad = tmp_path / "topology.yml"
    bad.write_text("name: x\nzones: []\n")
    _fails(config_for(tmp_path, topology=str(bad)), r"topology.yml: .*")


def _topology_with_host_on(tmp_path: Path, address: str) -> Path:
    text = LAB_TOPOLOGY.read_text().replace(
        "  db01: {zone: data,", f"  db01: {{zone: data, address: {address},")
    path = tmp_path / "topology.yml"
    path.write_text(text)
    return path


def test_host_on_the_ipam_gateway_address_is_refused(tmp_path):
    topo = _topology_with_host_on(tmp_path, "10.77.30.254")
    _fails(config_for(tmp_path, topology=str(topo)),
           r"hosts\.db01: has 10\.77\.30\.254, the last usable address of zone 'data'"
           r".*pin hosts\.db01\.address")


def test_plan_is_pure_and_agrees_with_the_topology(tmp_path):
    s = settings.parse(config_for(tmp_path), ROOT)
    topo = load(LAB_TOPOLOGY)
    plan = planning.build(topo, s, "lab", ROOT)
    assert plan.wireguard is not None and plan.wireguard.port == topo.services["wireguard"].port
    assert plan.outputs()["topologyFile"] == "inventory/lab/topology.yml"
    pinned = load(_topology_with_host_on(tmp_path, "10.77.30.200"))
    db01 = planning.build(pinned, s, "lab").containers["db01"]
    assert str(db01.attachments[0].address) == "10.77.30.200"
