"""Lab benchmark: time from nothing (base image cached) to SSH-ready, first converge, no-op reconverge,
and `ansible all -m ping` measured in the same run as the baseline. Prints figures; asserts nothing."""

from __future__ import annotations

import subprocess
import sys
import time

from rampart.cli import repo_root, topology_path
from rampart.lab import Lab
from rampart.topology import load


def timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=repo_root(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: `{' '.join(cmd)}` failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return time.monotonic() - t0


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
    playbook = [str(bin_ / "ansible-playbook"), "-i", f"inventory/{env}", "playbooks/site.yml"]
    first = timed(playbook)
    noop = timed(playbook)
    ping = timed([str(bin_ / "ansible"), "-i", f"inventory/{env}", "all", "-m", "ansible.builtin.ping"])
    lab.down()
    rows = [
        ("hosts", f"{len(ready)}", ""),
        ("lab up → all SSH-ready (base cached)", f"{up:.1f} s", "target ≤ 15 s"),
        ("slowest host SSH-ready", f"{max(ready.values()):.1f} s", ""),
        ("first converge (site.yml)", f"{first:.1f} s", "target ≤ 180 s"),
        ("no-op reconverge", f"{noop:.1f} s", "target ≤ 30 s"),
        ("baseline: ansible all -m ping", f"{ping:.1f} s", ""),
        ("no-op reconverge / ping baseline", f"{noop / ping:.1f}×", "target ≤ 2×"),
    ]
    print("\nlab benchmark")
    for name, value, note in rows:
        print(f"  {name:40} {value:>10}  {note}")


if __name__ == "__main__":
    main(*sys.argv[1:])
