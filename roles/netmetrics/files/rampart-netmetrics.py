#!/usr/bin/python3
"""Network-level metrics for node_exporter's textfile collector (run by rampart-netmetrics.timer).

Writes, atomically, <textfile dir>/rampart_netmetrics.prom with:
  rampart_nftables_dropped_packets_total / _bytes_total{family,table,chain}   counted drop/reject rules
  rampart_wireguard_peer_latest_handshake_timestamp_seconds{interface,peer}   0 = never
  rampart_wireguard_peer_receive_bytes_total / _transmit_bytes_total{interface,peer}
  rampart_conntrack_entries, rampart_conntrack_entries_limit
  rampart_netmetrics_collector_success{collector}, rampart_netmetrics_last_run_timestamp_seconds

WireGuard figures come from `wg show all latest-handshakes` and `wg show all transfer`, not from
`wg show all dump`, which would put the interface's private key on this process's stdout.
Standard library only: hosts have python3 but no extra packages.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUTPUT_NAME = "rampart_netmetrics.prom"
CONNTRACK = Path("/proc/sys/net/netfilter")


class CollectError(Exception):
    pass


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CollectError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise CollectError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()[:200]}")
    return done.stdout


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def parse_nft(text: str) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Sum the counters of drop/reject rules per (family, table, chain) from `nft -j list ruleset`."""
    try:
        doc = json.loads(text)
        items = doc["nftables"]
    except (ValueError, KeyError, TypeError):
        raise CollectError("nft -j list ruleset: not the expected JSON") from None
    drops: dict[tuple[str, str, str], tuple[int, int]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        if "chain" in item:  # every chain appears, even without a counted drop: a steady 0 is information
            c = item["chain"]
            drops.setdefault((c["family"], c["table"], c["name"]), (0, 0))
            continue
        rule = item.get("rule")
        if not rule:
            continue
        exprs = rule.get("expr", [])
        if not any(isinstance(e, dict) and ("drop" in e or "reject" in e) for e in exprs):
            continue
        counters = [e["counter"] for e in exprs if isinstance(e, dict) and isinstance(e.get("counter"), dict)]
        counter = counters[0] if counters else None
        if counter is None:
            continue
        key = (rule["family"], rule["table"], rule["chain"])
        packets, nbytes = drops.get(key, (0, 0))
        drops[key] = (packets + int(counter.get("packets", 0)), nbytes + int(counter.get("bytes", 0)))
    return drops


def parse_wg(handshakes: str, transfer: str, names: dict[str, str]) -> list[dict]:
    """Peers from `wg show all latest-handshakes` (iface, key, ts) and `wg show all transfer` (iface, key, rx, tx)."""
    peers: dict[tuple[str, str], dict] = {}
    for line in handshakes.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            raise CollectError(f"wg show all latest-handshakes: unexpected line {line!r}")
        peers[(parts[0], parts[1])] = {"interface": parts[0], "key": parts[1], "handshake": int(parts[2]),
                                       "rx": 0, "tx": 0}
    for line in transfer.splitlines():
        parts = line.split("\t")
        if len(parts) != 4:
            raise CollectError(f"wg show all transfer: unexpected line {line!r}")
        p = peers.setdefault((parts[0], parts[1]), {"interface": parts[0], "key": parts[1], "handshake": 0})
        p["rx"], p["tx"] = int(parts[2]), int(parts[3])
    for p in peers.values():
        p["peer"] = names.get(p["key"], p["key"])
    return sorted(peers.values(), key=lambda p: (p["interface"], p["peer"]))


def read_names(path: Path | None) -> dict[str, str]:
    """Optional `<public key> <name>` lines, so alerts say alice instead of a key."""
    names: dict[str, str] = {}
    if path and path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                names[parts[0]] = parts[1]
    return names


def render(nft: dict | None, wg: list[dict] | None, conntrack: tuple[int, int] | None,
           ok: dict[str, bool], now: float) -> str:
    out: list[str] = []

    def family(name: str, kind: str, doc: str, samples: list[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {doc}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{_labels(lbl)} {value:.17g}" for lbl, value in samples)

    if nft is not None:
        keys = sorted(nft)
        lbl = [{"family": f, "table": t, "chain": c} for f, t, c in keys]
        family("rampart_nftables_dropped_packets_total", "counter", "Packets dropped by counted drop/reject rules",
               [(label, nft[k][0]) for label, k in zip(lbl, keys, strict=True)])
        family("rampart_nftables_dropped_bytes_total", "counter", "Bytes dropped by counted drop/reject rules",
               [(label, nft[k][1]) for label, k in zip(lbl, keys, strict=True)])
    if wg is not None:
        lbl = [{"interface": p["interface"], "peer": p["peer"]} for p in wg]
        family("rampart_wireguard_peer_latest_handshake_timestamp_seconds", "gauge",
               "Unix time of the peer's latest handshake (0 = never)",
               [(label, p["handshake"]) for label, p in zip(lbl, wg, strict=True)])
        family("rampart_wireguard_peer_receive_bytes_total", "counter", "Bytes received from the peer",
               [(label, p["rx"]) for label, p in zip(lbl, wg, strict=True)])
        family("rampart_wireguard_peer_transmit_bytes_total", "counter", "Bytes sent to the peer",
               [(label, p["tx"]) for label, p in zip(lbl, wg, strict=True)])
    if conntrack is not None:
        family("rampart_conntrack_entries", "gauge", "Connections in the conntrack table", [({}, conntrack[0])])
        family("rampart_conntrack_entries_limit", "gauge", "Size of the conntrack table", [({}, conntrack[1])])
    family("rampart_netmetrics_collector_success", "gauge", "1 when the collector's last run succeeded",
           [({"collector": k}, 1 if v else 0) for k, v in sorted(ok.items())])
    family("rampart_netmetrics_last_run_timestamp_seconds", "gauge", "Unix time of the last run", [({}, now)])
    return "\n".join(out) + "\n"


def collect(with_wireguard: bool, names: dict[str, str]) -> str:
    ok: dict[str, bool] = {}
    errors: list[str] = []
    nft = wg = conntrack = None
    try:
        nft = parse_nft(_run(["nft", "-j", "list", "ruleset"]))
        ok["nftables"] = True
    except CollectError as exc:
        ok["nftables"] = False
        errors.append(str(exc))
    if with_wireguard:
        try:
            wg = parse_wg(_run(["wg", "show", "all", "latest-handshakes"]), _run(["wg", "show", "all", "transfer"]),
                          names)
            ok["wireguard"] = True
        except (CollectError, ValueError) as exc:
            ok["wireguard"] = False
            errors.append(str(exc))
    if (CONNTRACK / "nf_conntrack_count").exists():
        try:
            conntrack = (int((CONNTRACK / "nf_conntrack_count").read_text()),
                         int((CONNTRACK / "nf_conntrack_max").read_text()))
            ok["conntrack"] = True
        except (OSError, ValueError) as exc:
            ok["conntrack"] = False
            errors.append(f"conntrack: {exc}")
    for e in errors:
        print(f"rampart-netmetrics: {e}", file=sys.stderr)
    return render(nft, wg, conntrack, ok, time.time())


def write_atomically(directory: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".rampart_netmetrics.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / OUTPUT_NAME)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write nftables/WireGuard/conntrack metrics for node_exporter.")
    p.add_argument("--textfile-dir", type=Path, required=True)
    p.add_argument("--wireguard", action="store_true", help="also collect WireGuard peers (hosts running wg)")
    p.add_argument("--peer-names", type=Path, help="file of '<public key> <name>' lines")
    args = p.parse_args(argv)
    if not args.textfile_dir.is_dir():
        print(f"rampart-netmetrics: --textfile-dir {args.textfile_dir} is not a directory", file=sys.stderr)
        return 2
    write_atomically(args.textfile_dir, collect(args.wireguard, read_names(args.peer_names)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
