"""Proxy-like listeners cannot bridge zones: from every lab host, every listener that speaks HTTP-proxy on the
controller (the platform's apt proxy, the simulated internet's upstream mirror) is asked to tunnel
(CONNECT) or fetch (absolute-URI GET) every platform service. None may answer with the service.

Each source first proves the proxy it reaches really is a working proxy (a package index comes back), so a
refusal means the proxy refused, not that nothing answered."""

from __future__ import annotations

import json

from rampart.lab import PROXY_NAMES
from rampart.lab.files import RUN_DIR
from support import lab

PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor

def ask(p):
    try:
        s = socket.create_connection((p["proxy"], p["port"]), timeout=2)
    except OSError:
        return p["id"], "no-proxy"
    try:
        s.settimeout(3)
        s.sendall(p["request"].encode())
        data = b""
        while len(data) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
            if p["kind"] == "connect" and b"\r\n\r\n" in data:
                try:  # a tunnel is up: does the service speak first (SSH) or answer a probe?
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    data += s.recv(4096)
                except OSError:
                    pass
                break
        return p["id"], data[:300].decode("latin-1")
    except OSError as exc:
        return p["id"], "error: " + str(exc)
    finally:
        s.close()

with ThreadPoolExecutor(max_workers=32) as pool:
    print(json.dumps(dict(pool.map(ask, PROBES))))
"""


def _listeners(topo) -> list[tuple[str, str, int]]:
    """(name, address, port) of every proxy the lab runs, from its own config."""
    out = []
    for name in PROXY_NAMES:
        conf = RUN_DIR / name / "acng.conf"
        if not conf.exists():
            continue
        kv = dict(line.split(": ", 1) for line in conf.read_text().splitlines() if ": " in line)
        out += [(name, addr, int(kv["Port"])) for addr in kv["BindAddress"].split()]
    return out


def _opened(answer: str) -> bool:
    head = answer.split("\r\n", 1)[0]
    return "SSH-" in answer or (head.startswith("HTTP/") and " 200 " in head + " ")


def test_no_proxy_bridges_zones(topo):
    listeners = _listeners(topo)
    assert listeners, "the lab runs no package proxy: nothing to probe"
    targets = [ep for ep in topo.endpoints() if ep.proto == "tcp" and topo.is_platform(ep.host)]
    opened, proxies_seen = [], 0
    for src in lab.hosts():
        probes = []
        for name, addr, port in listeners:
            probes.append({"id": f"{name}@{addr}|sanity", "proxy": addr, "port": port, "kind": "get",
                           "request": "GET http://deb.debian.org/debian/dists/bookworm/Release HTTP/1.1\r\n"
                                      "Host: deb.debian.org\r\nConnection: close\r\n\r\n"})
            for ep in targets:
                hostport = f"{ep.address}:{ep.port}"
                probes.append({"id": f"{name}@{addr}|connect|{ep.host}:{ep.service}", "proxy": addr,
                               "port": port, "kind": "connect",
                               "request": f"CONNECT {hostport} HTTP/1.1\r\nHost: {hostport}\r\n\r\n"})
                probes.append({"id": f"{name}@{addr}|get|{ep.host}:{ep.service}", "proxy": addr, "port": port,
                               "kind": "get", "request": f"GET http://{hostport}/ HTTP/1.1\r\nHost: {hostport}\r\n"
                                                         "Connection: close\r\n\r\n"})
        script = f"TIMEOUT = 2\nPROBES = {json.dumps(probes)}\n{PROBE}"
        proc = lab.ssh(src, "python3 -", stdin=script, timeout=120)
        assert proc.returncode == 0, f"{src}: probe failed: {proc.stderr[-400:]}"
        answers = json.loads(proc.stdout)
        for pid, answer in answers.items():
            listener, kind = pid.split("|")[0], pid.split("|")[1]
            if answer == "no-proxy":
                continue  # this source's firewall (or the proxy's binding) keeps it away: no path either
            if kind == "sanity":
                assert answer.startswith("HTTP/1.1 200") or answer.startswith("HTTP/1.0 200"), \
                    f"{src} reaches {listener} but it serves no package index: {answer[:80]!r}"
                proxies_seen += 1
            elif _opened(answer):
                opened.append(f"{src} via {pid}: {answer.splitlines()[0] if answer else ''}")
    print(f"\nproxy paths: {len(lab.hosts())} sources x {len(listeners)} proxy listeners x {len(targets)} "
          f"platform services x (CONNECT, GET); {proxies_seen} source/proxy pairs proven working proxies; "
          f"{len(opened)} paths opened")
    assert proxies_seen, "no source could use any proxy: the probe proves nothing"
    assert not opened, "a proxy carried traffic into the platform:\n" + "\n".join(opened[:20])
