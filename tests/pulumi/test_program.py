"""The resource graph built under Pulumi's mocks matches the topology, and keeps its segmentation."""

from __future__ import annotations

import ipaddress

from rampart.pulumi import plan as planning
from rampart.pulumi import policy_checks as checks

CONTAINER = checks.CONTAINER
NETWORK = checks.NETWORK


def _zone_networks(topo):
    return {z.name for z in topo.zones.values() if not z.vpn}


def test_one_network_per_zone_except_vpn(lab_run):
    topo = lab_run.topology
    assert set(lab_run.networks) == _zone_networks(topo)
    for zone, net in lab_run.networks.items():
        assert net.inputs["name"] == f"rampart-lab-{zone}"
        (ipam,) = net.inputs["ipamConfigs"]
        assert ipam["subnet"] == str(topo.zones[zone].cidr)
        assert ipaddress.IPv4Address(ipam["gateway"]) in topo.zones[zone].cidr


def test_one_container_per_managed_host_and_none_for_the_controller(lab_run):
    topo = lab_run.topology
    assert set(lab_run.containers) == {h.name for h in topo.managed_hosts()}
    assert topo.controller.name not in lab_run.containers


def test_graph_reads_like_the_topology(lab_run):
    """Networks sit in one Zone component each, containers and volumes in one Host component each."""
    topo = lab_run.topology
    zones = {r.name for r in lab_run.of_type("rampart:docker:Zone")}
    hosts = {r.name for r in lab_run.of_type("rampart:docker:Host")}
    assert zones == _zone_networks(topo)
    assert hosts == {h.name for h in topo.managed_hosts()}
    for r in lab_run.resources:
        if r.typ == NETWORK:
            assert r.parent_type == "rampart:docker:Zone"
        if r.typ in (CONTAINER, "docker:index/volume:Volume"):
            assert r.parent_type == "rampart:docker:Host"


def test_every_container_has_exactly_its_topology_addresses(lab_run):
    topo = lab_run.topology
    for name, c in lab_run.containers.items():
        got = {n["name"].removeprefix("rampart-lab-"): n["ipv4Address"] for n in c.inputs["networksAdvanced"]}
        want = {z: str(a) for z, a in topo.hosts[name].addresses.items() if not topo.zones[z].vpn}
        assert got == want, name


def test_hosts_are_on_home_zone_and_management_only(lab_run):
    topo = lab_run.topology
    mgmt = topo.management_zone.name
    for name, c in lab_run.containers.items():
        h = topo.hosts[name]
        zones = {n["name"].removeprefix("rampart-lab-") for n in c.inputs["networksAdvanced"]}
        if name == topo.gateway:
            assert zones == _zone_networks(topo)  # the gateway has a leg everywhere (but vpn is inside it)
        elif topo.zones[h.zone].external:
            assert zones == {h.zone, *h.also}
        else:
            assert zones == {h.zone, mgmt, *h.also}


def test_only_external_zones_are_non_internal(lab_run):
    topo = lab_run.topology
    for zone, net in lab_run.networks.items():
        assert net.inputs["internal"] is (not topo.zones[zone].external), zone
    # egress zones still go through the gateway's NAT, so they stay internal too
    assert all(lab_run.networks[z.name].inputs["internal"] for z in topo.zones.values() if z.egress)


def test_ipam_gateway_never_collides_with_a_host(lab_run):
    topo = lab_run.topology
    for zone, net in lab_run.networks.items():
        gw = ipaddress.IPv4Address(net.inputs["ipamConfigs"][0]["gateway"])
        owners = [h.name for h in topo.hosts.values() if h.addresses.get(zone) == gw]
        # only the controller may own it: the Docker host plays the controller on that bridge
        assert all(topo.hosts[o].is_controller for o in owners), (zone, owners)
        # where the Docker host takes no address, the bridge is told so
        inhibited = net.inputs.get("options", {}).get("com.docker.network.bridge.inhibit_ipv4") == "true"
        assert inhibited == (not owners and not topo.zones[zone].external)


def test_only_the_wireguard_port_is_published_on_the_gateway(lab_run):
    topo = lab_run.topology
    wg = topo.services["wireguard"]
    for name, c in lab_run.containers.items():
        ports = c.inputs.get("ports") or []
        if name == topo.gateway:
            assert [(int(p["internal"]), int(p["external"]), p["protocol"]) for p in ports] == \
                [(wg.port, wg.port, wg.proto)]
        else:
            assert ports == [], name
        assert not c.inputs.get("publishAllPorts")


def test_nothing_privileged_and_capabilities_minimal(lab_run):
    topo = lab_run.topology
    for name, c in lab_run.containers.items():
        assert c.inputs["privileged"] is False
        caps = c.inputs["capabilities"]
        assert caps["drops"] == ["ALL"]
        assert set(caps["adds"]) <= set(planning.ALLOWED_CAPABILITIES)
        assert "SYS_ADMIN" not in caps["adds"]
        expect_net_admin = name == topo.gateway or topo.zones[topo.hosts[name].zone].internal \
            or "operator" in topo.hosts[name].roles
        assert ("NET_ADMIN" in caps["adds"]) == expect_net_admin, name
        vault_host = name in topo.services["vault"].hosts if "vault" in topo.services else False
        assert ("IPC_LOCK" in caps["adds"]) == vault_host, name


def test_policy_allowlist_matches_the_program():
    assert frozenset(planning.ALLOWED_CAPABILITIES) == checks.ALLOWED_CAPABILITIES


def test_no_secrets_in_env_labels_or_uploads(lab_run):
    for name, c in lab_run.containers.items():
        assert c.inputs["envs"] == ["container=docker"], name
        assert checks.check_no_secrets(c.inputs) == [], name
        (upload,) = c.inputs["uploads"]
        assert upload["file"] == "/etc/ssh/authorized_keys/ansible"
        assert "PRIVATE" not in upload["content"]


def test_systemd_container_settings(lab_run):
    for name, c in lab_run.containers.items():
        i = c.inputs
        assert set(i["tmpfs"]) >= {"/run", "/tmp"}, name  # noqa: S108 - container mount points
        assert i["cgroupnsMode"] == "host"  # the default systemdCgroup=delegate
        cgroup = [v for v in i["volumes"] if v.get("containerPath") == "/sys/fs/cgroup"]
        assert [v["hostPath"] for v in cgroup] == [f"/sys/fs/cgroup/rampart-lab/{name}"]
        assert i["restart"] == "unless-stopped"
        assert i["healthcheck"]["tests"][:2] == ["CMD", "systemctl"]
        assert i["stopSignal"] == "SIGRTMIN+3"
        assert i["hostname"] == name


def test_data_directories_are_named_volumes(lab_run):
    topo = lab_run.topology
    volumes = {v.inputs["name"]: v for v in lab_run.of_type("docker:index/volume:Volume")}
    for name, c in lab_run.containers.items():
        want = sorted({d for r in topo.hosts[name].roles for d in planning.ROLE_DATA_DIRS.get(r, ())})
        named = {v["containerPath"]: v["volumeName"] for v in c.inputs["volumes"] if v.get("volumeName")}
        assert sorted(named) == want, name
        assert all(v in volumes for v in named.values())


def test_every_policy_check_passes_on_the_program(lab_run):
    topo = lab_run.topology
    external = [z.name for z in topo.zones.values() if z.external]
    for name, c in lab_run.containers.items():
        for policy, check in checks.CONTAINER_CHECKS.items():
            assert check(c.inputs) == [], (name, policy)
    for zone, net in lab_run.networks.items():
        assert checks.check_network(net.inputs, external) == [], zone
    pairs = [(r.typ, r.inputs) for r in lab_run.resources]
    assert checks.check_segmentation(pairs, topo) == []
    assert checks.check_segmentation(pairs) == []  # label-only mode agrees


def test_runtime_mode_uses_a_private_cgroup_namespace(tmp_path):
    from pulumi_harness import config_for, run_program

    run = run_program(config_for(tmp_path, systemdCgroup="runtime", containerRuntime="sysbox-runc",
                                 image={"name": "rampart/host:test", "build": False}), stack="alt")
    for name, c in run.containers.items():
        assert c.inputs["cgroupnsMode"] == "private", name
        assert c.inputs["runtime"] == "sysbox-runc"
        assert not any(v.get("hostPath") for v in c.inputs["volumes"]), name
        assert c.inputs["name"] == f"rampart-alt-{name}"
    assert run.of_type("docker:index/remoteImage:RemoteImage")
    assert not run.of_type("docker:index/image:Image")
