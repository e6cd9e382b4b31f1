"""Benchmarks; they print figures and assert nothing.

`python -m rampart.bench [ENV]`: the lab, from nothing (base image cached) to SSH-ready, first converge,
no-op reconverge, and `ansible all -m ping` measured in the same run as the baseline. Next to the no-op: the
CPU it cost the controller and the lab's hosts, and what this machine charges for one fork of a process the
controller's size (Ansible forks a worker per task per host, so that figure moves the no-op from day to day).
`python -m rampart.bench topology [HOSTS]`: loading and validating a generated topology of HOSTS hosts
(default 1000) from a file, to show that validation stays linear."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rampart.cli import repo_root, topology_path
from rampart.lab import CGROUP, CGROUP_V2, Lab
from rampart.topology import load


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=repo_root(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: `{' '.join(cmd)}` failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return time.monotonic() - t0, proc.stdout


def children_cpu() -> float:
    """CPU seconds of every finished child process (and their own children): the controller's side."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def lab_cpu() -> float | None:
    """CPU seconds used so far by the lab's hosts (their cgroup v2 tree), None where it is absent."""
    stat = CGROUP_V2 / CGROUP / "cpu.stat"
    if not stat.is_file():
        return None
    fields = dict(line.split() for line in stat.read_text().splitlines())
    return int(fields["usage_usec"]) / 1e6


FORK_REFERENCE_MB = 80  # the no-op controller's resident size (ansible-playbook measured at 75-83 MB)


def fork_cost(megabytes: float, rounds: int = 40) -> float:
    """Milliseconds for fork + exit + wait of a process holding this much touched memory."""
    ballast = bytearray(int(megabytes * 2**20))
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    t0 = time.perf_counter()
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return (time.perf_counter() - t0) / rounds * 1e3


def tasks_per_host(recap: str) -> dict[str, int]:
    """Tasks each host ran (ok + changed + skipped... as Ansible counts them) from a PLAY RECAP."""
    out = {}
    for line in recap.splitlines():
        m = re.match(r"^(\S+)\s+: ok=(\d+)\s+changed=\d+\s+unreachable=\d+\s+failed=\d+\s+skipped=(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2)) + int(m.group(3))
    return out


def main(env: str = "lab") -> None:
    root = repo_root()
    lab = Lab(load(topology_path(env)), root)
    lab.preflight()
    lab.down()
    lab.ensure_base()
    t0 = time.monotonic()
    ready = lab.up()
    up = time.monotonic() - t0
    bin_ = root / ".venv" / "bin"
    timed([str(bin_ / "python"), "scripts/bootstrap-secrets.py", "--env", env])
    # The converge and the ping read the same inventory, and so the same vault (the environment's secrets).
    inventory = ["-i", f"inventory/{env}", "--vault-id", f"{env}@scripts/vault-pass-client.py"]
    playbook = [str(bin_ / "ansible-playbook"), *inventory, "playbooks/site.yml"]
    first, _ = timed(playbook)
    cpu0, lab0 = children_cpu(), lab_cpu()
    noop, recap = timed(playbook)
    controller_cpu, lab1 = children_cpu() - cpu0, lab_cpu()
    ping, _ = timed([str(bin_ / "ansible"), *inventory, "all", "-m", "ansible.builtin.ping"])
    lab.down()
    tasks = tasks_per_host(recap)
    changed = sum(int(n) for n in re.findall(r"^\S+\s+: ok=\d+\s+changed=(\d+)", recap, re.M))
    host_tasks = sum(tasks.values())
    lab_share = f"{lab1 - lab0:.1f} s" if lab0 is not None and lab1 is not None else "n/a"
    rows = [
        ("hosts", f"{len(ready)}", ""),
        ("lab up → all SSH-ready (base cached)", f"{up:.1f} s", "target ≤ 15 s"),
        ("slowest host SSH-ready", f"{max(ready.values()):.1f} s", ""),
        ("first converge (site.yml)", f"{first:.1f} s", "target ≤ 180 s"),
        ("no-op reconverge", f"{noop:.1f} s", "target ≤ 45 s with the service roles (issue 8)"),
        ("baseline: ansible all -m ping", f"{ping:.1f} s", ""),
        ("no-op reconverge / ping baseline", f"{noop / ping:.1f}×", "target ≤ 2×"),
        ("tasks changed by the no-op", f"{changed}", "must be 0 (idempotence)"),
        ("tasks per host in the no-op", ", ".join(f"{h} {n}" for h, n in sorted(tasks.items())), ""),
        ("host-tasks in the no-op", f"{host_tasks}", "one forked controller worker each"),
        ("no-op CPU: controller / lab hosts", f"{controller_cpu:.1f} s / {lab_share}", "2 CPUs shared by both"),
        ("controller CPU per host-task", f"{controller_cpu / max(host_tasks, 1) * 1e3:.0f} ms", ""),
        (f"this machine: fork+exit at {FORK_REFERENCE_MB} MB", f"{fork_cost(FORK_REFERENCE_MB):.1f} ms",
         "a process the no-op controller's size; the day-to-day variable"),
    ]
    print("\nlab benchmark")
    for name, value, note in rows:
        print(f"  {name:40} {value:>10}  {note}")


def synthetic_topology(hosts: int) -> dict:
    """A platform shaped like the lab, scaled out: ~70% bots, ~30% data hosts, and three hosts each of
    Vault, monitoring and backup (five of PostgreSQL). Its rules grow linearly with the host count."""
    spec: dict = {
        "name": "bench", "gateway": "gateway",
        "zones": {"internet": {"cidr": "10.200.0.0/24", "external": True, "simulated": True},
                  "mgmt": {"cidr": "10.210.0.0/16", "management": True},
                  "edge": {"cidr": "10.200.1.0/24"}, "vpn": {"cidr": "10.200.99.0/24", "vpn": True},
                  "trading": {"cidr": "10.201.0.0/16", "egress": True}, "data": {"cidr": "10.202.0.0/16"},
                  "secrets": {"cidr": "10.203.0.0/24"}, "monitoring": {"cidr": "10.204.0.0/24"},
                  "backup": {"cidr": "10.205.0.0/22"}},
        "hosts": {"controller": {"zone": "mgmt", "also": ["internet"], "roles": ["controller"]},
                  "gateway": {"zone": "edge"}, "exchange": {"zone": "internet"}, "admin": {"zone": "internet"},
                  **{f"vault{i}": {"zone": "secrets"} for i in range(3)},
                  **{f"mon{i}": {"zone": "monitoring"} for i in range(3)},
                  **{f"backup{i}": {"zone": "backup"} for i in range(3)},
                  **{f"db{i}": {"zone": "data"} for i in range(5)}},
        "services": {"ssh": {"port": 22, "plane": "mgmt", "hosts": "all"},
                     "node_exporter": {"port": 9100, "plane": "mgmt", "hosts": "platform", "scrape": True},
                     "apt_proxy": {"port": 3142, "plane": "mgmt", "hosts": ["controller"]},
                     "wireguard": {"port": 51820, "proto": "udp", "hosts": ["gateway"]},
                     "exchange_api": {"port": 9443, "hosts": ["exchange"]},
                     "postgres": {"port": 5432, "hosts": [f"db{i}" for i in range(5)]},
                     "vault": {"port": 8200, "hosts": "secrets"}, "loki": {"port": 3100, "hosts": "monitoring"},
                     "backup_sftp": {"port": 2222, "hosts": "backup"}},
        "flows": [{"from": "mgmt", "to": "ssh", "why": "ansible"}, {"from": "vpn", "to": "ssh", "why": "operators"},
                  {"from": "platform", "to": ["apt_proxy", "loki"], "why": "packages and logs"},
                  {"from": "any", "to": "wireguard", "why": "operators dial in from anywhere"},
                  {"from": "trading", "to": ["exchange_api", "postgres", "vault"], "why": "the bots trade"},
                  {"from": "monitoring", "to": "node_exporter", "why": "metrics"},
                  {"from": ["data", "secrets", "monitoring"], "to": "backup_sftp", "why": "backups"}],
    }
    rest = hosts - len(spec["hosts"])
    for i in range(max(rest, 0)):
        zone = "trading" if i % 10 < 7 else "data"
        spec["hosts"][f"{zone[:4]}{i:05d}"] = {"zone": zone}
    return spec


def topology_bench(hosts: int = 1000) -> None:
    from rampart.topology import load

    spec = synthetic_topology(hosts)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "topology.yml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        size = path.stat().st_size
        t0, c0 = time.perf_counter(), time.process_time()
        topo = load(path)
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
    print("\ntopology benchmark")
    rows = [("hosts / rules", f"{len(topo.hosts)} / {len(topo.rules())}", ""),
            ("file size", f"{size / 1024:.0f} KiB", ""),
            ("load + validate (incl. rules), wall", f"{took:.2f} s", "target ≤ 2 s at 1000 hosts"),
            ("load + validate (incl. rules), CPU", f"{cpu:.2f} s", "(wall minus waiting for a shared core)")]
    for name, value, note in rows:
        print(f"  {name:40} {value:>14}  {note}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["topology"]:
        topology_bench(*map(int, sys.argv[2:3]))
    else:
        main(*sys.argv[1:])
