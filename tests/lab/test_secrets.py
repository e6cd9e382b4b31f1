"""Secrets in the lab, end to end: the bot's AppRole reads its own secret and nothing else, and a canary
secret that travelled the real path (ansible-vault → Vault KV → AppRole read on the trading host) is found
nowhere it must not be: no journal, log file, process environment or command line, unit file or
world-readable file on any host, nor Ansible's own output."""

from __future__ import annotations

import hashlib
import json
import secrets

import yaml
from support import lab

CREDSTORE = "/etc/credstore"
DECOY_FILE = "/var/tmp/rampart-decoy"  # noqa: S108 - a path on a lab host, planted and removed by the test

# Runs on the service host: AppRole login with the delivered credentials, then a few reads and writes.
# Only digests and status codes leave the host.
APPROLE = r"""
import hashlib, json, ssl, urllib.request, urllib.error
ctx = ssl.create_default_context(cafile=CA)
def call(method, path, token=None, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(URL + path, method=method, data=data)
    if token:
        req.add_header("X-Vault-Token", token)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None
role_id = open(CREDS + "/rampart-bot.vault-role-id").read().strip()
secret_id = open(CREDS + "/rampart-bot.vault-secret-id").read().strip()
status, login = call("POST", "/v1/auth/approle/login", body={"role_id": role_id, "secret_id": secret_id})
out = {"login": status}
if status == 200:
    token = login["auth"]["client_token"]
    out["policies"] = sorted(login["auth"]["policies"])
    status, own = call("GET", "/v1/secret/data/bot/trading", token)
    out["own"] = status
    if status == 200:
        out["own_digest"] = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in own["data"]["data"].items()}
    out["other"] = call("GET", "/v1/secret/data/monitoring/anything", token)[0]
    out["write_own"] = call("POST", "/v1/secret/data/bot/trading", token, {"data": {"x": "y"}})[0]
    out["list"] = call("LIST", "/v1/secret/metadata/", token)[0]
    out["policy_write"] = call("PUT", "/v1/sys/policies/acl/evil", token, {"policy": "path \"*\" {}"})[0]
print(json.dumps(out))
"""

# The needles arrive on stdin's first line and the script after it: neither is ever in argv or environment.
BOOTSTRAP = "python3 -c 'import sys; NEEDLES_LINE = sys.stdin.readline(); exec(sys.stdin.read())'"

# Runs on every host: where do the needles appear?
SEARCH = r"""
import json, os, stat, subprocess, sys
needles = [n.encode() for n in json.loads(NEEDLES_LINE)]
hits = {}
def check(where, data):
    for i, n in enumerate(needles):
        if n in data:
            hits.setdefault(str(i), []).append(where)
journal = subprocess.run(["journalctl", "-o", "cat", "--no-pager"], capture_output=True).stdout
check("journal", journal)
for d in ("/var/log/journal/remote",):
    if os.path.isdir(d):
        remote = subprocess.run(["journalctl", "-D", d, "-o", "cat", "--no-pager"], capture_output=True)
        check("remote journal", remote.stdout)
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        for f in ("environ", "cmdline"):
            try:
                check(f"/proc/{pid}/{f}", open(f"/proc/{pid}/{f}", "rb").read())
            except OSError:
                pass
def walk(top, only_world_readable):
    for root, dirs, files in os.walk(top):
        if root.startswith(("/proc", "/sys", "/dev", "/run/credentials")):
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > 8 << 20:
                    continue
                if only_world_readable and not st.st_mode & stat.S_IROTH:
                    continue
                with open(path, "rb") as fh:
                    check(path, fh.read())
            except OSError:
                pass
walk("/var/log", False)
for top in ("/etc/systemd", "/lib/systemd/system", "/usr/lib/systemd/system", "/run/systemd/system"):
    walk(top, False)
for top in ("/etc", "/opt", "/srv", "/var", "/home", "/root", "/usr/local", "/tmp", "/var/tmp"):
    walk(top, True)
print(json.dumps(hits))
"""


def _vault(topo):
    vault = next(h for h in lab.hosts() if "vault" in topo.host_view(h).listens)
    view = topo.host_view(vault)
    ep = view.listens["vault"]
    return vault, f"https://{ep.address}:{ep.port}"


def _approle_client(topo) -> str:
    vault, _ = _vault(topo)
    clients = [c for c, _ in topo.host_view(vault).clients.get("vault", ())]
    return next(c for c in clients if c in lab.hosts() and "bot" in topo.host_view(c).roles)


def _lab_secrets() -> dict:
    """The ansible-vault file's values, decrypted here with the lab's own password (as Ansible does)."""
    from ansible.parsing.vault import VaultLib, VaultSecret
    password = (lab.ROOT / ".secrets" / "lab" / "vault-pass").read_bytes().strip()
    text = (lab.ROOT / "inventory" / "lab" / "group_vars" / "all" / "secrets.yml").read_bytes()
    return yaml.safe_load(VaultLib([("lab", VaultSecret(password))]).decrypt(text))


def test_bot_approle_reads_its_secret_and_nothing_else(topo):
    client = _approle_client(topo)
    _, url = _vault(topo)
    script = f"URL = {url!r}\nCA = {lab.ca_file(topo.name)!r}\nCREDS = {CREDSTORE!r}\n{APPROLE}"
    proc = lab.ssh(client, "python3 -", stdin=script)
    assert proc.returncode == 0, proc.stderr[-500:]
    got = json.loads(proc.stdout)
    print(f"\n{client}: AppRole {got}")
    assert got["login"] == 200 and got["own"] == 200
    want = _lab_secrets()
    digest = hashlib.sha256(want["secret_lab_exchange_api_secret"].encode()).hexdigest()
    assert got["own_digest"]["api_secret"] == digest
    assert got["policies"] == ["default", "rampart-bot"]
    assert got["other"] == 403 and got["write_own"] == 403 and got["list"] == 403 and got["policy_write"] == 403


def test_canary_secret_appears_nowhere(topo):
    canary = _lab_secrets()["secret_lab_exchange_api_secret"]
    assert len(canary) >= 16
    # Positive control: a decoy planted in a journal line and in a world-readable file on one host must be
    # found, or the search proves nothing.
    decoy = "rampart-decoy-" + secrets.token_hex(12)
    planted = lab.hosts()[0]
    lab.ssh(planted, f"cat > {DECOY_FILE} && chmod 0644 {DECOY_FILE} && logger -t rampart-test < {DECOY_FILE}",
            stdin=decoy + "\n")
    leaks, decoy_seen = [], []
    try:
        for host in lab.hosts():
            proc = lab.ssh(host, BOOTSTRAP, stdin=json.dumps([canary, decoy]) + "\n" + SEARCH, timeout=300)
            assert proc.returncode == 0, f"{host}: {proc.stderr[-400:]}"
            hits = json.loads(proc.stdout)
            leaks += [f"{host}: {w}" for w in hits.get("0", [])]
            decoy_seen += [f"{host}: {w}" for w in hits.get("1", [])]
    finally:
        lab.ssh(planted, f"rm -f {DECOY_FILE}")
    print(f"\ncanary: searched {len(lab.hosts())} hosts; decoy found at {decoy_seen}; canary found at {leaks}")
    assert any("journal" in w for w in decoy_seen) and any(DECOY_FILE in w for w in decoy_seen), \
        "the search did not find the planted decoy: it proves nothing"
    assert not leaks, "the canary secret leaked:\n" + "\n".join(leaks)


def test_ansible_output_never_shows_the_canary(topo):
    """A converge of the secret-handling plays, verbose, prints no secret value."""
    canary = _lab_secrets()["secret_lab_exchange_api_secret"]
    proc = lab.playbook("-v", "playbooks/secrets-server.yml", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert canary not in proc.stdout and canary not in proc.stderr
    print(f"\nansible output: {len(proc.stdout)} characters of verbose output, canary absent")


def test_no_agent_keeps_the_lab_operators_keys_after_the_playbooks():
    """The converges (and this file's playbooks) decrypted Vault shares and root tokens with the lab operators'
    private keys on the controller. gpg starts an agent for that keyring; each decryption must stop it, so no
    process outlives the run holding those keys."""
    home = str(lab.ROOT / ".secrets" / "lab" / "operators" / "gnupg")
    ps = lab.run(["ps", "-eo", "pid,args"])
    agents = [line.strip() for line in ps.stdout.splitlines() if "gpg-agent" in line and home in line]
    assert not agents, f"gpg-agent still running for {home}: {agents}"
