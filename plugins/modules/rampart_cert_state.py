#!/usr/bin/python
"""Ansible module: does this host's platform certificate still fit, and does the host trust the platform CA?

platform_ca's issue path asked the host three times per certificate in every converge (make-or-keep the key,
read the certificate, keep the certificate's owner and mode) and once more per host for the trust anchor. This
reads all of it in one call and changes nothing: when everything fits, the converge moves on; when anything
does not, the role's slow path (key, CSR, signing on the controller, install) runs and fixes it.

Only public facts leave the host: the private key is loaded to compare its public half and its curve."""

from __future__ import annotations

import datetime
import grp
import ipaddress
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: rampart_cert_state
short_description: Whether a host's key, server certificate and CA trust anchor are as platform_ca would make them
description:
  - Read-only. Reports C(fits) (the key and certificate need nothing) and C(trusted) (the trust anchor file
    holds exactly the CA certificate), with every reason they do not.
options:
  key_path: {description: The host key (0600, owner and group as given)., type: path, required: true}
  cert_path: {description: The server certificate (0644, owner and group as given)., type: path, required: true}
  owner: {description: Owner of the key and certificate., type: str, required: true}
  group: {description: Group of the key and certificate., type: str, required: true}
  curve: {description: "The key's elliptic curve, as cryptography names it (secp256r1).", type: str,
          required: true}
  common_name: {description: The subject's commonName., type: str, required: true}
  sans: {description: "Every subjectAltName, as DNS:name or IP:address.", type: list, elements: str,
         required: true}
  client_auth: {description: Whether extendedKeyUsage also has clientAuth., type: bool, default: false}
  ca_key_identifier: {description: "The signing CA's subject key identifier (hex, any case, : optional).",
                      type: str, required: true}
  renew_days: {description: Not fitting when fewer than this many days of validity remain., type: int,
               required: true}
  trust_path: {description: Where the CA certificate is installed as a trust anchor (root, 0644)., type: path,
               required: true}
  trust_content: {description: What that file must hold., type: str, required: true}
"""

RETURN = r"""
fits: {description: The key and the certificate need nothing., returned: always, type: bool}
trusted: {description: The trust anchor file holds exactly trust_content (root-owned, 0644)., returned: always,
          type: bool}
reasons: {description: Why not, one line each (empty when both are true)., returned: always, type: list}
"""

SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
CLIENT_AUTH = "1.3.6.1.5.5.7.3.2"


def ownership(path: str, owner: str, group: str, mode: int) -> list[str]:
    """Why `path` (which exists) is not owned by owner:group with exactly `mode`."""
    st = os.stat(path)
    reasons = []
    try:
        if st.st_uid != pwd.getpwnam(owner).pw_uid:
            reasons.append(f"{path}: not owned by {owner}")
    except KeyError:
        reasons.append(f"{path}: no user {owner} on this host")
    try:
        if st.st_gid != grp.getgrnam(group).gr_gid:
            reasons.append(f"{path}: group is not {group}")
    except KeyError:
        reasons.append(f"{path}: no group {group} on this host")
    if stat.S_IMODE(st.st_mode) != mode:
        reasons.append(f"{path}: mode {stat.S_IMODE(st.st_mode):04o}, wants {mode:04o}")
    return reasons


def normal_san(entry: str) -> str:
    """DNS:Name -> DNS:name; IP:addr -> IP:<canonical form>, so equal names compare equal."""
    kind, _, value = entry.partition(":")
    if kind == "IP":
        try:
            return "IP:" + str(ipaddress.ip_address(value))
        except ValueError:
            return entry
    return f"{kind}:{value.lower()}" if kind == "DNS" else entry


def key_identifier(text: str) -> str:
    return text.replace(":", "").lower()


def validity(cert) -> tuple[datetime.datetime, datetime.datetime]:
    """notBefore and notAfter, timezone-aware (Debian 12's python3-cryptography 38 has no *_utc properties)."""
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    utc = datetime.UTC
    return cert.not_valid_before.replace(tzinfo=utc), cert.not_valid_after.replace(tzinfo=utc)


def certificate_reasons(cert, key_public, params: dict, now: datetime.datetime) -> list[str]:
    """Why the certificate is not what platform_ca would issue now for this key (empty: it fits)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    reasons = []
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key_public is not None and cert.public_key().public_bytes(*spki) != key_public.public_bytes(*spki):
        reasons.append("the certificate is not for the host key")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [params["common_name"]]:
        reasons.append(f"commonName is not {params['common_name']}")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {"DNS:" + n.lower() for n in san.get_values_for_type(x509.DNSName)}
        have |= {"IP:" + str(a) for a in san.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        have = set()
    want = {normal_san(s) for s in params["sans"]}
    if have != want:
        reasons.append(f"subjectAltName differs (missing {sorted(want - have)}, extra {sorted(have - want)})")
    try:
        eku = {u.dotted_string for u in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value}
    except x509.ExtensionNotFound:
        eku = set()
    if eku != ({SERVER_AUTH, CLIENT_AUTH} if params["client_auth"] else {SERVER_AUTH}):
        reasons.append("extendedKeyUsage differs")
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier or b""
    except x509.ExtensionNotFound:
        aki = b""
    if aki.hex() != key_identifier(params["ca_key_identifier"]):
        reasons.append("not signed by the platform CA (authority key identifier differs)")
    not_before, not_after = validity(cert)
    if not_before > now:
        reasons.append("not valid yet")
    if not_after <= now + datetime.timedelta(days=params["renew_days"]):
        reasons.append(f"due for renewal (expires {not_after:%Y-%m-%d})")
    return reasons


def read_checked(path: str, owner: str, group: str, mode: int, missing: str, reasons: list[str]) -> bytes | None:
    """The file's bytes, adding to `reasons` why its owner, group or mode are wrong; None (and `missing` as the
    reason) when there is no such file."""
    if not os.path.isfile(path):
        reasons.append(f"{path}: {missing}")
        return None
    reasons += ownership(path, owner, group, mode)
    with open(path, "rb") as f:
        return f.read()


def inspect(params: dict, now: datetime.datetime | None = None) -> dict:
    """The module's answer for `params` (its options), read from this host's files."""
    now = now or datetime.datetime.now(datetime.UTC)
    trust_path = params["trust_path"]
    trust_reasons: list[str] = []
    anchor = read_checked(trust_path, "root", "root", 0o644, "no trust anchor", trust_reasons)
    if anchor is not None and anchor != params["trust_content"].encode():
        trust_reasons.append(f"{trust_path}: not the platform CA certificate")
    trusted = not trust_reasons
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        return {"fits": False, "trusted": trusted,
                "reasons": [*trust_reasons, "python3-cryptography is not installed"]}

    cert_reasons: list[str] = []
    key_public = None
    key_path, cert_path, owner, group = params["key_path"], params["cert_path"], params["owner"], params["group"]
    key_pem = read_checked(key_path, owner, group, 0o600, "no key", cert_reasons)
    if key_pem is not None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            cert_reasons.append(f"{key_path}: not an unencrypted PEM private key")
        else:
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != params["curve"]:
                cert_reasons.append(f"{key_path}: not an EC key on {params['curve']}")
            else:
                key_public = key.public_key()
    cert_pem = read_checked(cert_path, owner, group, 0o644, "no certificate", cert_reasons)
    if cert_pem is not None:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            cert_reasons.append(f"{cert_path}: not a PEM certificate")
        else:
            cert_reasons += [f"{cert_path}: {r}" for r in certificate_reasons(cert, key_public, params, now)]
    return {"fits": not cert_reasons, "trusted": trusted, "reasons": trust_reasons + cert_reasons}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "key_path": {"type": "path", "required": True},
            "cert_path": {"type": "path", "required": True},
            "owner": {"type": "str", "required": True},
            "group": {"type": "str", "required": True},
            "curve": {"type": "str", "required": True},
            "common_name": {"type": "str", "required": True},
            "sans": {"type": "list", "elements": "str", "required": True},
            "client_auth": {"type": "bool", "default": False},
            "ca_key_identifier": {"type": "str", "required": True},
            "renew_days": {"type": "int", "required": True},
            "trust_path": {"type": "path", "required": True},
            "trust_content": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    module.exit_json(changed=False, **inspect(module.params))


if __name__ == "__main__":
    main()
