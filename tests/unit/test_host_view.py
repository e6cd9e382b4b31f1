"""One per-host view, every consumer: the inventory plugin's hostvars, the Pulumi inventory and the lab's
plan agree host by host, for the lab and prod topologies and for generated ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from hypothesis import HealthCheck, given, settings
from rampart import inventory
from rampart.lab import Lab
from rampart.topology import Topology, load, parse
from support.plugins import load_plugin
from test_topology import parse_or_reject, topologies

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = [ROOT / "inventory" / env / "topology.yml" for env in ("lab", "prod")]


def _plugin():
    return load_plugin("plugins/inventory/rampart_topology.py", "rampart_topology_plugin").InventoryModule


def plugin_inventory(path: Path) -> tuple[dict, dict]:
    """Run the real inventory plugin; return (hostvars by host, members by group)."""
    data = InventoryData()
    plugin = _plugin()()
    plugin.parse(data, DataLoader(), str(path), cache=False)
    hostvars = {name: dict(h.vars) for name, h in data.hosts.items()}
    groups = {name: sorted(h.name for h in g.hosts) for name, g in data.groups.items()
              if name not in ("all", "ungrouped")}
    return hostvars, groups


def pulumi_inventory(topo: Topology, tmp_path: Path) -> dict | None:
    """The Pulumi plan's outputs turned into an inventory (None if the Docker backend refuses the topology)."""
    plan_mod = pytest.importorskip("rampart.pulumi.plan")
    from rampart.pulumi.inventory import build_inventory
    from rampart.pulumi.settings import Settings
    settings = Settings(topology=Path(topo.source), docker_host="unix:///var/run/docker.sock",
                        ssh_public_key="ssh-ed25519 AAAA test", ssh_user="ops")
    try:
        plan = plan_mod.build(topo, settings, "t")
    except plan_mod.PlanError:
        return None
    return build_inventory(plan.outputs(), jump=False)["all"]


def lab_plan(topo: Topology, host: str) -> dict:
    lab = Lab(topo, Path("/nonexistent"))
    p = lab.plan(host)
    return {"addresses": {leg.zone: str(leg.address) for leg in p.legs}, "memlock": p.memlock,
            "gateway": p.default_gateway, "routes": p.routes}


def check_agreement(topo: Topology, hostvars: dict, groups: dict, pulumi_inv: dict | None) -> None:
    expected = inventory.from_topology(topo)
    managed = {h.name for h in topo.managed_hosts()}
    assert set(hostvars) == managed
    for name in sorted(managed):
        view = topo.host_view(name).as_vars()
        assert hostvars[name]["rampart_host"] == view, name
        assert hostvars[name]["ansible_host"] == view["access_address"]
        lab = lab_plan(topo, name)
        wired = {z: a for z, a in view["addresses"].items() if not topo.zones[z].vpn}
        assert lab["addresses"] == wired, name
        assert lab["memlock"] == view["needs"]["memlock"], name
        assert lab["gateway"] == view["default_gateway"], name
        assert lab["routes"] == [(r["to"], r["via"]) for r in view["routes"]], name
        if pulumi_inv is not None:
            pv = pulumi_inv["hosts"][name]
            assert pv["rampart_host"] == view, name
            assert pv["ansible_host"] == view["access_address"]
    assert {g: m for g, m in groups.items() if m} == {g: m for g, m in expected["groups"].items() if m}
    if pulumi_inv is not None:
        pgroups = {g: sorted((c or {}).get("hosts", {})) for g, c in pulumi_inv["children"].items()}
        assert {g: m for g, m in pgroups.items() if m} == {g: m for g, m in expected["groups"].items() if m}
        for key, value in inventory.topology_vars(topo).items():
            assert pulumi_inv["vars"][key] == value, key


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.parent.name)
def test_every_consumer_sees_the_same_host(path, tmp_path):
    topo = load(path)
    hostvars, groups = plugin_inventory(path)
    check_agreement(topo, hostvars, groups, pulumi_inventory(topo, tmp_path))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(spec=topologies())
def test_generated_topologies_agree_too(spec, tmp_path_factory):
    topo = parse_or_reject(spec)
    if topo is None:
        return
    import yaml
    path = tmp_path_factory.mktemp("gen") / "topology.yml"
    path.write_text(yaml.safe_dump({"plugin": "rampart_topology", **spec}))
    topo = parse(spec, str(path))
    hostvars, groups = plugin_inventory(path)
    check_agreement(topo, hostvars, groups, pulumi_inventory(topo, path.parent))


def test_view_answers_what_roles_ask():
    topo = load(TOPOLOGIES[0])
    db = topo.host_view("db01")
    assert db.listens["postgres"].address == db.addresses[db.zone]
    assert db.listens["postgres_exporter"].address == db.management_address
    assert [src for src, _ in db.clients["postgres"]] == ["bot01"]
    assert db.apt_proxy_url == f"http://{topo.controller.addresses[topo.management_zone.name]}:" \
        f"{topo.services['apt_proxy'].port}"
    vault = topo.host_view("vault01")
    assert vault.memlock and not db.memlock
    gw = topo.host_view(topo.gateway)
    assert gw.gateway and gw.tun and not db.gateway
    outside = topo.host_view("exchange")
    assert outside.external and not outside.platform and outside.management_address is None
    assert outside.apt_proxy_url is None  # no flow from the simulated internet to the platform's proxy


def test_lab_inventory_reads_the_lab_file_contract():
    """group_vars cannot import Python: this pins them to the contract the lab writes."""
    import yaml
    from rampart.lab import files
    conn = yaml.safe_load((ROOT / "inventory/lab/group_vars/all/connection.yml").read_text())
    assert conn["ansible_user"] == files.OPS_USER
    assert conn["ansible_ssh_common_args"].endswith(f"/../../{files.SSH_CONFIG}")
