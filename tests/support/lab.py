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


def ssh(name: str, command: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a command on a lab host as root (via sudo) and return the completed process."""
    return subprocess.run(["ssh", "-F", str(SSH_CONFIG), name, f"sudo sh -c {_quote(command)}"],
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"
