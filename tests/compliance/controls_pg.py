"""PostgreSQL controls (`rampart-pg-*`) for hosts with the postgres role: listeners where the topology says,
TLS on with a platform-CA certificate for this host, scram-only pg_hba matching the topology's clients, tight
key and credential files, and the exporter's password kept out of its environment file."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from compliance_core import Facts, control, describe, mode_at_most

ROOT = Path(__file__).resolve().parents[2]
CONF = "/etc/postgresql/15/main"
PG_CONF, HBA = f"{CONF}/postgresql.conf", f"{CONF}/pg_hba.conf"
TLS_DIR, CERT, KEY = f"{CONF}/tls", f"{CONF}/tls/server.crt", f"{CONF}/tls/server.key"
EXPORTER_ENV = "/etc/default/prometheus-postgres-exporter"
EXPORTER_PW_DIR = "/etc/prometheus-postgres-exporter"
EXPORTER_PW = f"{EXPORTER_PW_DIR}/password"


def _postgres(facts: Facts) -> bool:
    return "postgres" in facts.roles


def _settings(text: str | None) -> dict[str, str]:
    out = {}
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip("'")
    return out


def _endpoint(facts: Facts, service: str):
    return next((e for e in facts.topology.endpoints() if e.host == facts.name and e.service == service), None)


def _listening_on(facts: Facts, port: int) -> set[str]:
    return {addr for proto, addr, p in facts.listening if proto == "tcp" and p == port}


@control("rampart-pg-01", "PostgreSQL runs, enabled at boot", applies=_postgres,
         units=["postgresql@15-main.service"])
def running(facts: Facts) -> None:
    unit = facts.unit("postgresql@15-main.service")
    assert unit.get("ActiveState") == "active", f"postgresql@15-main is {unit.get('ActiveState')}"
    assert unit.get("UnitFileState") in ("enabled", "enabled-runtime"), f"not enabled ({unit.get('UnitFileState')})"


@control("rampart-pg-02", "PostgreSQL listens only on the topology's address (no wildcard, no other leg)",
         applies=_postgres, read=[PG_CONF])
def listens_where_declared(facts: Facts) -> None:
    ep = _endpoint(facts, "postgres")
    assert ep is not None, "the topology declares no postgres endpoint on this host"
    have = _listening_on(facts, ep.port)
    assert have == {str(ep.address)}, f"tcp/{ep.port} listens on {sorted(have) or 'nothing'}, want {ep.address}"
    conf = _settings(facts.file(PG_CONF))
    assert conf.get("listen_addresses") == str(ep.address), f"listen_addresses = {conf.get('listen_addresses')}"


@control("rampart-pg-03", "TLS on, SCRAM only, TLS 1.2+", applies=_postgres, read=[PG_CONF])
def tls_and_scram(facts: Facts) -> None:
    conf = _settings(facts.file(PG_CONF))
    assert conf.get("ssl") == "on", f"ssl = {conf.get('ssl')}"
    encryption = conf.get("password_encryption")
    assert encryption == "scram-sha-256", f"password_encryption = {encryption}"
    assert conf.get("ssl_min_protocol_version") in ("TLSv1.2", "TLSv1.3"), \
        f"ssl_min_protocol_version = {conf.get('ssl_min_protocol_version')}"
    assert (conf.get("ssl_cert_file"), conf.get("ssl_key_file")) == (CERT, KEY), "not the platform certificate"


@control("rampart-pg-04", "The server certificate chains to the platform CA, names this host, and is in date",
         applies=_postgres, read=[CERT])
def certificate_chain(facts: Facts) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    pem = facts.file(CERT)
    assert pem, f"{CERT} missing"
    leaf = x509.load_pem_x509_certificates(pem.encode())[0]
    ca_file = ROOT / ".secrets" / facts.env / "ca" / "ca.crt"
    assert ca_file.exists(), f"controller CA {ca_file.relative_to(ROOT)} missing (external CA? check by hand)"
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    assert leaf.issuer == ca.subject, f"issued by {leaf.issuer.rfc4514_string()}, not the platform CA"
    key = ca.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(leaf.signature, leaf.tbs_certificate_bytes, padding.PKCS1v15(), leaf.signature_hash_algorithm)
    now = datetime.datetime.now(datetime.UTC)
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc, f"not valid now ({leaf.not_valid_after_utc})"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    ep = _endpoint(facts, "postgres")
    assert ep is None or str(ep.address) in ips, f"the certificate does not name {ep.address} (has {sorted(ips)})"


@control("rampart-pg-05", "pg_hba: superuser by peer on the socket, otherwise hostssl + scram-sha-256 from exactly "
         "the topology's clients; no trust, md5 or password", applies=_postgres, read=[HBA])
def hba_policy(facts: Facts) -> None:
    text = facts.file(HBA)
    assert text, f"{HBA} missing"
    bad, network = [], set()
    for no, raw in enumerate(text.splitlines(), 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        kind, method = fields[0], fields[-1]
        if method in ("trust", "md5", "password") or kind not in ("local", "hostssl"):
            bad.append(f"line {no}: {' '.join(fields)}")
        elif kind == "local" and method == "peer" and fields[2] != "postgres":
            bad.append(f"line {no}: peer for {fields[2]}")
        elif kind == "hostssl":
            if method != "scram-sha-256":
                bad.append(f"line {no}: {method}")
            network.add(str(ipaddress.ip_network(fields[3], strict=False)))
    assert not bad, f"forbidden pg_hba lines: {bad}"
    want = {f"{r.path.src_address}/32" if "/" not in str(r.path.src_address) else str(r.path.src_address)
            for r in facts.topology.inbound(facts.name) if r.endpoint.service == "postgres"}
    assert network == want, f"network clients {sorted(network)} != topology {sorted(want)}"


@control("rampart-pg-06", "Server key 0600 postgres, TLS directory closed, exporter password 0600 prometheus",
         applies=_postgres, stat=[KEY, CERT, TLS_DIR, EXPORTER_PW, EXPORTER_PW_DIR, HBA])
def key_modes(facts: Facts) -> None:
    want = {KEY: ("postgres", "postgres", 0o600), TLS_DIR: ("postgres", "postgres", 0o750),
            CERT: ("postgres", "postgres", 0o644), HBA: ("postgres", "postgres", 0o640),
            EXPORTER_PW: ("prometheus", "prometheus", 0o600), EXPORTER_PW_DIR: ("root", "prometheus", 0o750)}
    bad = []
    for path, (user, group, limit) in want.items():
        st = facts.stat(path)
        if st is None or st["user"] != user or st["group"] != group or not mode_at_most(st, limit):
            bad.append(f"{path} is {describe(st)}, want {user}:{group} <= {limit:04o}")
    assert not bad, "; ".join(bad)


@control("rampart-pg-07", "The exporter runs on the management address only, with no password in its environment",
         applies=_postgres, read=[EXPORTER_ENV], units=["prometheus-postgres-exporter.service"])
def exporter(facts: Facts) -> None:
    unit = facts.unit("prometheus-postgres-exporter.service")
    assert unit.get("ActiveState") == "active", f"exporter is {unit.get('ActiveState')}"
    ep = _endpoint(facts, "postgres_exporter")
    assert ep is not None, "the topology declares no postgres_exporter endpoint on this host"
    have = _listening_on(facts, ep.port)
    assert have == {str(ep.address)}, f"tcp/{ep.port} listens on {sorted(have) or 'nothing'}, want {ep.address}"
    env = _settings(facts.file(EXPORTER_ENV))
    assert env.get("DATA_SOURCE_PASS_FILE") == EXPORTER_PW, "the exporter does not read its password from the file"
    leaks = [k for k in ("DATA_SOURCE_PASS", "DATA_SOURCE_NAME") if env.get(k)]
    assert not leaks and "@" not in env.get("DATA_SOURCE_URI", ""), f"credentials in {EXPORTER_ENV}: {leaks}"


@control("rampart-pg-08", "The platform CA's key store on the controller is private (0700 dir, 0600 files)",
         applies=_postgres)
def controller_ca_store(facts: Facts) -> None:
    store = ROOT / ".secrets" / facts.env / "ca"
    assert store.is_dir(), f"{store.relative_to(ROOT)} missing"
    bad = []
    for path in [store, *store.rglob("*")]:
        limit = 0o700 if path.is_dir() else 0o600
        if path.stat().st_mode & 0o777 & ~limit:
            bad.append(f"{path.relative_to(ROOT)} is {path.stat().st_mode & 0o777:04o}")
    assert not bad, "; ".join(bad)
