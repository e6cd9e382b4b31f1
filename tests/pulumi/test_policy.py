"""The policy pack's checks: compliant resources pass, each kind of violation is reported."""

from __future__ import annotations

import copy
import runpy
import types

import pytest
from pulumi_harness import LAB_TOPOLOGY, ROOT
from rampart.pulumi import policy_checks as checks


@pytest.fixture
def gateway(lab_run):
    return copy.deepcopy(lab_run.containers[lab_run.topology.gateway].inputs)


@pytest.fixture
def db(lab_run):
    return copy.deepcopy(lab_run.containers["db01"].inputs)


def test_privileged_and_host_namespaces_are_reported(db):
    db["privileged"] = True
    db["pidMode"] = "host"
    found = checks.check_not_privileged(db)
    assert any("privileged" in m for m in found) and any("pidMode" in m for m in found)


def test_extra_capabilities_and_missing_drop_all_are_reported(db):
    db["capabilities"] = {"adds": ["CAP_SYS_ADMIN", "NET_ADMIN"], "drops": []}
    found = checks.check_capabilities(db)
    assert any("drops must include ALL" in m for m in found)
    assert any("SYS_ADMIN" in m for m in found)


def test_other_published_ports_are_reported(gateway, db):
    db["ports"] = [{"internal": 5432, "external": 5432, "protocol": "tcp"}]
    assert checks.check_published_ports(db) and "5432" in checks.check_published_ports(db)[0]
    gateway["ports"][0]["external"] = 51821  # remapped: not the port clients are told
    assert checks.check_published_ports(gateway)
    assert checks.check_published_ports({"publishAllPorts": True})


@pytest.mark.parametrize("env", [
    "POSTGRES_PASSWORD=hunter2",
    "VAULT_TOKEN=hvs.CAESIJ0123456789abcdefghijkl",
    "BINANCE_API_KEY=x",
    "HMAC=0123456789abcdef0123456789abcdef0123456789abcdef",
])
def test_secret_looking_env_is_reported(db, env):
    db["envs"] = [*db["envs"], env]
    assert checks.check_no_secrets(db)


def test_private_key_upload_is_reported(db):
    db["uploads"] = [{"file": "/root/.ssh/id", "content": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n"}]
    assert checks.check_no_secrets(db)
    db["uploads"] = [{"file": "/x", "contentBase64": "c2VjcmV0"}]
    assert checks.check_no_secrets(db)


@pytest.mark.parametrize("host_path, target", [
    ("/var/run/docker.sock", "/var/run/docker.sock"),
    ("/sys/fs/cgroup", "/sys/fs/cgroup"),  # the whole host hierarchy
    ("/sys/fs/cgroup/rampart-lab/db01", "/mnt"),
    ("/etc", "/host-etc"),
    ("/", "/host"),
])
def test_dangerous_bind_mounts_are_reported(db, host_path, target):
    db["volumes"] = [*db["volumes"], {"hostPath": host_path, "containerPath": target}]
    assert checks.check_mounts(db), host_path


def test_devices_and_implicit_cgroupns_are_reported(db):
    db["devices"] = [{"hostPath": "/dev/mem"}]
    del db["cgroupnsMode"]
    found = checks.check_mounts(db)
    assert any("/dev/mem" in m for m in found) and any("cgroupnsMode" in m for m in found)


def test_missing_restart_and_healthcheck_are_reported(db):
    db["restart"] = "no"
    del db["healthcheck"]
    assert len(checks.check_operability(db)) == 2


def test_backend_network_that_is_not_internal_is_reported(lab_run):
    net = copy.deepcopy(lab_run.networks["data"].inputs)
    net["internal"] = False
    assert checks.check_network(net)  # label mode
    assert checks.check_network(net, ["internet"])  # topology mode
    # a label claiming "external" does not fool the topology mode
    net["labels"] = [{"label": "rampart.zone", "value": "data"},
                     {"label": "rampart.external", "value": "true"}]
    assert checks.check_network(net) == []
    assert checks.check_network(net, ["internet"])
    del net["ipamConfigs"]
    assert any("fixed subnet" in m for m in checks.check_network(net, ["data"]))


def test_container_on_a_foreign_zone_is_reported(lab_run):
    topo = lab_run.topology
    pairs = [(r.typ, copy.deepcopy(r.inputs)) for r in lab_run.resources]
    bot = next(p for t, p in pairs if t == checks.CONTAINER and p["hostname"] == "bot01")
    bot["networksAdvanced"].append({"name": "rampart-lab-secrets", "ipv4Address": "10.77.40.99"})
    found = checks.check_segmentation(pairs, topo)
    assert found == ["bot01: attached to zone 'secrets', which is not one of its zones"]
    assert checks.check_segmentation(pairs) == found  # the label mode sees it too


def test_wrong_address_missing_zone_and_unknown_network_are_reported(lab_run):
    topo = lab_run.topology
    pairs = [(r.typ, copy.deepcopy(r.inputs)) for r in lab_run.resources]
    db = next(p for t, p in pairs if t == checks.CONTAINER and p["hostname"] == "db01")
    db["networksAdvanced"][0]["ipv4Address"] = "10.77.30.77"
    db["networksAdvanced"].pop()
    db["networksAdvanced"].append({"name": "bridge"})
    found = "\n".join(checks.check_segmentation(pairs, topo))
    assert "the topology says" in found and "missing from its zone" in found and "'bridge'" in found


def test_policy_pack_binds_every_check(monkeypatch, lab_run):
    """Run policy/__main__.py with a stand-in PolicyPack, then drive each policy like the engine would."""
    import pulumi_policy

    captured = {}

    class FakePack:
        def __init__(self, name, policies, **kwargs):
            captured["name"], captured["policies"] = name, policies

    monkeypatch.setattr(pulumi_policy, "PolicyPack", FakePack)
    runpy.run_path(str(ROOT / "policy" / "__main__.py"), run_name="__main__")
    policies = {p.name: p for p in captured["policies"]}
    assert captured["name"] == "rampart"
    assert {*checks.CONTAINER_CHECKS, "rampart-internal-networks", "rampart-segmentation"} <= set(policies)

    config = {"topology": str(LAB_TOPOLOGY.relative_to(ROOT))}

    def resource_args(typ, props):
        return types.SimpleNamespace(resource_type=typ, props=props, get_config=lambda: config)

    def violations(policy, args):
        found = []
        policy.validate(args, lambda message, urn=None: found.append(message))
        return found

    for r in lab_run.resources:
        for p in policies.values():
            if isinstance(p, pulumi_policy.ResourceValidationPolicy):
                assert violations(p, resource_args(r.typ, r.inputs)) == [], (p.name, r.name)
    stack = types.SimpleNamespace(resources=[types.SimpleNamespace(resource_type=r.typ, props=r.inputs)
                                             for r in lab_run.resources], get_config=lambda: config)
    assert violations(policies["rampart-segmentation"], stack) == []

    bad = copy.deepcopy(lab_run.containers["db01"].inputs)
    bad["privileged"] = True
    # the WireGuard port, but on a host that is not the gateway
    bad["ports"] = [{"internal": 51820, "external": 51820, "protocol": "udp"}]
    assert violations(policies["rampart-no-privileged"], resource_args(checks.CONTAINER, bad))
    assert violations(policies["rampart-published-ports"], resource_args(checks.CONTAINER, bad))
