"""A fallen host on the management LAN cannot pass for the controller or a VPN peer.

The attack of the security review, repeated: root on the host most exposed to the internet (a host of an
egress zone; bot01 in the lab) flushes its own ruleset, claims the controller's management address and
announces it by gratuitous ARP, then opens TCP connections to every SSH and UI on the management plane with
that source; then the same with an address of the VPN range. Port isolation on the management bridge, static
neighbours and interface-scoped rules must leave every one of those connections unopened. The host gets its
ruleset back and the test checks the ruleset is byte-identical to the one before."""

from __future__ import annotations

import json

import pytest
from support import lab

ATTACK = r"""
import json, socket, struct, fcntl, subprocess, time
from concurrent.futures import ThreadPoolExecutor

def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True)

def mac_of(iface):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    info = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", iface.encode()[:15]))
    return info[18:24]

def gratuitous_arp(iface, ip):
    mac = mac_of(iface)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    ipb = socket.inet_aton(ip)
    for op in (1, 2):  # announce as request and as reply
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, ipb, b"\xff" * 6 if op == 2 else b"\0" * 6, ipb)
        s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
    s.close()

def connect(t):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.bind((t["src"], 0))
        s.connect((t["addr"], t["port"]))
        return t["id"], True
    except OSError:
        return t["id"], False
    finally:
        s.close()

# Everything happens inside this one process: while the host holds the controller's address, the
# controller's own SSH session to it cannot work, so results are printed only after the cleanup.
out = {"control": None, "opened": {}, "errors": []}
try:
    r = sh("nft flush ruleset")
    out["errors"] += [r.stderr] if r.returncode else []
    if CONTROL:  # with its own address and no firewall, the host does reach what it may
        c = socket.socket()
        c.settimeout(3)
        try:
            c.connect(tuple(CONTROL))
            out["control"] = True
        except OSError:
            out["control"] = False
        finally:
            c.close()
    for src in SOURCES:
        r = sh(f"ip addr add {src}/32 dev {IFACE}")
        out["errors"] += [r.stderr] if r.returncode else []
    for src in SOURCES:
        for _ in range(3):
            gratuitous_arp(IFACE, src)
            time.sleep(0.2)
    with ThreadPoolExecutor(max_workers=32) as pool:
        out["opened"] = dict(pool.map(connect, TARGETS))
finally:
    for src in SOURCES:
        sh(f"ip addr del {src}/32 dev {IFACE}")
    r = sh("nft -f /etc/nftables.conf")
    out["errors"] += [r.stderr] if r.returncode else []
print(json.dumps(out))
"""


def _attacker(topo) -> str:
    egress = [h for h in lab.hosts() if topo.zones[topo.hosts[h].zone].egress and topo.host_view(h).platform]
    return sorted(egress)[0] if egress else pytest.skip("no platform host in an egress zone")


def test_spoofing_the_controller_or_a_vpn_peer_opens_nothing(topo):
    attacker = _attacker(topo)
    view = topo.host_view(attacker)
    mgmt = topo.management_zone
    ctl = str(topo.controller.addresses[mgmt.name])
    vpn = topo.vpn_zone
    sources = [ctl] + ([str(next(iter(vpn.cidr.hosts())) + 49)] if vpn else [])
    targets = []
    for ep in topo.endpoints():
        if ep.zone == mgmt.name and ep.proto == "tcp" and ep.host != attacker \
                and not topo.hosts[ep.host].is_controller:
            for src in sources:
                targets.append({"id": f"{src}->{ep.host}:{ep.service}", "src": src, "addr": str(ep.address),
                                "port": ep.port})
    assert targets, "no management-plane endpoint to attack"
    proxy = view.connects.get("apt_proxy")
    control = [str(proxy[0].address), proxy[0].port] if proxy else None
    before = lab.ssh(attacker, "nft -s list ruleset | sha256sum").stdout
    script = (f"SOURCES = {json.dumps(sources)}\nIFACE = {json.dumps(mgmt.name)}\nCONTROL = {json.dumps(control)}\n"
              f"TARGETS = {json.dumps(targets)}\n{ATTACK}")
    proc = lab.ssh(attacker, "python3 -", stdin=script, timeout=180)
    assert proc.returncode == 0, proc.stderr[-500:]
    result = json.loads(proc.stdout)
    assert not result["errors"], f"{attacker}: attack setup or cleanup failed: {result['errors']}"
    if control:
        assert result["control"], f"{attacker} cannot reach its apt proxy: the probe would prove nothing"
    opened = sorted(k for k, v in result["opened"].items() if v)
    after = lab.ssh(attacker, "nft -s list ruleset | sha256sum").stdout
    print(f"\nspoofing from {attacker}: {len(targets)} connections tried as {', '.join(sources)}; "
          f"{len(opened)} opened; ruleset restored: {before == after}")
    assert before == after, f"{attacker}: the ruleset was not restored"
    assert not opened, "spoofed sources opened:\n" + "\n".join(opened)
