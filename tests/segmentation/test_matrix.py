"""The zone-to-zone segmentation matrix: every (source host, endpoint) cell of the topology, probed from
inside the source. Declared flows must connect; everything else must be blocked."""

import segmentation_probe as sp
from rampart.report import matrix_table
from support import lab


def _throwaway_peers(topo, hub, sources):
    """One throwaway WireGuard peer per source, known to the hub only for the duration of the probe."""
    iface, hub_pub = hub
    peers = {}
    for src in sources:
        key, pub = sp.new_key()
        peers[src] = (key, pub)
        lab.ssh(topo.gateway, f"wg set {iface} peer {pub}")  # no allowed-ips: handshakes only
    return peers


def test_segmentation_matrix(topo, listeners):
    cells = topo.matrix()
    tcp = [c for c in cells if c[1].proto == "tcp"]
    udp = [c for c in cells if c[1].proto == "udp"]
    no_route = sp.unroutable(topo, cells)
    tcp = [c for c in tcp if c not in no_route]
    udp = [c for c in udp if c not in no_route]
    observed = {c: False for c in no_route}
    observed.update(sp.probe(topo, tcp))
    ntp = [c for c in udp if c[1].service == sp.NTP_SERVICE]
    observed.update(sp.probe(topo, ntp, {c: sp.ntp_request() for c in ntp}))
    udp = [c for c in udp if c not in ntp]
    hub = sp.wireguard_hub(topo)
    not_probed = []
    if hub is None:
        not_probed = udp
    else:
        peers = _throwaway_peers(topo, hub, sorted({s for s, _ in udp}))
        try:
            payloads = {(s, ep): sp.wg_initiation(peers[s][0], hub[1]) for s, ep in udp}
            observed.update(sp.probe(topo, udp, payloads))
        finally:
            for _, pub in peers.values():
                lab.ssh(topo.gateway, f"wg set {hub[0]} peer {pub} remove")
    print()
    print(matrix_table(topo, observed))
    print(f"\n{len(cells)} cells: {len(observed) - len(no_route)} probed ({len(tcp)} tcp connect, "
          f"{len(ntp)} udp NTP request, {len(observed) - len(tcp) - len(ntp) - len(no_route)} udp WireGuard "
          "handshake), "
          f"{sum(cells.values())} allowed by the topology")
    print(f"{len(no_route)} controller cells into zones it has no leg in: blocked by construction (no route), "
          "not probed so that no packet leaves the lab")
    if not_probed:
        print(f"NOT PROBED ({len(not_probed)} udp cells): no WireGuard hub is up on {topo.gateway}, so a real "
              "handshake is impossible — " + ", ".join(f"{s}->{e.host}:{e.service}" for s, e in not_probed))
    deviations = sorted(
        f"{src} -> {ep.host}:{ep.service} ({ep.address}:{ep.port}/{ep.proto}): "
        f"{'declared but BLOCKED' if cells[(src, ep)] else 'undeclared but REACHABLE'}"
        for (src, ep), reached in observed.items() if reached != cells[(src, ep)])
    print(f"deviations: {len(deviations)}" + "".join(f"\n  ! {d}" for d in deviations))
    assert not deviations, f"{len(deviations)} deviation(s) from the topology:\n" + "\n".join(deviations)
