"""The admin path end to end: from the `admin` host outside the platform, SSH and the UIs are unreachable
without the VPN, reachable through it, and unreachable again once it is down. Everything else on the
management network stays closed even with the VPN up."""


import pytest
import segmentation_probe as sp
from support import lab

ADMIN = "admin"
PEER = "lab-probe"  # declared in inventory/lab/group_vars/all/vpn.yml for this test
IFACE = "rtprobe"


def _probe_from_admin(topo, endpoints):
    observed = sp.probe(topo, [(ADMIN, ep) for ep in endpoints])
    return {ep: observed[(ADMIN, ep)] for ep in endpoints}


def test_admin_reaches_ssh_and_uis_only_through_the_vpn(topo, listeners):
    if ADMIN not in topo.hosts:
        pytest.skip(f"the topology has no {ADMIN!r} host")
    if sp.wireguard_hub(topo) is None:
        pytest.fail(f"no WireGuard hub is up on {topo.gateway}: run playbooks/vpn.yml first")
    client = lab.ROOT / "output/wireguard" / topo.name / "clients" / f"{PEER}.conf"
    if not client.exists():
        pytest.fail(f"{client} is missing: declare peer {PEER!r} in wireguard_peers and run playbooks/vpn.yml")
    vpn = topo.vpn_zone.name
    via_vpn = sorted({r.endpoint for r in topo.rules() if r.path.source == vpn and r.endpoint.proto == "tcp"})
    mgmt = topo.management_zone
    closed = sorted(ep for ep in topo.endpoints()
                    if ep.zone == mgmt.name and ep.proto == "tcp" and ep not in via_vpn
                    and ep.host != topo.controller.name)
    assert via_vpn, "the topology lets the vpn zone reach nothing"
    every = via_vpn + closed

    before = _probe_from_admin(topo, every)
    lab.ssh(ADMIN, f"umask 077 && cat > /etc/wireguard/{IFACE}.conf", stdin=client.read_text())
    up = lab.ssh(ADMIN, f"wg-quick up {IFACE}")
    try:
        assert up.returncode == 0, f"wg-quick up failed on {ADMIN}: {up.stderr}"
        during = _probe_from_admin(topo, every)
        handshake = lab.ssh(ADMIN, f"wg show {IFACE} latest-handshakes").stdout.split()
    finally:
        lab.ssh(ADMIN, f"wg-quick down {IFACE}; rm -f /etc/wireguard/{IFACE}.conf")
    after = _probe_from_admin(topo, every)

    def name(ep):
        return f"{ep.host}:{ep.service} ({ep.address}:{ep.port})"

    rows = [f"{name(ep):44} {'declared for vpn' if ep in via_vpn else 'closed to vpn':17} "
            f"before={before[ep]!s:5} vpn-up={during[ep]!s:5} after={after[ep]!s:5}" for ep in every]
    print("\nadmin path (" + ADMIN + " -> platform):\n  " + "\n  ".join(rows))
    print(f"handshake with the hub: {handshake}")
    assert len(handshake) == 2 and int(handshake[1]) > 0, "no WireGuard handshake with the hub"
    problems = [name(ep) + " reachable without the VPN" for ep in every if before[ep]]
    problems += [name(ep) + " unreachable through the VPN" for ep in via_vpn if not during[ep]]
    problems += [name(ep) + " reachable through the VPN although no flow allows it" for ep in closed if during[ep]]
    problems += [name(ep) + " still reachable after the VPN went down" for ep in every if after[ep]]
    assert not problems, "\n".join(problems)
