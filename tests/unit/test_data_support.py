"""Helpers for the data-zone tests (platform CA, PostgreSQL): run real playbooks against localhost with
connection=local, writing only under a temporary directory. No tests here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOK = BIN / "ansible-playbook"


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def doc(self) -> dict:
        start = self.out.find("{")
        return json.loads(self.out[start:]) if start >= 0 else {}

    def stats(self, host: str) -> dict:
        return self.doc.get("stats", {}).get(host, {})

    def changed(self, host: str) -> int:
        return self.stats(host).get("changed", -1)

    def changed_tasks(self, host: str) -> list[str]:
        names = []
        for play in self.doc.get("plays", []):
            for task in play["tasks"]:
                res = task["hosts"].get(host)
                if res and res.get("changed"):
                    names.append(task["task"]["name"])
        return names

    def failures(self) -> str:
        msgs = []
        for play in self.doc.get("plays", []):
            for task in play["tasks"]:
                for host, res in task["hosts"].items():
                    if res.get("failed"):
                        msgs.append(f"{host}: {task['task']['name']}: {res.get('msg')}")
        return "\n".join(msgs) or self.err[-2000:]


def inventory(tmp: Path, host: str = "db01", hostvars: dict | None = None, env: str = "test",
              filename: str = "inventory.yml") -> Path:
    """A one-host YAML inventory: the host is this machine (connection local), with a sample host view."""
    hv = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "rampart_host": sample_host_view(host),
    }
    hv.update(hostvars or {})
    data = {"all": {"vars": {"rampart_environment": env, "rampart_domain": f"{env}.rampart.internal"},
                    "hosts": {host: hv}}}
    path = tmp / filename
    path.write_text(yaml.safe_dump(data))
    return path


def sample_host_view(name: str = "db01", address: str = "127.0.0.1", port: int = 5432,
                     exporter_port: int = 9187, clients: list[str] | None = None) -> dict:
    """The shape HOSTVIEW.md documents, pointed at loopback so a real server can run here."""
    return {
        "name": name,
        "fqdn": f"{name}.test.rampart.internal",
        "zone": "data",
        "roles": ["postgres"],
        "platform": True,
        "addresses": {"data": address, "mgmt": "127.0.0.2"},
        "management_address": "127.0.0.2",
        "listens": {
            "postgres": {"address": address, "port": port, "proto": "tcp", "plane": "zone"},
            "postgres_exporter": {"address": "127.0.0.2", "port": exporter_port, "proto": "tcp", "plane": "mgmt"},
        },
        "clients": {
            "postgres": [{"source": f"c{i}", "address": a} for i, a in enumerate(clients or ["127.0.0.1"])],
            "postgres_exporter": [{"source": "mon01", "address": "127.0.0.3"}],
        },
    }


def run_playbook(playbook: Path | str, inv: Path, *args: str, env: dict | None = None) -> Run:
    """ansible-playbook with the project's ansible.cfg and roles, JSON output (so results are checkable)."""
    full_env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
                "ANSIBLE_NOCOLOR": "1", "ANSIBLE_DEPRECATION_WARNINGS": "0",
                "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                "PYTHONPATH": f"{ROOT / 'infra'}:{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    proc = subprocess.run([str(PLAYBOOK), "-i", str(inv), str(playbook), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=600)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def write_playbook(tmp: Path, name: str, plays: list[dict]) -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return path


def issue_playbook(tmp: Path, cert: Path, key: Path, owner: str, group: str, **extra) -> Path:
    """A play that issues a certificate for the host through the public entry point other roles use."""
    return write_playbook(tmp, "issue.yml", [{
        "name": "issue", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Issue", "ansible.builtin.include_role": {"name": "platform_ca", "tasks_from": "issue"},
                   "vars": {"platform_ca_cert_path": str(cert), "platform_ca_key_path": str(key),
                            "platform_ca_owner": owner, "platform_ca_group": group, **extra}}],
    }])


def ca_vars(tmp: Path) -> list[str]:
    """Extra vars that keep every CA file and trust anchor under tmp (nothing touches the system)."""
    return ["-e", json.dumps({"platform_ca_dir": str(tmp / "secrets" / "ca"),
                              "platform_ca_trust_path": str(tmp / "trust" / "ca.crt"),
                              "platform_ca_system_trust": False, "platform_ca_install_packages": False})]
