"""Probing the lab from inside its hosts: temporary listeners, concurrent probes, WireGuard handshakes.

Every probe targets a lab address (10.77.x.x) and runs on a lab host (or the controller for the
controller's own cells). One SSH call per host; the probes inside it run concurrently.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rampart.topology import Endpoint, Topology
from support import lab

TIMEOUT = 1.5
NTP_SERVICE = "ntp"


def ntp_request() -> bytes:
    """An NTPv4 client request (mode 3) with a random transmit timestamp, which a server echoes back as the
    origin timestamp of its reply (RFC 5905)."""
    return bytes([0x23]) + bytes(39) + os.urandom(8)
LISTENER_UNIT = "rampart-probe-listener"
LISTENER_MAX_SECONDS = 600  # a crashed test never leaves listeners behind for long

# Runs on the source host (python3 from stdin): every probe at once, prints {id: reached}.
PROBE_SCRIPT = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor

def tcp(p):
    try:
        socket.create_connection((p["addr"], p["port"]), timeout=TIMEOUT).close()
        return True
    except OSError:
        return False

def udp(p):
    # A protocol's own request; reached = the service answered it in kind: a WireGuard handshake initiation
    # answered with a handshake response to it, or an NTP client request answered by a server.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect((p["addr"], p["port"]))
        sent = bytes.fromhex(p["payload"])
        s.send(sent)
        data = s.recv(2048)
        if p["kind"] == "ntp":
            return len(data) >= 48 and data[0] & 7 == 4 and data[24:32] == sent[40:48]
        return len(data) == 92 and data[0] == 2 and data[8:12] == sent[4:8]
    except OSError:
        return False
    finally:
        s.close()

with ThreadPoolExecutor(max_workers=max(1, len(PROBES))) as pool:
    results = pool.map(lambda p: (p["id"], tcp(p) if p["proto"] == "tcp" else udp(p)), PROBES)
    print(json.dumps(dict(results)))
"""

# Runs on a target host under systemd-run: accept and close on every address:port it is given.
LISTENER_SCRIPT = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    addr, port = spec.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(64)
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        try:
            key.fileobj.accept()[0].close()
        except OSError:
            pass
"""

# Runs on a target host: which of these address:port pairs has no listener yet? (With SO_REUSEADDR a bind
# still fails against a listening socket, wildcard or not, but not against connections in TIME_WAIT.)
FREE_SCRIPT = r"""
import json, socket
free = []
for spec in SPECS:
    addr, port = spec.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are no listener
    try:
        s.bind((addr, int(port)))
        free.append(spec)
    except OSError:
        pass
    finally:
        s.close()
print(json.dumps(free))
"""


def _python(host: str, script: str, timeout: float = 60, before: str = "") -> str:
    """Run a python3 script on a lab host (or the controller) as root, return its stdout."""
    if host == lab.topology().controller.name:
        proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                              timeout=timeout)
    else:
        proc = lab.ssh(host, f"{before}python3 -", stdin=script, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{host}: probe script failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


# ---- listeners ---------------------------------------------------------------------------------------

def start_listeners(topo: Topology) -> dict[str, list[str]]:
    """Give every TCP endpoint without a real service a temporary listener; returns what was started."""
    want: dict[str, list[str]] = {}
    for ep in topo.endpoints():
        if ep.proto == "tcp" and ep.host != topo.controller.name:
            want.setdefault(ep.host, []).append(f"{ep.address}:{ep.port}")

    def start(host: str) -> tuple[str, list[str]]:
        # A listener left by an interrupted run is stopped first, so it is never mistaken for the service.
        free = json.loads(_python(host, f"SPECS = {want[host]!r}\n{FREE_SCRIPT}",
                                  before=f"systemctl stop {LISTENER_UNIT} 2>/dev/null; "))
        if free:
            code = LISTENER_SCRIPT.replace("'", "\"")
            lab.ssh(host, f"systemd-run --quiet --collect --unit={LISTENER_UNIT} "
                    f"-p RuntimeMaxSec={LISTENER_MAX_SECONDS} python3 -c '{code}' {' '.join(free)}")
            deadline = time.monotonic() + 10
            while json.loads(_python(host, f"SPECS = {free!r}\n{FREE_SCRIPT}")):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host}: temporary listeners did not come up on {free}")
                time.sleep(0.2)
        return host, free

    with ThreadPoolExecutor(max_workers=len(want)) as pool:
        return dict(pool.map(start, want))


def stop_listeners(hosts) -> None:
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        list(pool.map(lambda h: lab.ssh(h, f"systemctl stop {LISTENER_UNIT} 2>/dev/null; true"), hosts))


# ---- WireGuard handshake initiation (Noise_IKpsk2, as the WireGuard paper specifies it) ----------------

_CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
_IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    t0 = _hmac(key, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = _hmac(t0, prev + bytes([i]))
        out.append(prev)
    return out


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def new_key() -> tuple[X25519PrivateKey, str]:
    """A throwaway static key and its public key in wg's base64 form."""
    key = X25519PrivateKey.generate()
    return key, base64.b64encode(_raw(key.public_key())).decode()


def wg_initiation(static: X25519PrivateKey, responder_pub_b64: str) -> bytes:
    """A handshake initiation (message type 1) from ``static`` to the responder: the hub answers it with a
    handshake response only if ``static`` is one of its peers, i.e. only through a real handshake."""
    s_r = base64.b64decode(responder_pub_b64)
    s_r_pub = X25519PublicKey.from_public_bytes(s_r)
    eph = X25519PrivateKey.generate()
    e_pub = _raw(eph.public_key())
    c = _hash(_CONSTRUCTION)
    h = _hash(_hash(c + _IDENTIFIER) + s_r)
    (c,) = _kdf(c, e_pub, 1)
    h = _hash(h + e_pub)
    c, k = _kdf(c, eph.exchange(s_r_pub), 2)
    enc_static = ChaCha20Poly1305(k).encrypt(bytes(12), _raw(static.public_key()), h)
    h = _hash(h + enc_static)
    c, k = _kdf(c, static.exchange(s_r_pub), 2)
    now = time.time_ns()
    tai64n = struct.pack(">QI", 0x400000000000000A + now // 1_000_000_000, now % 1_000_000_000)
    enc_time = ChaCha20Poly1305(k).encrypt(bytes(12), tai64n, h)
    msg = struct.pack("<I", 1) + os.urandom(4) + e_pub + enc_static + enc_time
    mac1 = hashlib.blake2s(msg, digest_size=16, key=_hash(b"mac1----" + s_r)).digest()
    return msg + mac1 + bytes(16)


# ---- the matrix ---------------------------------------------------------------------------------------

def unroutable(topo: Topology, cells) -> list[tuple[str, Endpoint]]:
    """The controller's cells into zones it has no leg in. The lab's controller routes nothing into them
    (its forward chain drops lab traffic and it has no route there): a probe would leave the lab by its
    default route, so these cells are blocked by construction and never probed."""
    ctl = topo.controller
    return [(s, ep) for s, ep in cells if s == ctl.name and ep.zone not in ctl.addresses]


def probe(topo: Topology, cells: list[tuple[str, Endpoint]], payloads: dict | None = None) -> dict:
    """Probe the given (source, endpoint) cells, each from inside its source, one SSH call per source.
    ``payloads`` maps UDP cells to the datagram to send. Returns {(source, endpoint): reached}."""
    by_source: dict[str, list[dict]] = {}
    index: dict[str, tuple[str, Endpoint]] = {}
    for i, (src, ep) in enumerate(cells):
        p = {"id": str(i), "proto": ep.proto, "addr": str(ep.address), "port": ep.port}
        if ep.proto == "udp":
            p["payload"] = payloads[(src, ep)].hex()
            p["kind"] = "ntp" if ep.service == NTP_SERVICE else "wireguard"
        by_source.setdefault(src, []).append(p)
        index[str(i)] = (src, ep)

    def run(src: str) -> dict:
        script = f"TIMEOUT = {TIMEOUT}\nPROBES = {json.dumps(by_source[src])}\n{PROBE_SCRIPT}"
        return json.loads(_python(src, script))

    observed = {}
    with ThreadPoolExecutor(max_workers=max(1, len(by_source))) as pool:
        for result in pool.map(run, by_source):
            for key, reached in result.items():
                observed[index[key]] = reached
    return observed


def wireguard_hub(topo: Topology) -> tuple[str, str] | None:
    """(interface, public key) of the WireGuard hub on the gateway, or None if it is not up."""
    out = lab.ssh(topo.gateway, "wg show interfaces 2>/dev/null").stdout.split()
    if not out:
        return None
    pub = lab.ssh(topo.gateway, f"wg show {out[0]} public-key").stdout.strip()
    return (out[0], pub) if pub else None
