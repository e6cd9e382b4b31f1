"""Vault (OpenBao / HashiCorp Vault) controls, for hosts with the `vault` role. Paths are the vault role's defaults.

rampart-vault-08 and the live half of -03 read `vault_health`, which the collector gathers by calling the server's
own /v1/sys/health from the host, verifying TLS against the platform CA (see docs/vault.md, "Compliance").
"""

from __future__ import annotations

import datetime
import ipaddress
import re

from compliance_core import Facts, control, describe, mode_at_most
from cryptography import x509

CONFIG = "/etc/vault/config.hcl"
UNIT = "/etc/systemd/system/vault.service"
CERT = "/etc/vault/tls/vault.crt"
KEY = "/etc/vault/tls/vault.key"
DATA = "/var/lib/vault"
RAFT_DB = "/var/lib/vault/raft/vault.db"
LOG_DIR = "/var/log/vault"
AUDIT = "/var/log/vault/audit.log"
TOKEN_FILES = ["/root/.vault-token", "/var/lib/vault/.vault-token", "/home/ops/.vault-token"]


def _vault(facts: Facts) -> bool:
    return "vault" in facts.roles


def _ca_path(facts: Facts) -> str:
    return f"/usr/local/share/ca-certificates/rampart-{facts.env}-ca.crt"


def _listen(facts: Facts) -> tuple[str, int]:
    want = [(addr, port) for proto, port, addr in facts.expected_listen if proto == "tcp" and port == 8200]
    assert want, "the topology declares no vault listener on this host"
    return want[0]


def _pem_certs(text: str) -> list[x509.Certificate]:
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text or "", re.S)
    return [x509.load_pem_x509_certificate(b.encode()) for b in blocks]


@control("rampart-vault-01", "Vault runs from an enabled unit", applies=_vault, units=["vault.service"])
def running(facts: Facts) -> None:
    unit = facts.unit("vault.service")
    assert unit.get("ActiveState") == "active", f"vault.service is {unit.get('ActiveState')}/{unit.get('SubState')}"
    assert unit.get("UnitFileState") == "enabled", f"vault.service is {unit.get('UnitFileState')}"


@control("rampart-vault-02", "Vault listens only on the topology's address (API) and loopback or a declared "
         "address (cluster)", applies=_vault)
def listens_only_where_declared(facts: Facts) -> None:
    address, port = _listen(facts)
    api = [(a, p) for proto, a, p in facts.listening if proto == "tcp" and p == port]
    assert api == [(address, port)], f"port {port} listens on {api}, expected only {address}"
    cluster = [a for proto, a, p in facts.listening if proto == "tcp" and p == port + 1]
    declared = {a for proto, p, a in facts.expected_listen if p == port + 1}
    bad = [a for a in cluster if not (ipaddress.ip_address(a).is_loopback or a in declared)]
    assert not bad, f"the cluster port {port + 1} listens on undeclared {bad}"


@control("rampart-vault-03", "TLS on; the certificate is valid, chains to the platform CA and names the listen "
         "address; the live listener verifies against the CA", applies=_vault,
         read=[CONFIG, CERT, *(f"/usr/local/share/ca-certificates/rampart-{env}-ca.crt" for env in ("lab", "prod"))])
def tls(facts: Facts) -> None:
    config = facts.file(CONFIG) or ""
    assert "tls_cert_file" in config and "tls_disable" not in config, f"{CONFIG}: TLS is not on"
    certs = _pem_certs(facts.file(CERT))
    cas = _pem_certs(facts.file(_ca_path(facts)))
    assert certs, f"{CERT}: no certificate"
    assert cas, f"{_ca_path(facts)}: no CA certificate"
    leaf, now = certs[0], datetime.datetime.now(datetime.UTC)
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc, f"{CERT}: not valid now"
    issuers = [c for c in certs[1:] + cas if c.subject == leaf.issuer]
    assert issuers, f"{CERT}: issued by {leaf.issuer.rfc4514_string()}, which is not the platform CA"
    leaf.verify_directly_issued_by(issuers[0])  # raises on a bad signature
    address, _ = _listen(facts)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address(address) in sans.get_values_for_type(x509.IPAddress), \
        f"{CERT}: no IP SAN for the listen address {address}"
    health = facts.data.get("vault_health")
    assert health is not None, "the collector gathers no vault_health (wiring missing, see docs/vault.md)"
    assert health.get("ok"), f"the listener does not answer with a certificate the CA verifies: {health.get('error')}"


@control("rampart-vault-04", "The file audit device is configured and writing; its log is owner-only",
         applies=_vault, read=[CONFIG], stat=[AUDIT, LOG_DIR])
def audit(facts: Facts) -> None:
    config = facts.file(CONFIG) or ""
    if 'audit "file"' not in config:  # HashiCorp Vault: enabled through the API by vault_config
        health = facts.data.get("vault_health") or {}
        assert health.get("ok"), "no audit stanza in the config and the server's state is unknown"
    st = facts.stat(AUDIT)
    assert st and st["file"] and st["size"] > 0, f"{AUDIT}: {describe(st)}, size {st and st['size']}: not writing"
    assert mode_at_most(st, 0o600) and st["user"] in ("vault", "root"), f"{AUDIT} is {describe(st)}"
    assert mode_at_most(facts.stat(LOG_DIR), 0o700), f"{LOG_DIR} is {describe(facts.stat(LOG_DIR))}"


@control("rampart-vault-05", "Key, config and data are owned and moded tightly",
         applies=_vault, stat=[KEY, CONFIG, DATA, f"{DATA}/raft", "/etc/vault", "/etc/vault/tls"])
def file_modes(facts: Facts) -> None:
    limits = {KEY: 0o600, CONFIG: 0o640, DATA: 0o700, f"{DATA}/raft": 0o700, "/etc/vault": 0o750,
              "/etc/vault/tls": 0o750}
    bad = [f"{p} is {describe(facts.stat(p))}" for p, lim in limits.items()
           if not mode_at_most(facts.stat(p), lim) or facts.stat(p)["user"] not in ("root", "vault")]
    assert not bad, "; ".join(bad)


@control("rampart-vault-06", "The unit is hardened: no core dumps, no new privileges, read-only system, at most "
         "CAP_IPC_LOCK", applies=_vault, read=[UNIT])
def hardened_unit(facts: Facts) -> None:
    unit = facts.file(UNIT) or ""
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    want = {"LimitCORE": "0", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
            "ProtectHome": "yes", "PrivateDevices": "yes"}
    wrong = {k: settings.get(k) for k, v in want.items() if settings.get(k) != v}
    assert not wrong, f"{UNIT}: {wrong}"
    assert settings.get("CapabilityBoundingSet", "x") in ("", "CAP_IPC_LOCK"), \
        f"CapabilityBoundingSet={settings.get('CapabilityBoundingSet')}"
    assert "User" in settings and settings["User"] != "root", "runs as root"
    assert not re.search(r"(VAULT|BAO)_TOKEN", unit), f"{UNIT} carries a token variable"


@control("rampart-vault-07", "No root or operator token is stored on the host", applies=_vault,
         stat=TOKEN_FILES, read=[UNIT, "/etc/environment"])
def no_token_stored(facts: Facts) -> None:
    found = [p for p in TOKEN_FILES if facts.stat(p)]
    assert not found, f"token files present: {found}"
    for path in (UNIT, "/etc/environment"):
        assert not re.search(r"(VAULT|BAO)_TOKEN|\b(hvs|s)\.[A-Za-z0-9]{20,}", facts.file(path) or ""), \
            f"{path} holds a token"


@control("rampart-vault-08", "Vault is initialised, unsealed and its raft store exists", applies=_vault,
         stat=[RAFT_DB])
def initialised_unsealed(facts: Facts) -> None:
    st = facts.stat(RAFT_DB)
    assert st and st["size"] > 0 and mode_at_most(st, 0o600), f"{RAFT_DB}: {describe(st)}"
    health = facts.data.get("vault_health")
    assert health is not None, "the collector gathers no vault_health (wiring missing, see docs/vault.md)"
    assert health.get("ok"), f"/v1/sys/health unreachable: {health.get('error')}"
    h = health["health"]
    assert h.get("initialized"), "not initialised (playbooks/secrets-server-init.yml)"
    assert not h.get("sealed"), "SEALED (playbooks/secrets-server-unseal.yml)"
    assert not h.get("standby") or h.get("performance_standby") is not None, "no active raft leader"
