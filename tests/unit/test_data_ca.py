"""The platform CA through its real entry points (playbooks/ca.yml and tasks_from=issue), run against this
machine with connection=local and every file under a temporary directory: issuance, idempotence, renewal,
SAN changes, an operator-supplied CA, and a CA key that does not match its certificate."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_data_support import ROOT, ca_vars, inventory, issue_playbook, run_playbook

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs files owned by root (run as root)")


def load_cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def tmp(tmp_path):
    (tmp_path / "trust").mkdir()
    (tmp_path / "host").mkdir()
    return tmp_path


def test_ca_playbook_creates_the_root_once(tmp):
    inv = inventory(tmp)
    first = run_playbook("playbooks/ca.yml", inv, *ca_vars(tmp))
    assert first.rc == 0, first.failures()
    assert first.changed("localhost") >= 2
    ca = tmp / "secrets" / "ca"
    assert mode(ca) == 0o700 and mode(ca.parent) == 0o700
    assert mode(ca / "ca.key") == 0o600 and mode(ca / "ca.crt") == 0o600
    root = load_cert(ca / "ca.crt")
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "rampart test platform CA"
    key_pem = (ca / "ca.key").read_text()
    second = run_playbook("playbooks/ca.yml", inv, *ca_vars(tmp))
    assert second.rc == 0 and second.changed("localhost") == 0, second.changed_tasks("localhost")
    assert load_cert(ca / "ca.crt").serial_number == root.serial_number
    body = key_pem.splitlines()[1]
    assert body not in first.out + first.err + second.out + second.err, "CA key material in Ansible output"


def test_issue_is_idempotent_renews_and_follows_names(tmp):
    inv = inventory(tmp)
    cert, key = tmp / "host" / "server.crt", tmp / "host" / "server.key"
    book = issue_playbook(tmp, cert, key, "postgres", "postgres")
    first = run_playbook(book, inv, *ca_vars(tmp))
    assert first.rc == 0, first.failures()
    leaf, root = load_cert(cert), load_cert(tmp / "secrets" / "ca" / "ca.crt")
    root.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
    assert leaf.issuer == root.subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"db01.test.rampart.internal", "db01"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                            ipaddress.ip_address("127.0.0.2")}
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    st = key.stat()
    assert mode(key) == 0o600 and (st.st_uid, st.st_gid) == (_uid("postgres"), _gid("postgres"))
    assert (tmp / "trust" / "ca.crt").read_bytes().strip() == (tmp / "secrets/ca/ca.crt").read_bytes().strip()
    key_body = key.read_text().splitlines()[1]
    assert key_body not in first.out + first.err, "host key material in Ansible output"

    again = run_playbook(book, inv, *ca_vars(tmp))
    assert again.rc == 0 and again.changed("db01") == 0, again.changed_tasks("db01")
    assert load_cert(cert).serial_number == leaf.serial_number

    # Drift the no-op's one look must catch: a loosened key, a tampered trust anchor. Both are put back, and
    # the certificate is kept (same serial): nothing is re-issued for a mode.
    key.chmod(0o644)
    anchor = tmp / "trust" / "ca.crt"
    anchor.write_text(anchor.read_text() + "# not the platform CA\n")
    fixed = run_playbook(book, inv, *ca_vars(tmp))
    assert fixed.rc == 0, fixed.failures()
    assert mode(key) == 0o600 and "# not the platform CA" not in anchor.read_text()
    assert load_cert(cert).serial_number == leaf.serial_number

    # Fewer than platform_ca_renew_days left: re-issued for the same key, and then stable again.
    renew = ["-e", json.dumps({"platform_ca_renew_days": 400, "platform_ca_cert_days": 500})]
    renewed = run_playbook(book, inv, *ca_vars(tmp), *renew)
    assert renewed.rc == 0, renewed.failures()
    new = load_cert(cert)
    assert new.serial_number != leaf.serial_number
    assert new.public_key().public_numbers() == leaf.public_key().public_numbers(), "the key must be kept"
    assert new.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=499)
    stable = run_playbook(book, inv, *ca_vars(tmp), *renew)
    assert stable.rc == 0 and stable.changed("db01") == 0, stable.changed_tasks("db01")

    # A new name: re-issued with it.
    more = run_playbook(book, inv, *ca_vars(tmp), "-e", json.dumps({"platform_ca_sans": ["DNS:localhost"]}))
    assert more.rc == 0, more.failures()
    san = load_cert(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)

    # A lost key: a new one is made on the host and the certificate follows it.
    key.unlink()
    rekeyed = run_playbook(book, inv, *ca_vars(tmp), "-e", json.dumps({"platform_ca_sans": ["DNS:localhost"]}))
    assert rekeyed.rc == 0, rekeyed.failures()
    assert load_cert(cert).public_key().public_numbers() != new.public_key().public_numbers()


def test_bad_san_is_refused_before_anything_changes(tmp):
    inv = inventory(tmp)
    cert, key = tmp / "host" / "server.crt", tmp / "host" / "server.key"
    book = issue_playbook(tmp, cert, key, "root", "root", platform_ca_sans=["URI:http://x"])
    run = run_playbook(book, inv, *ca_vars(tmp))
    assert run.rc != 0 and "SANs of the form DNS:name or IP:address" in run.failures()
    assert "URI:http://x" in run.failures()
    assert not key.exists() and not cert.exists() and not (tmp / "secrets").exists()


def _make_ca(tmp, name: str, intermediate_of=None):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = (intermediate_of[0].subject, intermediate_of[1]) if intermediate_of else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3000))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256()))
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert, key, cert_path, key_path


def test_operator_supplied_intermediate_ca(tmp):
    root = _make_ca(tmp, "opsroot")
    inter = _make_ca(tmp, "opsinter", intermediate_of=root)
    inv = inventory(tmp)
    cert, key = tmp / "host" / "server.crt", tmp / "host" / "server.key"
    book = issue_playbook(tmp, cert, key, "root", "root")
    ext = ["-e", json.dumps({"platform_ca_source": "external", "platform_ca_external_cert": str(inter[2]),
                             "platform_ca_external_key": str(inter[3]),
                             "platform_ca_external_trust": str(root[2])})]
    run = run_playbook(book, inv, *ca_vars(tmp), *ext)
    assert run.rc == 0, run.failures()
    chain = x509.load_pem_x509_certificates(cert.read_bytes())
    assert [c.subject for c in chain] == [chain[0].subject, inter[0].subject], "leaf then the intermediate"
    assert chain[0].issuer == inter[0].subject
    assert load_cert(tmp / "trust" / "ca.crt").subject == root[0].subject
    assert not (tmp / "secrets").exists(), "an external CA generates nothing"
    again = run_playbook(book, inv, *ca_vars(tmp), *ext)
    assert again.rc == 0 and again.changed("db01") == 0, again.changed_tasks("db01")


def test_external_key_that_does_not_match_stops_before_any_host_change(tmp):
    one = _make_ca(tmp, "one")
    two = _make_ca(tmp, "two")
    inv = inventory(tmp)
    cert, key = tmp / "host" / "server.crt", tmp / "host" / "server.key"
    book = issue_playbook(tmp, cert, key, "root", "root")
    run = run_playbook(book, inv, *ca_vars(tmp), "-e", json.dumps({
        "platform_ca_source": "external", "platform_ca_external_cert": str(one[2]),
        "platform_ca_external_key": str(two[3])}))
    assert run.rc != 0
    assert f"platform_ca_external_key ({two[3]}) does not match platform_ca_external_cert ({one[2]})" \
        in run.failures()
    assert not key.exists() and not cert.exists() and not (tmp / "trust" / "ca.crt").exists()


def test_external_ca_that_is_not_a_ca_is_refused(tmp):
    one = _make_ca(tmp, "one")
    inv = inventory(tmp)
    run = run_playbook(ROOT / "playbooks/ca.yml", inv, *ca_vars(tmp), "-e", json.dumps({
        "platform_ca_source": "external", "platform_ca_external_cert": str(tmp / "missing.crt"),
        "platform_ca_external_key": str(one[3])}))
    assert run.rc != 0 and f"platform_ca_external_cert ({tmp / 'missing.crt'})" in run.failures()


def _uid(name: str) -> int:
    import pwd
    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    import grp
    return grp.getgrnam(name).gr_gid
