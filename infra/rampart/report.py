"""Plain-text views of a topology (and of a running lab) for operators."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rampart.topology import Topology

if TYPE_CHECKING:
    from rampart.lab import Lab


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def address_plan(t: Topology) -> str:
    rows = []
    for h in sorted(t.hosts.values(), key=lambda h: (h.zone, h.name)):
        legs = ", ".join(f"{z}={a}" for z, a in h.addresses.items())
        rows.append([h.name, h.zone, ",".join(h.roles), legs])
    zones = [[z.name, str(z.cidr), _zone_kind(z)] for z in t.zones.values()]
    return table(zones, ["zone", "cidr", "kind"]) + "\n\n" + table(rows, ["host", "zone", "roles", "addresses"])


def _zone_kind(z) -> str:
    kinds = [k for k in ("external", "management", "vpn") if getattr(z, k)] or ["internal"]
    return "+".join(kinds + (["egress"] if z.egress else []))


def rules_table(t: Topology) -> str:
    rows = [[r.path.source, f"{r.endpoint.host}:{r.endpoint.service}",
             f"{r.endpoint.address}:{r.endpoint.port}/{r.endpoint.proto}", str(r.path.src_address),
             f"{r.path.in_zone}->{r.path.out_zone}" + (" nat" if r.path.nat else "") if r.path.via_gateway
             else "direct", r.why] for r in t.rules()]
    return table(rows, ["from", "to", "endpoint", "seen as", "via gateway", "why"])


def matrix_table(t: Topology, observed: dict | None = None) -> str:
    """Sources down, endpoints across. '+' allowed, '.' denied; with observations, '!' marks a deviation."""
    endpoints = t.endpoints()
    sources = sorted(t.hosts)
    cells = t.matrix()
    header = ["source \\ host:service"] + [f"{e.host}:{e.service}" for e in endpoints]
    rows = []
    for s in sources:
        row = [s]
        for e in endpoints:
            if (s, e) not in cells:
                row.append(" ")
                continue
            want = cells[(s, e)]
            mark = "+" if want else "."
            if observed is not None and (s, e) in observed and observed[(s, e)] != want:
                mark = "!"
            row.append(mark)
        rows.append(row)
    # Transpose: endpoint names are long, hosts are few.
    trans = [[header[i + 1]] + [r[i + 1] for r in rows] for i in range(len(endpoints))]
    return table(trans, ["endpoint \\ from"] + sources)


def lab_summary(t: Topology, lab: Lab) -> str:
    svc_by_host: dict[str, list[str]] = {}
    for e in t.endpoints():
        svc_by_host.setdefault(e.host, []).append(f"{e.service}:{e.port}")
    rows = []
    for host, addr, alive in lab.status():
        h = t.hosts[host]
        rows.append([host, h.zone, addr, str(h.addresses[h.zone]), "up" if alive else "DOWN",
                     ",".join(h.roles), " ".join(svc_by_host.get(host, []))])
    ssh_cfg = lab.out / "ssh_config"
    return "\n".join([
        f"rampart lab '{t.name}' ({t.source})", "",
        table(rows, ["host", "zone", "mgmt/access", "zone address", "state", "roles", "declared services"]), "",
        "reach a host:      ssh -F " + str(ssh_cfg) + " bot01",
        "run a playbook:    .venv/bin/ansible-playbook -i inventory/lab playbooks/site.yml",
        "explain the flows: .venv/bin/rampart topology rules",
        "tear it down:      make lab-down",
    ])
