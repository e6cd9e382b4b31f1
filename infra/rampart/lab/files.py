"""The lab's file contract: what `lab up` leaves on the controller and who reads it.

The lab writes these; the CLI, the test suites and ``inventory/lab/group_vars/all/connection.yml`` read them.
Every path is relative to the repository root, so a clean clone and CI agree.
"""

from __future__ import annotations

import json
from pathlib import Path

LAB_DIR = ".lab"  # controller-side artifacts (0700, git-ignored): keys, ssh config, known_hosts, state
SSH_CONFIG = f"{LAB_DIR}/ssh_config"  # `ssh -F .lab/ssh_config <host>`; the lab inventory points Ansible at it
STATE = f"{LAB_DIR}/state.json"  # {"topology": path, "hosts": {name: access address}}
SSH_DIR = f"{LAB_DIR}/ssh"  # the controller's key, known_hosts
OPS_USER = "ops"  # the automation user baked into the base image (NOPASSWD sudo until hardening narrows it)
ALERTS = "alert-receiver/alerts.jsonl"  # under RUN_DIR: every notification the lab's receiver got
RUN_DIR = Path("/var/lib/rampart-lab")  # overlays, pids, logs, apt-cacher-ng state
CACHE_DIR = Path("/var/cache/rampart")  # debootstrap base and package cache: survive `lab down`
OWNER = "owner"  # under RUN_DIR: the checkout whose keys and secrets the running lab's hosts were built with


def read_state(repo: Path) -> dict | None:
    """The running lab's state, or None when no lab is up."""
    try:
        return json.loads((repo / STATE).read_text())
    except (OSError, ValueError):
        return None


def write_state(repo: Path, topology: str, hosts: dict[str, str]) -> None:
    (repo / STATE).write_text(json.dumps({"topology": topology, "hosts": hosts}, indent=2) + "\n")
