"""Simulator over TLS (https + wss) and the bot verifying it against a configured CA."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rampart_bot.service.config import ConfigError, parse_config
from rampart_bot.service.runtime import BotRuntime
from rampart_bot.sim.server import SimServer

from .conftest import API_KEY, API_SECRET, SECRETS, bot_config


@dataclass
class Pki:
    ca: Path
    other_ca: Path  # a CA that did not sign the server certificate
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(tmp: Path) -> Pki:
    ca_key, ca_cert = _ca("rampart test CA")
    _, other_cert = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("exchange"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(tmp / "ca.pem", tmp / "other-ca.pem", tmp / "server.pem", tmp / "server.key")
    pki.ca.write_bytes(_pem(ca_cert))
    pki.other_ca.write_bytes(_pem(other_cert))
    pki.cert.write_bytes(_pem(cert))
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pki.key.chmod(0o600)
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest_asyncio.fixture
async def tls_sim(pki: Pki) -> AsyncIterator[SimServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.cert, pki.key)
    server = SimServer(API_KEY, API_SECRET, tick_interval_s=0.01)
    await server.start(ssl_context=ctx)
    yield server
    await server.stop()


@pytest.mark.asyncio
async def test_bot_trades_against_tls_simulator_with_configured_ca(
    tls_sim: SimServer, pki: Pki, bot_db_url: str
) -> None:
    assert tls_sim.base_url.startswith("https://") and tls_sim.ws_url.startswith("wss://")
    cfg = bot_config(tls_sim, bot_db_url)
    cfg.venue.ca_file = str(pki.ca)
    runtime = await BotRuntime.start(cfg, SECRETS, http_port=0)
    try:
        # Ready = REST reconciliation done and the market-data WebSocket (wss) is fresh.
        await runtime.engine.wait_for(runtime.engine.ready, timeout=10)
        assert any(path == "/api/v3/account" for _, path, _ in tls_sim.request_log)
        async with runtime.session.ws_connect(f"{tls_sim.ws_url}/ws/btcusdt@bookTicker") as ws:
            assert (await ws.receive_str()).startswith("{")
    finally:
        await runtime.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("trust", ["other_ca", "system"])
async def test_bot_refuses_tls_simulator_signed_by_an_untrusted_ca(
    tls_sim: SimServer, pki: Pki, bot_db_url: str, trust: str
) -> None:
    cfg = bot_config(tls_sim, bot_db_url)
    cfg.venue.ca_file = str(pki.other_ca) if trust == "other_ca" else ""
    runtime = await BotRuntime.start(cfg, SECRETS, http_port=0)
    try:
        await asyncio.sleep(1.0)
        assert not runtime.engine.ready()
        assert runtime.engine.readiness_checks()["reconciled"] is False
        assert tls_sim.request_log == [], "no request may get through an unverified connection"
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with runtime.session.get(f"{tls_sim.base_url}/api/v3/time"):
                pass
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with runtime.session.ws_connect(f"{tls_sim.ws_url}/ws/btcusdt@bookTicker"):
                pass
    finally:
        await runtime.stop()


def test_venue_ca_file_must_load(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"venue\.ca_file: .*nope\.pem: cannot load"):
        parse_config({"venue": {"ca_file": str(missing)}}, "bot.toml")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^bot\.toml: venue\.ca_file: .*junk\.pem: cannot load"):
        parse_config({"venue": {"ca_file": str(junk)}}, "bot.toml")


def _sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rampart_bot.sim.main", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_sim_cli_tls_flags_bad_input(pki: Pki, tmp_path: Path) -> None:
    cases = [
        (["--tls-cert", str(pki.cert)], "--tls-cert and --tls-key must be given together"),
        (["--tls-key", str(pki.key)], "--tls-cert and --tls-key must be given together"),
        (["--tls-cert", str(tmp_path / "x.pem"), "--tls-key", str(pki.key)], "x.pem: cannot read"),
        (["--tls-cert", str(pki.cert), "--tls-key", str(tmp_path)], "--tls-key"),
        (["--tls-cert", str(pki.ca), "--tls-key", str(pki.key)], "not a matching PEM cert and key"),
    ]
    for args, fragment in cases:
        proc = _sim(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
        assert proc.stderr.startswith("rampart-exchange-sim: ")


@pytest.mark.asyncio
async def test_sim_cli_serves_https_and_wss(pki: Pki) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rampart_bot.sim.main",
        "--port",
        "0",
        "--tls-cert",
        str(pki.cert),
        "--tls-key",
        str(pki.key),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        port = None
        assert proc.stdout is not None
        while port is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "simulator exited before READY"
            if line.startswith("READY "):
                port = int(line.split()[1])
        trust = ssl.create_default_context(cafile=str(pki.ca))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
            async with http.get(f"https://127.0.0.1:{port}/api/v3/time") as resp:
                assert resp.status == 200 and "serverTime" in await resp.json()
            async with http.ws_connect(f"wss://127.0.0.1:{port}/ws/btcusdt@bookTicker") as ws:
                assert (await ws.receive_str()).startswith("{")
        with pytest.raises(aiohttp.ClientError):  # plain http on the TLS port is refused
            async with (
                aiohttp.ClientSession() as plain,
                plain.get(f"http://127.0.0.1:{port}/api/v3/time") as resp,
            ):
                await resp.read()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
