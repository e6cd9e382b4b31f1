"""plugins/modules/rampart_cert_state: the one read-only look platform_ca's issue path takes on a host. Every way
a key, a certificate or a trust anchor can stop fitting must be reported (the slow path then fixes it), and a
fitting set must say so (or every no-op converge would re-run the slow path). The role's own end-to-end run is
in test_data_ca.py."""

from __future__ import annotations

import datetime
import grp
import ipaddress
import os
import pwd
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support.plugins import load_plugin

module = load_plugin("plugins/modules/rampart_cert_state.py")

NOW = datetime.datetime.now(datetime.UTC)
OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name
SANS = ["DNS:db01.lab.rampart.internal", "DNS:db01", "IP:10.30.0.10"]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
            .public_key(key.public_key()).serial_number(1).not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca, host_key, *, cn="db01.lab.rampart.internal", sans=SANS, days=365, eku=(ExtendedKeyUsageOID.SERVER_AUTH,)):
    ca_key, ca_cert = ca
    names = [x509.DNSName(s[4:]) if s.startswith("DNS:") else x509.IPAddress(ipaddress.ip_address(s[3:]))
             for s in sans]
    return (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(host_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(minutes=5)).not_valid_after(NOW + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def host(tmp_path: Path):
    """A host where platform_ca has done its job: key, certificate and trust anchor as issue.yml leaves them."""
    ca = _ca()
    key = ec.generate_private_key(ec.SECP256R1())
    paths = {"key": tmp_path / "server.key", "cert": tmp_path / "server.crt", "trust": tmp_path / "ca.crt"}
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    paths["key"].chmod(0o600)
    paths["cert"].write_bytes(_pem(_leaf(ca, key)))
    paths["cert"].chmod(0o644)
    trust = _pem(ca[1]).decode().strip() + "\n"
    paths["trust"].write_text(trust)
    paths["trust"].chmod(0o644)
    ski = ca[1].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    params = {"key_path": str(paths["key"]), "cert_path": str(paths["cert"]), "owner": OWNER, "group": GROUP,
              "curve": "secp256r1", "common_name": "db01.lab.rampart.internal", "sans": list(SANS),
              "client_auth": False, "ca_key_identifier": ":".join(f"{b:02X}" for b in ski), "renew_days": 30,
              "trust_path": str(paths["trust"]), "trust_content": trust}
    return {"ca": ca, "key": key, "paths": paths, "params": params}


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the trust anchor must be root-owned")


@needs_root
def test_what_issue_yml_leaves_fits_and_is_trusted(host):
    assert module.inspect(host["params"]) == {"fits": True, "trusted": True, "reasons": []}


@needs_root
def test_san_order_and_case_do_not_matter(host):
    params = {**host["params"], "sans": ["IP:10.30.0.10", "DNS:DB01", "DNS:db01.lab.rampart.internal"]}
    assert module.inspect(params)["fits"] is True


@needs_root
@pytest.mark.parametrize(("change", "reason"), [
    ({"sans": [*SANS, "DNS:localhost"]}, "subjectAltName differs"),
    ({"common_name": "db02.lab.rampart.internal"}, "commonName is not"),
    ({"client_auth": True}, "extendedKeyUsage differs"),
    ({"renew_days": 400}, "due for renewal"),
    ({"ca_key_identifier": "00:11"}, "not signed by the platform CA"),
    ({"curve": "secp384r1"}, "not an EC key on secp384r1"),
    ({"owner": "nobody"}, "not owned by nobody"),
])
def test_each_way_a_certificate_stops_fitting_is_named(host, change, reason):
    got = module.inspect({**host["params"], **change})
    assert got["fits"] is False and got["trusted"] is True
    assert any(reason in r for r in got["reasons"]), got["reasons"]


@needs_root
def test_a_certificate_for_another_key_a_loose_mode_or_a_missing_file_does_not_fit(host):
    paths, params = host["paths"], host["params"]
    other = ec.generate_private_key(ec.SECP256R1())
    paths["cert"].write_bytes(_pem(_leaf(host["ca"], other)))
    assert "the certificate is not for the host key" in " ".join(module.inspect(params)["reasons"])

    paths["cert"].write_bytes(_pem(_leaf(host["ca"], host["key"])))
    paths["key"].chmod(0o640)
    assert module.inspect(params)["reasons"] == [f"{paths['key']}: mode 0640, wants 0600"]

    paths["key"].unlink()
    got = module.inspect(params)
    assert got["fits"] is False and f"{paths['key']}: no key" in got["reasons"]
    paths["cert"].write_text("not a certificate")
    assert f"{paths['cert']}: not a PEM certificate" in module.inspect(params)["reasons"]


@needs_root
def test_a_changed_or_missing_trust_anchor_is_not_trusted(host):
    paths, params = host["paths"], host["params"]
    paths["trust"].write_text(params["trust_content"] + "# appended\n")
    got = module.inspect(params)
    assert got == {"fits": True, "trusted": False, "reasons": [f"{paths['trust']}: not the platform CA certificate"]}
    paths["trust"].unlink()
    assert module.inspect(params)["trusted"] is False


def test_names_are_compared_in_one_spelling():
    assert module.normal_san("IP:10.0.0.1") == "IP:10.0.0.1"
    assert module.normal_san("IP:fd00:0::1") == "IP:fd00::1"
    assert module.normal_san("DNS:Db01.Lab") == "DNS:db01.lab"
    assert module.key_identifier("AB:cd:01") == "abcd01"


def test_validity_is_read_the_same_without_the_utc_properties(host):
    """Lab and production hosts run Debian 12's python3-cryptography 38, which has only the naive properties."""
    cert = x509.load_pem_x509_certificate(host["paths"]["cert"].read_bytes())

    class Old:  # what cryptography 38 offers
        not_valid_before = cert.not_valid_before_utc.replace(tzinfo=None)
        not_valid_after = cert.not_valid_after_utc.replace(tzinfo=None)

    assert module.validity(Old()) == module.validity(cert)
