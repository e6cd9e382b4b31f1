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


def bootstrap(root, env="lab", *extra):
    return subprocess.run([sys.executable, str(SCRIPT), "--env", env, "--root", str(root), *extra],
                          capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "inventory" / "lab" / "group_vars" / "all").mkdir(parents=True)
    return tmp_path


def _vault(repo) -> VaultLib:
    return VaultLib([("lab", VaultSecret((repo / ".secrets/lab/vault-pass").read_bytes().strip()))])


def decrypt(repo) -> dict:
    return yaml.safe_load(_vault(repo).decrypt((repo / "inventory/lab/group_vars/all/secrets.yml").read_bytes()))


def encrypt(repo, values: dict) -> None:
    """Write the lab's secrets file as an operator's edit would."""
    (repo / "inventory/lab/group_vars/all/secrets.yml").write_bytes(
        _vault(repo).encrypt(yaml.safe_dump(values), vault_id="lab"))


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
    encrypt(repo, values)
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


def test_rotate_replaces_the_named_values_and_keeps_the_previous_ones(repo):
    assert bootstrap(repo).returncode == 0
    target = repo / "inventory/lab/group_vars/all/secrets.yml"
    first = decrypt(repo)
    names = ["secret_postgres_bot_password", "secret_lab_exchange_api_key", "secret_lab_exchange_api_secret"]
    proc = bootstrap(repo, "lab", "--rotate", *names)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("inventory/lab/group_vars/all/secrets.yml: rotated " + ", ".join(names)
                           + " (previous values kept as <name>_previous)\n")
    second = decrypt(repo)
    for name in names:
        assert second[f"{name}_previous"] == first[name]
        assert second[name] != first[name] and len(second[name]) >= 32
    untouched = set(first) - set(names)
    assert {k: second[k] for k in untouched} == {k: first[k] for k in untouched}
    assert set(second) == set(first) | {f"{n}_previous" for n in names}
    for value in list(first.values()) + list(second.values()):
        assert value not in proc.stdout + proc.stderr
    assert target.read_text().startswith("$ANSIBLE_VAULT;1.2;AES256;lab\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["secrets.yml"], "no temporary file left behind"
    # A second rotation replaces the older _previous; a name given twice is rotated once.
    again = bootstrap(repo, "lab", "--rotate", names[0], names[0])
    assert again.returncode == 0 and f"rotated {names[0]} (" in again.stdout
    third = decrypt(repo)
    assert third[f"{names[0]}_previous"] == second[names[0]]
    assert third[names[0]] not in (first[names[0]], second[names[0]])
    # An ordinary run afterwards adds nothing (the _previous values are not in its way).
    assert "up to date" in bootstrap(repo).stdout


@pytest.mark.parametrize("env, names, words", [
    ("lab", ["secret_nope"], "cannot rotate secret_nope: not generated by this script for lab"),
    ("lab", ["secret_bot_operator_token", "secret_bot_operator_token_previous"],
     "cannot rotate secret_bot_operator_token_previous: not generated"),
    ("lab", ["secret_hand_set"], "cannot rotate secret_hand_set: not generated"),  # in the file, set by hand
    ("prod", ["secret_lab_exchange_api_key"], "cannot rotate secret_lab_exchange_api_key: not generated by this "
                                              "script for prod"),
])
def test_rotate_refuses_names_it_cannot_generate_and_changes_nothing(repo, env, names, words):
    (repo / f"inventory/{env}/group_vars/all").mkdir(parents=True, exist_ok=True)
    assert bootstrap(repo, env).returncode == 0
    target = repo / f"inventory/{env}/group_vars/all/secrets.yml"
    if "secret_hand_set" in names:
        encrypt(repo, decrypt(repo) | {"secret_hand_set": "typed-in-by-the-operator"})
    before = target.read_bytes()
    proc = bootstrap(repo, env, "--rotate", *names)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"bootstrap-secrets: {words}") and proc.stderr.count("\n") == 1, proc.stderr
    assert target.read_bytes() == before


def test_rotate_needs_existing_values(repo):
    proc = bootstrap(repo, "lab", "--rotate", "secret_backup_master")
    assert proc.returncode == 1 and "nothing to rotate (run without --rotate first)" in proc.stderr
    assert not (repo / ".secrets").exists() and not (repo / "inventory/lab/group_vars/all/secrets.yml").exists()
    assert bootstrap(repo).returncode == 0
    target = repo / "inventory/lab/group_vars/all/secrets.yml"
    values = decrypt(repo)
    del values["secret_backup_master"]
    encrypt(repo, values)
    before = target.read_bytes()
    proc = bootstrap(repo, "lab", "--rotate", "secret_bot_operator_token", "secret_backup_master")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "bootstrap-secrets: inventory/lab/group_vars/all/secrets.yml has no secret_backup_master yet: nothing "
        "to rotate (run without --rotate first)")
    assert target.read_bytes() == before


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
