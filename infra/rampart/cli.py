"""`rampart`: what no standard tool does — the local lab, topology checks and reports.

Errors the operator can fix are printed as one line naming the file, key or command at fault (exit 2);
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rampart import drills, report
from rampart.topology import TopologyError, load


def repo_root() -> Path:
    return Path(os.environ.get("RAMPART_ROOT", Path(__file__).resolve().parents[2]))


def topology_path(env: str) -> Path:
    return repo_root() / "inventory" / env / "topology.yml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rampart", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="lab", help="environment under inventory/ (default: lab)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    topo = sub.add_parser("topology", help="check and explain the topology")
    topo.add_argument("what", choices=["check", "plan", "matrix", "rules"])
    lab = sub.add_parser("lab", help="the local lab of systemd-nspawn hosts")
    lab.add_argument("what", choices=["up", "down", "status", "summary"])
    drills.add_parser(sub)
    args = parser.parse_args(argv)
    if args.cmd == "drill":
        return drills.main(args, repo_root())

    from rampart.lab import LabError  # imported here so topology commands work on any machine

    try:
        if args.cmd == "lab" and args.what == "down":
            return _lab_down(args.env)
        t = load(topology_path(args.env))
        if args.cmd == "topology":
            print({"check": lambda: f"{t.source}: ok ({len(t.zones)} zones, {len(t.hosts)} hosts, "
                   f"{len(t.services)} services, {len(t.flows)} flows)",
                   "plan": lambda: report.address_plan(t),
                   "matrix": lambda: report.matrix_table(t),
                   "rules": lambda: report.rules_table(t)}[args.what]())
            return 0
        from rampart.lab import Lab

        lab_ = Lab(t, repo_root())
        if args.what == "up":
            lab_.up()
        elif args.what == "status":
            for host, addr, alive in lab_.status():
                print(f"{host:10} {addr:15} {'running' if alive else 'stopped'}")
        elif args.what == "summary":
            print(report.lab_summary(t, lab_))
        return 0
    except (TopologyError, LabError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: `make lab-down` removes whatever was half-built", file=sys.stderr)
        return 130


def _lab_down(env: str) -> int:
    """Tear down from the lab's own state and names: no topology needed (a broken one included)."""
    from rampart.lab import down

    down(repo_root())
    return 0


if __name__ == "__main__":
    sys.exit(main())
