"""Access to the running lab from test suites: its state, topology and SSH (testinfra or plain ssh)."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import testinfra
from rampart.lab import files
from rampart.topology import Topology, load

ROOT = Path(__file__).resolve().parents[2]
SSH_CONFIG = ROOT / files.SSH_CONFIG


def ca_file(env: str) -> str:
    """The platform CA certificate as every lab host trusts it (roles/platform_ca)."""
    return f"/usr/local/share/ca-certificates/rampart-{env}-ca.crt"


def running() -> bool:
    return files.read_state(ROOT) is not None


@cache
def topology() -> Topology:
    return load(files.read_state(ROOT)["topology"])


def hosts() -> list[str]:
    return sorted(files.read_state(ROOT)["hosts"])


@cache
def remote(name: str):
    """A testinfra host over the lab's SSH config, with sudo."""
    return testinfra.get_host(f"ssh://{name}", ssh_config=str(SSH_CONFIG), sudo=True)


def run(cmd: list[str], timeout: float = 60, stdin: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run a local command (ssh, ansible-playbook) from a test, captured, with its own stdin: `stdin` or /dev/null.

    Never the test runner's stdin: an ssh handed a shared descriptor makes it non-blocking (the mux master does so
    and restores it only after the client has exited), and the next ansible-playbook refuses to start on it.
    """
    feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **feed, **kwargs)


def ssh(name: str, command: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a command on a lab host as root (via sudo) and return the completed process."""
    return run(["ssh", "-F", str(SSH_CONFIG), name, f"sudo sh -c {_quote(command)}"], timeout=timeout, stdin=stdin)


def playbook(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """ansible-playbook on the lab (the lab's ansible-vault secrets), from the repository root."""
    return run([str(ROOT / ".venv/bin/ansible-playbook"), "--vault-id", "lab@scripts/vault-pass-client.py", *args],
               timeout=timeout, cwd=ROOT)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"
