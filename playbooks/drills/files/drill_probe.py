#!/usr/bin/python3
"""Measurements the drills take on a host, run there by ansible.builtin.script (standard library only), so
timings are not blurred by SSH round trips. Every subcommand prints one JSON object on stdout.

  kill-wait UNIT URL TIMEOUT          kill -9 the unit's main process; time until URL answers 200 from a new one
  wait-ready URL TIMEOUT              time until URL answers 200
  wait-down URL TIMEOUT               time until URL stops answering 200
  burst URL TOKEN_FILE STEPS SECONDS  POST {"action": "step"} to the simulator's control endpoint STEPS times
  sim-state URL                       the simulator's public counters
  window DATABASE SCHEMA BEFORE AFTER SINCE_MS
                                      what the bot's database holds of the exchange's orders and trades between
                                      two sim-state readings (JSON), and how many are lost or duplicated
  verify-restore DATABASE SCRATCH     dump DATABASE in one snapshot through restic, restore it into SCRATCH,
                                      compare row counts and checksums of every table (run as root)
  latest TAG                          this host's newest snapshot with TAG in its backup repository
  restore-db DATABASE SNAPSHOT PATH   pg_restore the dump at PATH in SNAPSHOT into DATABASE (run as root)
  fetch-file SNAPSHOT PATH TARGET     write a file from the repository to TARGET (0600)
"""

# ruff: noqa: S608 - queries take a schema name checked by ident() and integers only
from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

CA = os.environ.get("DRILL_CA_FILE") or None


def http_status(url: str, timeout: float = 1.0) -> int:
    context = ssl.create_default_context(cafile=CA) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # noqa: S310 - drill URLs
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def main_pid(unit: str) -> int:
    out = subprocess.run(["systemctl", "show", "--property=MainPID", "--value", unit], capture_output=True,
                         text=True, check=True).stdout.strip()
    return int(out or 0)


def kill_wait(unit: str, url: str, timeout: float) -> dict:
    pid = main_pid(unit)
    if pid <= 0:
        return {"error": f"{unit} has no main process"}
    t0 = time.time()
    os.kill(pid, 9)
    saw_down, new_pid = False, 0
    while time.time() - t0 < timeout:
        new_pid = main_pid(unit)
        status = http_status(url, 0.5)
        saw_down = saw_down or status != 200
        if new_pid not in (0, pid) and status == 200:
            return {"killed_pid": pid, "new_pid": new_pid, "started": t0, "recovery_s": time.time() - t0,
                    "saw_down": saw_down}
        time.sleep(0.05)
    return {"killed_pid": pid, "new_pid": new_pid, "started": t0, "recovery_s": None, "saw_down": saw_down,
            "error": f"not ready within {timeout:.0f} s"}


def wait_for(url: str, timeout: float, ready: bool) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (http_status(url, 0.5) == 200) == ready:
            return {"at": time.time(), "waited_s": time.time() - t0}
        time.sleep(0.1)
    return {"at": None, "waited_s": None, "error": f"{url} not {'ready' if ready else 'down'} within {timeout:.0f} s"}


def burst(url: str, token_file: str, steps: int, seconds: float) -> dict:
    with open(token_file) as handle:
        token = handle.read().strip()
    context = ssl.create_default_context(cafile=CA) if url.startswith("https") else None
    ok = errors = 0
    interval = seconds / max(steps, 1)
    for _ in range(steps):
        req = urllib.request.Request(url, data=b'{"action": "step"}', method="POST",  # noqa: S310
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=2, context=context) as resp:  # noqa: S310
                ok += resp.status == 200
        except (OSError, ValueError):
            errors += 1
        time.sleep(interval)
    return {"steps": ok, "errors": errors}


def sim_state(url: str) -> dict:
    context = ssl.create_default_context(cafile=CA) if url.startswith("https") else None
    with urllib.request.urlopen(url, timeout=5, context=context) as resp:  # noqa: S310
        return json.loads(resp.read())


def psql(database: str, sql: str) -> str:
    proc = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d",
                           database, "-c", sql], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"psql -d {database} -c {sql[:80]!r}: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip()


def ident(name: str) -> str:
    """A schema name as the queries quote it; anything but a plain identifier is refused."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"schema {name!r} is not a plain identifier")
    return f'"{name}"'


def window_counts(database: str, schema: str, before: dict, after: dict, since_ms: int) -> dict:
    """The bot's records of what the exchange did between two of its /sim/state readings, and what is missing.

    The simulator gives order and trade ids in sequence (and never reuses one, restarts included), so the orders
    and trades between the readings are the id ranges [before, after) of next_order_id and next_trade_id. Rows
    older than since_ms are left out as well."""
    schema = ident(schema).strip('"')
    a0, a1 = int(before["next_order_id"]), int(after["next_order_id"])
    t0, t1 = int(before["next_trade_id"]), int(after["next_trade_id"])
    row = psql(database, f'SELECT count(DISTINCT exchange_order_id), count(exchange_order_id) FROM "{schema}".orders '
                         f"WHERE exchange_order_id >= {a0} AND exchange_order_id < {a1} "
                         f"AND created_ms >= {int(since_ms)}").split("|")
    fills = psql(database, f'SELECT count(*) FROM "{schema}".fills WHERE trade_id >= {t0} AND trade_id < {t1} '
                           f"AND time_ms >= {int(since_ms)}")
    orders, order_rows, fills = int(row[0]), int(row[1]), int(fills)
    return {"exchange_orders": a1 - a0, "exchange_trades": t1 - t0, "orders": orders, "fills": fills,
            "orders_lost": (a1 - a0) - orders, "orders_duplicated": order_rows - orders,
            "fills_lost": (t1 - t0) - fills}


TABLES_SQL = ("SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
              "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")


class Session:
    """One psql session kept open, so a snapshot can be exported and the checksums read inside it."""

    MARK = "__drill_end__"

    def __init__(self, database: str) -> None:
        self.proc = subprocess.Popen(["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-q", "-v",
                                      "ON_ERROR_STOP=1", "-d", database], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def query(self, sql: str) -> list[str]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(sql.rstrip(";") + f";\n\\echo {self.MARK}\n")
        self.proc.stdin.flush()
        lines = []
        for line in self.proc.stdout:
            if line.rstrip("\n") == self.MARK:
                return lines
            lines.append(line.rstrip("\n"))
        raise RuntimeError(f"psql ended during: {sql[:80]}")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


CHECKSUM_SQL = "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM :table AS t"


def checksums(query) -> dict:
    """Row count and an order-independent checksum per table (md5 of the sorted row texts)."""
    out = {}
    for table in query(TABLES_SQL):
        # table names come from pg_tables through quote_ident
        row = query(CHECKSUM_SQL.replace(":table", table))[0].split("|")
        out[table] = {"rows": int(row[0]), "md5": row[1]}
    return out


def restic_base() -> list[str]:
    with open(os.environ.get("DRILL_BACKUP_CONFIG", "/etc/rampart-backup/config.json")) as handle:
        cfg = json.load(handle)
    cmd = ["restic", "--repo", cfg["repository"], "--password-file", cfg["password_file"], "--no-cache"]
    if cfg.get("sftp_command"):
        cmd += ["--option", f"sftp.command={cfg['sftp_command']}"]
    return cmd


def verify_restore(database: str, scratch: str) -> dict:
    base = restic_base()
    session = Session(database)
    session.query("BEGIN ISOLATION LEVEL REPEATABLE READ")
    snapshot = session.query("SELECT pg_export_snapshot()")[0]
    source = checksums(session.query)
    t0 = time.time()
    dump = subprocess.Popen(["runuser", "-u", "postgres", "--", "pg_dump", "-Fc", f"--snapshot={snapshot}",
                             database], stdout=subprocess.PIPE)
    backup = subprocess.run([*base, "backup", "--json", "--host", os.uname().nodename, "--tag", "drill",
                             "--stdin", "--stdin-filename", f"drill/{database}.dump"], stdin=dump.stdout,
                            capture_output=True, text=True, check=False)
    dump.wait()
    session.query("COMMIT")
    session.close()
    backup_s = time.time() - t0
    if dump.returncode != 0 or backup.returncode != 0:
        return {"error": f"backup failed: pg_dump {dump.returncode}, restic {backup.returncode}: "
                         f"{backup.stderr.strip()[-300:]}", "backup_s": backup_s}
    snapshot_id = json.loads(backup.stdout.strip().splitlines()[-1])["snapshot_id"]
    t1 = time.time()
    subprocess.run(["runuser", "-u", "postgres", "--", "dropdb", "--if-exists", scratch], check=True)
    subprocess.run(["runuser", "-u", "postgres", "--", "createdb", scratch], check=True)
    fetch = subprocess.Popen([*base, "dump", snapshot_id, f"/drill/{database}.dump"], stdout=subprocess.PIPE)
    restore = subprocess.run(["runuser", "-u", "postgres", "--", "pg_restore", "--no-owner", "--exit-on-error",
                              "-d", scratch], stdin=fetch.stdout, capture_output=True, text=True, check=False)
    fetch.wait()
    if fetch.returncode != 0 or restore.returncode != 0:
        return {"error": f"restore failed: restic {fetch.returncode}, pg_restore {restore.returncode}: "
                         f"{restore.stderr.strip()[-300:]}", "backup_s": backup_s, "snapshot": snapshot_id}
    restored = checksums(lambda sql: psql(scratch, sql).splitlines())
    restore_s = time.time() - t1
    mismatched = sorted(t for t in source if source[t] != restored.get(t))
    extra = sorted(set(restored) - set(source))
    rows_lost = sum(max(0, source[t]["rows"] - restored.get(t, {"rows": 0})["rows"]) for t in source)
    return {"snapshot": snapshot_id, "backup_s": backup_s, "restore_s": restore_s, "tables": len(source),
            "rows": sum(v["rows"] for v in source.values()), "mismatched_tables": mismatched,
            "unexpected_tables": extra, "rows_lost": rows_lost,
            "orders": next((v["rows"] for t, v in source.items() if t.rpartition(".")[2] == "orders"), None)}


def latest(tag: str) -> dict:
    result = subprocess.run([*restic_base(), "snapshots", "--json", "--tag", tag, "--latest", "1",
                             "--host", os.uname().nodename], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {"error": f"restic snapshots failed: {result.stderr.strip()[-300:]}"}
    snaps = json.loads(result.stdout or "[]") or []
    if not snaps:
        return {"error": f"no snapshot tagged {tag} for this host"}
    return {"id": snaps[-1]["id"], "time": snaps[-1]["time"], "paths": snaps[-1]["paths"]}


def restore_db(database: str, snapshot: str, path: str) -> dict:
    """pg_restore a dump from the repository into DATABASE (objects replaced), streamed."""
    t0 = time.time()
    fetch = subprocess.Popen([*restic_base(), "dump", snapshot, path], stdout=subprocess.PIPE)
    restore = subprocess.run(["runuser", "-u", "postgres", "--", "pg_restore", "--clean", "--if-exists",
                              "--exit-on-error", "-d", database], stdin=fetch.stdout, capture_output=True,
                             text=True, check=False)
    fetch.wait()
    if fetch.returncode != 0 or restore.returncode != 0:
        return {"error": f"restore failed: restic {fetch.returncode}, pg_restore {restore.returncode}: "
                         f"{restore.stderr.strip()[-300:]}"}
    return {"restore_s": time.time() - t0}


def fetch_file(snapshot: str, path: str, target: str) -> dict:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        result = subprocess.run([*restic_base(), "dump", snapshot, path], stdout=out, stderr=subprocess.PIPE,
                                check=False)
    if result.returncode != 0:
        return {"error": f"restic dump failed: {result.stderr.decode(errors='replace').strip()[-300:]}"}
    return {"bytes": os.path.getsize(target)}


def run(argv: list[str]) -> dict:
    cmd, args = argv[0], argv[1:]
    if cmd == "kill-wait":
        out = kill_wait(args[0], args[1], float(args[2]))
    elif cmd == "wait-ready":
        out = wait_for(args[0], float(args[1]), True)
    elif cmd == "wait-down":
        out = wait_for(args[0], float(args[1]), False)
    elif cmd == "burst":
        out = burst(args[0], args[1], int(args[2]), float(args[3]))
    elif cmd == "sim-state":
        out = sim_state(args[0])
    elif cmd == "window":
        out = window_counts(args[0], args[1], json.loads(args[2]), json.loads(args[3]), int(float(args[4])))
    elif cmd == "verify-restore":
        out = verify_restore(args[0], args[1])
    elif cmd == "latest":
        out = latest(args[0])
    elif cmd == "restore-db":
        out = restore_db(args[0], args[1], args[2])
    elif cmd == "fetch-file":
        out = fetch_file(args[0], args[1], args[2])
    else:
        out = {"error": f"unknown probe {cmd}"}
    return out


def main(argv: list[str]) -> int:
    """Print exactly one JSON line. ansible.builtin.script runs us on a tty, where anything a child writes to
    stderr (psql's NOTICEs, runuser's cwd complaints) would land in stdout before the JSON; so the children's
    stderr goes to a file whose tail joins the error, and the work runs from / (a directory every user may enter)."""
    os.chdir("/")
    with tempfile.TemporaryFile() as errors:
        saved = os.dup(2)
        os.dup2(errors.fileno(), 2)
        try:
            out = run(argv) if argv else {"error": "no probe named"}
        except Exception as exc:  # noqa: BLE001 - the drill reads the reason from the JSON, never a traceback
            out = {"error": f"{argv[0]}: {type(exc).__name__}: {exc}"}
        finally:
            os.dup2(saved, 2)
        if "error" in out:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip()[-400:]
            if tail:
                out["stderr"] = tail
    sys.stdout.write(json.dumps(out) + "\n")
    return 0 if "error" not in out else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
