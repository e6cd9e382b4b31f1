"""Drill (d)'s core, for real here: a throwaway PostgreSQL 15 cluster holding 100k orders and their fills, the
drill probe's verify-restore (one exported snapshot for both the checksums and pg_dump, through restic, restored
into a scratch database, compared table by table), timed against the issue's targets (backup <= 30 s, verified
restore <= 60 s); and a restore that does not match is reported as such. Needs root and postgresql-15."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_backup_lib import RESTIC, ROOT, restic

PGBIN = Path("/usr/lib/postgresql/15/bin")
PROBE = ROOT / "playbooks/drills/files/drill_probe.py"
pytestmark = pytest.mark.skipif(not (PGBIN / "postgres").exists() or RESTIC is None or os.geteuid() != 0,
                                reason="needs root, postgresql-15 and restic")
ORDERS = 100_000


@pytest.fixture(scope="module")
def cluster():
    base = Path(tempfile.mkdtemp(prefix="rampart-drill-pg-"))
    base.chmod(0o755)
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    shutil.chown(base, "postgres", "postgres")
    shutil.chown(sock, "postgres", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, str(PGBIN / "initdb"), "-D", str(data), "--auth=peer", "-U", "postgres"],
                   check=True, capture_output=True)
    port = "55432"
    subprocess.run([*as_pg, str(PGBIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
                    f"-k {sock} -p {port} -c listen_addresses=''", "start"], check=True, capture_output=True)
    env = {**os.environ, "PGHOST": str(sock), "PGPORT": port}
    try:
        yield base, env
    finally:
        subprocess.run([*as_pg, str(PGBIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def sql(env, database, text):
    return subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d",
                           database, "-c", text], env=env, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def loaded(cluster):
    base, env = cluster
    subprocess.run(["runuser", "-u", "postgres", "--", "createdb", "rampart"], env=env, check=True)
    sql(env, "rampart", """
        CREATE TABLE orders (client_order_id varchar(36) PRIMARY KEY, symbol varchar(20) NOT NULL,
          side varchar(4) NOT NULL, qty varchar(40) NOT NULL, price varchar(40), status varchar(20) NOT NULL,
          exchange_order_id bigint, created_ms bigint NOT NULL);
        CREATE TABLE fills (symbol varchar(20), trade_id bigint, client_order_id varchar(36) NOT NULL,
          price varchar(40) NOT NULL, qty varchar(40) NOT NULL, time_ms bigint NOT NULL,
          PRIMARY KEY (symbol, trade_id));
        INSERT INTO orders SELECT 'c-' || g, CASE WHEN g % 2 = 0 THEN 'BTCUSDT' ELSE 'ETHUSDT' END,
          CASE WHEN g % 3 = 0 THEN 'SELL' ELSE 'BUY' END, (g % 97 + 1)::text || '.0001',
          (30000 + g % 500)::text || '.25', 'FILLED', g, 1700000000000 + g FROM generate_series(1, :orders) g;
        INSERT INTO fills SELECT symbol, exchange_order_id, client_order_id, price, qty, created_ms + 5 FROM orders;
    """.replace(":orders", str(ORDERS)))
    password = base / "restic-password"
    password.write_text("drill password\n")
    password.chmod(0o400)
    repo = base / "repo"
    assert restic(str(repo), password, "init").returncode == 0
    config = base / "backup.json"
    config.write_text(json.dumps({"repository": str(repo), "password_file": str(password)}))
    return base, {**env, "DRILL_BACKUP_CONFIG": str(config)}, repo, password


def probe(env, *args):
    result = subprocess.run([sys.executable, str(PROBE), *args], env=env, capture_output=True, text=True,
                            check=False, timeout=300)
    return result.returncode, json.loads(result.stdout or "{}"), result.stderr


def test_verify_restore_of_100k_orders_meets_the_targets(loaded):
    base, env, repo, password = loaded
    rc, out, err = probe(env, "verify-restore", "rampart", "rampart_drill_scratch")
    assert rc == 0, (out, err)
    assert out["mismatched_tables"] == [] and out["rows_lost"] == 0 and out["unexpected_tables"] == []
    assert out["orders"] == ORDERS and out["rows"] == 2 * ORDERS and out["tables"] == 2
    print(f"\n100k orders + 100k fills: backup {out['backup_s']:.1f} s, verified restore {out['restore_s']:.1f} s")
    assert out["backup_s"] <= 30, out
    assert out["restore_s"] <= 60, out
    snaps = json.loads(restic(str(repo), password, "snapshots", "--json", "--tag", "drill").stdout)
    assert [s["paths"] for s in snaps] == [["/drill/rampart.dump"]]
    assert sql(env, "rampart_drill_scratch", "SELECT count(*) FROM fills").strip() == str(ORDERS)


def _window(env, before: dict, after: dict, since_ms: int = 0) -> dict:
    rc, out, err = probe(env, "window", "rampart", "public", json.dumps(before), json.dumps(after), str(since_ms))
    assert rc == 0, (out, err)
    return out


def test_window_counts_what_the_database_holds_of_the_exchanges_id_ranges(loaded):
    """Drills a and c count by the exchange's id ranges between two /sim/state readings (orders here have
    exchange ids 1..100k, their fills trade ids equal to them)."""
    _, env, _, _ = loaded
    whole = _window(env, {"next_order_id": 50_001, "next_trade_id": 50_001},
                    {"next_order_id": 50_101, "next_trade_id": 50_101})
    assert whole == {"exchange_orders": 100, "exchange_trades": 100, "orders": 100, "fills": 100,
                     "orders_lost": 0, "orders_duplicated": 0, "fills_lost": 0}
    # Past the last stored order: the exchange made ids the database does not have.
    late = _window(env, {"next_order_id": ORDERS - 9, "next_trade_id": ORDERS - 4},
                   {"next_order_id": ORDERS + 11, "next_trade_id": ORDERS + 6})
    assert (late["orders_lost"], late["fills_lost"]) == (10, 5)
    # Rows older than since_ms belong to an earlier life of the simulator and are left out.
    recent = _window(env, {"next_order_id": 50_001, "next_trade_id": 50_001},
                     {"next_order_id": 50_101, "next_trade_id": 50_101}, 1_700_000_000_000 + 50_051)
    assert (recent["orders"], recent["fills"]) == (50, 55)
    rc, out, _ = probe(env, "window", "rampart", "public; drop table orders", "{}", "{}", "0")
    assert rc == 1 and "not a plain identifier" in out["error"]


def test_a_restore_that_differs_is_reported(loaded, monkeypatch):
    """The comparison can fail: checksums of a scratch copy with one row changed differ from the source's."""
    sys.path.insert(0, str(PROBE.parent))
    import drill_probe

    base, env, _, _ = loaded
    monkeypatch.setenv("PGHOST", env["PGHOST"])
    monkeypatch.setenv("PGPORT", env["PGPORT"])
    source = drill_probe.checksums(lambda q: drill_probe.psql("rampart", q).splitlines())
    sql(env, "rampart_drill_scratch", "UPDATE fills SET qty = '9.9999' WHERE trade_id = 4242")
    changed = drill_probe.checksums(lambda q: drill_probe.psql("rampart_drill_scratch", q).splitlines())
    assert source["public.orders"] == changed["public.orders"]
    assert source["public.fills"]["rows"] == changed["public.fills"]["rows"]
    assert source["public.fills"]["md5"] != changed["public.fills"]["md5"]
