"""`rampart drill NAME`: run one recovery drill and append what it measured to build/drills.json and .md.

A drill is a playbook in playbooks/drills/ that checks its prerequisites, injects its fault, waits for recovery,
asserts the outcome, measures, cleans up, and writes its measurements as JSON to the file the runner names
(`-e drill_result_file=...`). The runner adds the commit, judges the run against the drill's targets and appends
the record. A drill whose prerequisites are absent is refused (exit 2) and recorded nowhere; a failed drill
(exit 1) is recorded, with the state it left and how to finish by hand.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Drill:
    key: str
    slug: str
    title: str
    fault: str
    playbook: str
    target_s: float | None  # recovery time target (None: measured and reported, no target)
    alert: str | None = None  # the alert that should detect the fault, where one exists
    accepted_loss: tuple[str, ...] = ()  # data-lost keys that are reported but do not fail the drill
    extra_targets: dict[str, float] = field(default_factory=dict)  # measured key -> max seconds


DRILLS: dict[str, Drill] = {d.key: d for d in (
    Drill("a", "bot-kill", "Bot killed during an order burst", "kill -9 of the bot's main process during an order "
          "burst", "a_bot_kill.yml", 5.0, alert="BotDown"),
    Drill("b", "bot-reboot", "Bot host rebooted", "reboot of the trading host", "b_bot_reboot.yml", 30.0,
          alert="HostDown"),
    Drill("c", "db-restore", "Database destroyed and restored from backup", "PostgreSQL's data directory "
          "destroyed on the database host", "c_db_restore.yml", 180.0, alert="PostgresDown"),
    Drill("d", "restore-verify", "Backup restored into a scratch target and verified", "none (a restore test)",
          "d_restore_verify.yml", 60.0, extra_targets={"backup_s": 30.0}),
    Drill("e", "monitoring-rebuild", "Monitoring host lost and rebuilt from code", "Prometheus/Alertmanager state "
          "and configuration wiped on the monitoring host", "e_monitoring_rebuild.yml", None,
          accepted_loss=("prometheus_samples",)),
    Drill("f", "vault-restore", "Vault restored from a raft snapshot", "Vault's storage wiped on the secrets host",
          "f_vault_restore.yml", None, alert="VaultSealed", accepted_loss=("vault_writes_after_snapshot",)),
)}


class DrillError(Exception):
    """Refusal or bad input: one line for the operator."""


def find(name: str) -> Drill:
    for drill in DRILLS.values():
        if name in (drill.key, drill.slug):
            return drill
    raise DrillError(f"no drill {name!r}: choose one of " +
                     ", ".join(f"{d.key} ({d.slug})" for d in DRILLS.values()))


def verdict(drill: Drill, measured: dict[str, Any]) -> tuple[str, list[str]]:
    """pass/fail of one run against the drill's targets, with every reason it failed."""
    status = measured.get("status")
    if status == "refused":
        return "refused", [str(measured.get("reason", "prerequisite missing"))]
    reasons = []
    if status != "ok":
        reasons.append(str(measured.get("reason") or "the drill did not complete"))
    recovery = measured.get("recovery_s")
    if drill.target_s is not None:
        if recovery is None:
            reasons.append("no recovery measured")
        elif float(recovery) > drill.target_s:
            reasons.append(f"recovery {float(recovery):.1f} s > target {drill.target_s:.0f} s")
    for key, limit in drill.extra_targets.items():
        value = measured.get(key)
        if value is None:
            reasons.append(f"{key} not measured")
        elif float(value) > limit:
            reasons.append(f"{key} {float(value):.1f} s > target {limit:.0f} s")
    for key, lost in sorted((measured.get("data_lost") or {}).items()):
        if lost is None:
            if key not in drill.accepted_loss:
                reasons.append(f"{key} lost: not measured")
        elif lost and key not in drill.accepted_loss:
            reasons.append(f"{key} lost: {lost}")
    return ("fail" if reasons else "pass"), reasons


def commit(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def record(drill: Drill, measured: dict[str, Any], env: str, sha: str) -> dict[str, Any]:
    result, reasons = verdict(drill, measured)
    return {
        "drill": drill.key, "name": drill.slug, "title": drill.title, "fault": drill.fault, "env": env,
        "started": measured.get("started"), "detection_s": measured.get("detection_s"),
        "alert": measured.get("alert") or drill.alert, "recovery_s": measured.get("recovery_s"),
        "target_s": drill.target_s, "data_lost": measured.get("data_lost") or {},
        "measured": {k: v for k, v in measured.items() if k not in {
            "status", "reason", "started", "detection_s", "alert", "recovery_s", "data_lost", "state_left",
            "how_to_finish"}},
        "result": result, "reasons": reasons, "state_left": measured.get("state_left"),
        "how_to_finish": measured.get("how_to_finish"), "commit": sha,
    }


def _fmt_s(value: Any) -> str:
    return "—" if value is None else f"{float(value):.1f} s"


def _fmt_started(value: Any) -> str:
    if value is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(value)))


def markdown(records: list[dict[str, Any]]) -> str:
    lines = ["# Recovery drills", "",
             "Appended by `rampart drill NAME` (infra/rampart/drills.py); the data is build/drills.json.", "",
             "| drill | fault | started | detection | recovery | target | data lost | result | commit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lost = ", ".join(f"{k}={'?' if v is None else v}" for k, v in sorted(r["data_lost"].items())) or "—"
        detection = _fmt_s(r["detection_s"]) + (f" ({r['alert']})" if r["detection_s"] is not None else "")
        result = r["result"].upper() + (": " + "; ".join(r["reasons"]) if r["reasons"] else "")
        cells = [f"{r['drill']} {r['name']}", r["fault"], _fmt_started(r["started"]), detection,
                 _fmt_s(r["recovery_s"]), _fmt_s(r["target_s"]), lost, result, r["commit"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    failed = [r for r in records if r["result"] == "fail" and r.get("state_left")]
    if failed:
        lines += ["", "## Left behind by failed runs", ""]
        lines += [f"- {r['drill']} {r['name']} ({_fmt_started(r['started'])}): {r['state_left']}. "
                  f"To finish: {r.get('how_to_finish') or 'see the drill playbook'}" for r in failed]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def load_records(build: Path) -> list[dict[str, Any]]:
    path = build / "drills.json"
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except ValueError as exc:
        raise DrillError(f"{path}: not valid JSON ({exc}); move it aside to start a new report") from None
    if not isinstance(records, list):
        raise DrillError(f"{path}: expected a JSON list of drill records")
    return records


def append(build: Path, entry: dict[str, Any]) -> None:
    records = load_records(build) + [entry]
    _write_atomic(build / "drills.json", json.dumps(records, indent=2) + "\n")
    _write_atomic(build / "drills.md", markdown(records))


def run(name: str, env: str, root: Path, extra_vars: list[str] | None = None,
        playbook_cmd: list[str] | None = None) -> int:
    drill = find(name)
    inventory = root / "inventory" / env
    playbook = root / "playbooks" / "drills" / drill.playbook
    if not inventory.is_dir():
        raise DrillError(f"no inventory {inventory}")
    if not playbook.is_file():
        raise DrillError(f"drill {drill.key} has no playbook {playbook}")
    cmd = playbook_cmd or [str(Path(sys.executable).with_name("ansible-playbook"))]
    with tempfile.TemporaryDirectory(prefix="rampart-drill-") as tmp:
        result_file = Path(tmp) / "result.json"
        args = [*cmd, "-i", str(inventory), str(playbook), "-e", f"drill_result_file={result_file}",
                "-e", f"drill_key={drill.key}"]
        if (inventory / "group_vars" / "all" / "secrets.yml").exists():  # the environment's ansible-vault secrets
            args += ["--vault-id", f"{env}@{root / 'scripts' / 'vault-pass-client.py'}"]
        for item in extra_vars or []:
            args += ["-e", item]
        print(f"== drill {drill.key} ({drill.slug}): {drill.title}", flush=True)
        started = time.time()
        # Non-interactive: its own stdin, so nothing it starts (ssh) can change the caller's terminal.
        proc = subprocess.run(args, check=False, cwd=root, stdin=subprocess.DEVNULL)
        if result_file.exists():
            try:
                measured = json.loads(result_file.read_text())
            except ValueError:
                measured = {"status": "failed", "reason": f"the playbook wrote an unreadable result ({result_file})"}
        else:
            measured = {"status": "failed", "started": started,
                        "reason": f"ansible-playbook exited {proc.returncode} before writing a result",
                        "state_left": "unknown: the playbook stopped before its cleanup reported",
                        "how_to_finish": f"read the play output above; re-run `rampart drill {drill.key}`"}
    if measured.get("status") == "refused":
        raise DrillError(str(measured.get("reason", f"drill {drill.key}: prerequisite missing")))
    if proc.returncode != 0 and measured.get("status") == "ok":
        measured = {**measured, "status": "failed", "reason": f"ansible-playbook exited {proc.returncode}"}
    entry = record(drill, measured, env, commit(root))
    append(root / "build", entry)
    print(f"drill {drill.key}: {entry['result'].upper()}"
          f" (recovery {_fmt_s(entry['recovery_s'])}, target {_fmt_s(entry['target_s'])})"
          + (": " + "; ".join(entry["reasons"]) if entry["reasons"] else "")
          + (f"\nstate left: {entry['state_left']}\nto finish: {entry['how_to_finish']}"
             if entry["result"] == "fail" and entry["state_left"] else ""))
    return 0 if entry["result"] == "pass" else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `rampart drill` subcommand (hooked into rampart.cli)."""
    p = sub.add_parser("drill", help="run a recovery drill and append to build/drills.{json,md}")
    p.add_argument("name", help="a..f or its name: " + ", ".join(d.slug for d in DRILLS.values()) + ", or all")
    p.add_argument("-e", "--extra-vars", action="append", default=[], help="passed to ansible-playbook")


def main(args: argparse.Namespace, root: Path) -> int:
    names = list(DRILLS) if args.name == "all" else [args.name]
    # One drill at a time per checkout: two would inject faults into each other's recovery (a database
    # destroyed while another drill counts its rows) and both results would be wrong.
    (root / "build").mkdir(parents=True, exist_ok=True)
    with open(root / "build" / ".drill.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("error: another drill is running in this checkout (build/.drill.lock); wait for it",
                  file=sys.stderr)
            return 2
        worst = 0
        for name in names:  # with `all`, a refused drill is reported and the others still run
            try:
                worst = max(worst, run(name, args.env, root, args.extra_vars))
            except DrillError as exc:
                print(f"error: {exc}", file=sys.stderr)
                worst = max(worst, 2)
        return worst


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m rampart.drills", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="lab")
    add_parser(parser.add_subparsers(dest="cmd", required=True))
    sys.exit(main(parser.parse_args(), Path(os.environ.get("RAMPART_ROOT", Path(__file__).resolve().parents[2]))))
