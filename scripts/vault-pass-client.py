#!/usr/bin/env python3
"""Ansible vault password client: `ansible-playbook --vault-id lab@scripts/vault-pass-client.py ...`.

Ansible runs it with `--vault-id <env>`; it prints .secrets/<env>/vault-pass, but first checks that the password
decrypts inventory/<env>/group_vars/all/secrets.yml, so a missing or wrong password stops the run (before any
task) with a message that names both files instead of Ansible's bare "Decryption failed".
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

try:
    from ansible.errors import AnsibleError
    from ansible.parsing.vault import VaultLib, VaultSecret
except ImportError:  # Ansible runs this with whatever python3 is first on PATH: use the project's venv
    # (compare prefixes: the venv's python is a symlink to the same interpreter binary)
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parents[1].resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])  # noqa: S606 - fixed path
    raise


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vault-id", default="lab")
    env = parser.parse_args().vault_id
    pass_file = ROOT / ".secrets" / env / "vault-pass"
    target = ROOT / "inventory" / env / "group_vars" / "all" / "secrets.yml"
    if not pass_file.exists():
        print(f"no vault password for '{env}': .secrets/{env}/vault-pass is missing "
              f"(the lab makes it with scripts/bootstrap-secrets.py --env {env})", file=sys.stderr)
        return 1
    password = pass_file.read_bytes().strip()
    if target.exists():
        try:
            VaultLib([(env, VaultSecret(password))]).decrypt(target.read_bytes())
        except AnsibleError:
            print(f".secrets/{env}/vault-pass does not decrypt inventory/{env}/group_vars/all/secrets.yml "
                  f"(wrong vault password)", file=sys.stderr)
            return 1
    sys.stdout.write(password.decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
