"""Bootstrap secrets: the lab's vault password and encrypted secrets file are made once, completed without
touching existing values, never printed; a wrong or missing vault password stops a playbook before any task."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret
from test_data_support import ROOT, run_playbook, sample_host_view, write_playbook

SCRIPT = ROOT / "scripts" / "bootstrap-secrets.py"


def bootstrap(root, env="lab"):
    return subprocess.run([sys.executable, str(SCRIPT), "--env", env, "--root", str(root)],
                          capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "inventory" / "lab" / "group_vars" / "all").mkdir(parents=True)
    return tmp_path


def decrypt(repo) -> dict:
    password = (repo / ".secrets/lab/vault-pass").read_bytes().strip()
    raw = (repo / "inventory/lab/group_vars/all/secrets.yml").read_bytes()
    return yaml.safe_load(VaultLib([("lab", VaultSecret(password))]).decrypt(raw))


def test_first_run_creates_password_and_encrypted_secrets_without_printing_them(repo):
    proc = bootstrap(repo)
    assert proc.returncode == 0, proc.stderr
    target = repo / "inventory/lab/group_vars/all/secrets.yml"
    assert target.read_text().startswith("$ANSIBLE_VAULT;1.2;AES256;lab\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE((repo / ".secrets/lab/vault-pass").stat().st_mode) == 0o600
    assert stat.S_IMODE((repo / ".secrets/lab").stat().st_mode) == 0o700
    values = decrypt(repo)
    assert set(values) == {"secret_postgres_bot_password", "secret_postgres_exporter_password",
                           "secret_bot_operator_token", "secret_backup_master", "secret_lab_exchange_api_key",
                           "secret_lab_exchange_api_secret", "secret_lab_sim_control_token"}
    assert len(set(values.values())) == 7 and all(len(v) >= 32 for v in values.values())
    for v in values.values():
        assert v not in proc.stdout + proc.stderr
    assert "added secret_postgres_bot_password" in proc.stdout


def test_second_run_changes_nothing_and_a_missing_key_is_added_alone(repo):
    assert bootstrap(repo).returncode == 0
    target = repo / "inventory/lab/group_vars/all/secrets.yml"
    before = target.read_bytes()
    again = bootstrap(repo)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert target.read_bytes() == before
    values = decrypt(repo)
    del values["secret_bot_operator_token"]
    password = (repo / ".secrets/lab/vault-pass").read_bytes().strip()
    target.write_bytes(VaultLib([("lab", VaultSecret(password))]).encrypt(yaml.safe_dump(values), vault_id="lab"))
    third = bootstrap(repo)
    assert third.returncode == 0 and "added secret_bot_operator_token" in third.stdout
    after = decrypt(repo)
    assert {k: after[k] for k in values} == values, "existing secrets are kept"


def test_wrong_password_stops_and_changes_nothing(repo):
    assert bootstrap(repo).returncode == 0
    target = repo / "inventory/lab/group_vars/all/secrets.yml"
    before = target.read_bytes()
    (repo / ".secrets/lab/vault-pass").write_text("not-the-password\n")
    proc = bootstrap(repo)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("bootstrap-secrets: inventory/lab/group_vars/all/secrets.yml: cannot decrypt "
                                   "with .secrets/lab/vault-pass (wrong vault password?)")
    assert "Traceback" not in proc.stderr and target.read_bytes() == before


def test_missing_password_with_existing_secrets_stops(repo):
    assert bootstrap(repo).returncode == 0
    (repo / ".secrets/lab/vault-pass").unlink()
    proc = bootstrap(repo)
    assert proc.returncode == 1 and "vault password .secrets/lab/vault-pass is missing" in proc.stderr
    assert not (repo / ".secrets/lab/vault-pass").exists()


def test_other_environments_get_no_simulated_exchange_key(repo):
    (repo / "inventory/prod/group_vars/all").mkdir(parents=True)
    assert bootstrap(repo, "prod").returncode == 0
    assert bootstrap(repo, "nosuch").stderr.strip() == "bootstrap-secrets: inventory/nosuch: no such environment"


@pytest.mark.parametrize("password", ["wrong", None])
def test_a_playbook_with_a_wrong_or_missing_vault_password_stops_before_any_task(repo, password):
    """Through the vault password client (how the lab passes its password): one clear message, no task run."""
    assert bootstrap(repo).returncode == 0
    (repo / "scripts").mkdir()
    client = repo / "scripts" / "vault-pass-client.py"
    client.write_bytes((ROOT / "scripts" / "vault-pass-client.py").read_bytes())
    client.chmod(0o755)
    inv_dir = repo / "inventory" / "lab"
    (inv_dir / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {"db01": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "rampart_host": sample_host_view()}}}}))
    marker = repo / "touched"
    book = write_playbook(repo, "play.yml", [{"name": "p", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Change something", "ansible.builtin.file": {"path": str(marker), "state": "touch",
                                                              "mode": "0600"}},
        {"name": "Use a secret", "ansible.builtin.assert": {"that": "secret_postgres_bot_password | length > 0"}},
    ]}])
    good = (repo / ".secrets/lab/vault-pass").read_bytes()
    if password:
        (repo / ".secrets/lab/vault-pass").write_text(password)
        words = ".secrets/lab/vault-pass does not decrypt inventory/lab/group_vars/all/secrets.yml"
    else:
        (repo / ".secrets/lab/vault-pass").unlink()
        words = "no vault password for 'lab': .secrets/lab/vault-pass is missing"
    path = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # the venv's python3 (see the client)
    run = run_playbook(book, inv_dir, "--vault-id", f"lab@{client}", env=path)
    assert run.rc != 0 and words in run.err, run.err
    assert not marker.exists(), "a task ran before the vault password was found wrong"
    # Ansible's own check, without the client, also stops before any task (with a terser message).
    bare = run_playbook(book, inv_dir, *(["--vault-id", f"lab@{repo / '.secrets/lab/vault-pass'}"] if password
                                         else []))
    assert bare.rc != 0 and ("Decryption failed" in bare.err or "no vault secrets found" in bare.err), bare.err
    assert not marker.exists()
    # And the right password works (the file really is what the inventory loads).
    (repo / ".secrets/lab/vault-pass").write_bytes(good)
    ok = run_playbook(book, inv_dir, "--vault-id", f"lab@{client}", env=path)
    assert ok.rc == 0, ok.failures()
    assert marker.exists()
    assert decrypt(repo)["secret_postgres_bot_password"] not in ok.out + ok.err
