#!/usr/bin/env python3
"""Create (or complete) an environment's ansible-vault secrets file with random values, never printing them.

    .venv/bin/python scripts/bootstrap-secrets.py [--env lab]

- the vault password: .secrets/<env>/vault-pass (0600 in a 0700 directory, git-ignored), made on first use;
- the secrets: inventory/<env>/group_vars/all/secrets.yml, encrypted with vault id <env>. Existing values are
  kept; only missing ones are added (so a re-run changes nothing). Only the names of added keys are printed.
A secrets file that the password file cannot decrypt stops with one line and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

import yaml
from ansible.errors import AnsibleError
from ansible.parsing.vault import VaultLib, VaultSecret

ROOT = Path(__file__).resolve().parents[1]
# Values that can be generated; the exchange key is generated only for the lab (its simulator accepts any key).
GENERATED = ["secret_postgres_bot_password", "secret_postgres_exporter_password", "secret_bot_operator_token",
             "secret_backup_master"]
LAB_ONLY = ["secret_lab_exchange_api_key", "secret_lab_exchange_api_secret", "secret_lab_sim_control_token"]


class Refused(Exception):
    pass


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def bootstrap(root: Path, env: str) -> list[str]:
    """Returns the names of the keys added (empty when everything was already there)."""
    secret_dir = root / ".secrets" / env
    pass_file = secret_dir / "vault-pass"
    target = root / "inventory" / env / "group_vars" / "all" / "secrets.yml"
    rel = lambda p: p.relative_to(root)  # noqa: E731
    if not (root / "inventory" / env).is_dir():
        raise Refused(f"inventory/{env}: no such environment")
    if target.exists() and not pass_file.exists():
        raise Refused(f"{rel(target)} exists but its vault password {rel(pass_file)} is missing: restore it "
                      f"(or move the secrets file away to start over; its passwords would be lost)")
    for d in (root / ".secrets", secret_dir):
        d.mkdir(mode=0o700, exist_ok=True)
        d.chmod(0o700)
    if not pass_file.exists():
        _write_private(pass_file, secrets.token_urlsafe(32).encode() + b"\n")
    if pass_file.stat().st_mode & 0o077:
        raise Refused(f"{rel(pass_file)} is readable by others (chmod 600 it)")
    vault = VaultLib([(env, VaultSecret(pass_file.read_bytes().strip()))])
    current: dict = {}
    if target.exists():
        raw = target.read_bytes()
        if not vault.is_encrypted(raw):
            raise Refused(f"{rel(target)} is not ansible-vault encrypted: encrypt it or move it away")
        try:
            current = yaml.safe_load(vault.decrypt(raw)) or {}
        except AnsibleError:
            raise Refused(f"{rel(target)}: cannot decrypt with {rel(pass_file)} (wrong vault password?)") from None
        if not isinstance(current, dict):
            raise Refused(f"{rel(target)}: expected a mapping of secret_* variables")
    wanted = GENERATED + (LAB_ONLY if env == "lab" else [])
    added = [k for k in wanted if not current.get(k)]
    if not added:
        return []
    for key in added:
        current[key] = secrets.token_urlsafe(32)
    text = ("# ansible-vault encrypted bootstrap secrets (scripts/bootstrap-secrets.py). Edit with:\n"
            f"#   ansible-vault edit --vault-id {env}@.secrets/{env}/vault-pass {rel(target)}\n"
            + yaml.safe_dump(current, sort_keys=True))
    _write_private(target, vault.encrypt(text, vault_id=env))
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="lab", help="environment under inventory/ (default: lab)")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        added = bootstrap(args.root.resolve(), args.env)
    except Refused as e:
        print(f"bootstrap-secrets: {e}", file=sys.stderr)
        return 1
    where = f"inventory/{args.env}/group_vars/all/secrets.yml"
    print(f"{where}: added {', '.join(added)}" if added else f"{where}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
