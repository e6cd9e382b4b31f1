"""Every metric a rule or a dashboard names is exported by something we deploy — checked against the real
/metrics output of the bot (in-process, paper mode against the bundled simulator), node_exporter (with the
netmetrics textfile), blackbox_exporter (probing a loopback HTTPS server) and postgres_exporter (against a
throwaway PostgreSQL), each run briefly on 127.0.0.1. Names whose exporter cannot run here are listed in
PENDING with the reason, reported as a skip, and must really be absent (so the list cannot go stale)."""

from __future__ import annotations

import asyncio
import glob
import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rampart import monitoring_checks as checks
from support.net import free_port

ROOT = Path(__file__).resolve().parents[2]

NETMETRICS = ROOT / "roles" / "netmetrics" / "files" / "rampart-netmetrics.py"
BLACKBOX_TEMPLATE = ROOT / "roles" / "blackbox_exporter" / "templates" / "blackbox.yml.j2"

# Named by rules or dashboards but exported by nothing that can run in this fast tier yet.
# Names a rule or panel may use that no exporter here can produce yet (none today), with the reason.
PENDING: dict[str, str] = {}

# What the fake `wg` prints: there is no WireGuard interface on this machine (no kernel module, and
# wireguard-go is not installed on the controller), so the netmetrics WireGuard path runs on recorded
# `wg show all latest-handshakes|transfer` output; everything after it (script, textfile, node_exporter) is real.
FAKE_WG = """#!/bin/sh
case "$3" in
  latest-handshakes) printf 'wg0\\tPUBKEYalice=\\t1700000000\\nwg0\\tPUBKEYbob=\\t0\\n' ;;
  transfer) printf 'wg0\\tPUBKEYalice=\\t1234\\t5678\\nwg0\\tPUBKEYbob=\\t0\\t0\\n' ;;
  *) exit 1 ;;
esac
"""


def _get(url: str, timeout: float = 15.0, context: ssl.SSLContext | None = None) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as r:  # noqa: S310 - loopback only
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def names_in(text: str) -> set[str]:
    """Every series name a scrape can produce (family names plus _total/_bucket/... sample names)."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        if fam.type == "histogram":
            names.update(fam.name + sfx for sfx in ("_bucket", "_sum", "_count"))
    return names


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env={**os.environ, **(env or {})})

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


# -- exporters ------------------------------------------------------------------------------------
def bot_names() -> set[str]:
    from rampart_bot.adapters.secrets import Secret
    from rampart_bot.service.config import parse_config
    from rampart_bot.service.runtime import BotRuntime
    from rampart_bot.sim.server import SimServer

    async def scrape() -> str:
        sim = SimServer("k", "s", tick_interval_s=0.01)
        await sim.start()
        tmp = tempfile.mkdtemp(prefix="rampart-mon-bot-")
        cfg = parse_config({"venue": {"rest_url": sim.base_url, "ws_url": sim.ws_url},
                            "strategy": {"name": "idle"}, "database": {"url": f"sqlite:///{tmp}/bot.sqlite3"}},
                           "<monitoring test>")
        secrets = {"api_key": Secret("k"), "api_secret": Secret("s"), "operator_token": Secret("t")}
        rt = await BotRuntime.start(cfg, secrets, http_port=0)
        try:
            await rt.engine.wait_for(rt.engine.ready, timeout=10)
            port = rt.runner.addresses[0][1]
            return await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        finally:
            await rt.stop()
            await sim.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    return names_in(asyncio.run(scrape()))


def aide_textfile(work: Path, textfile: Path) -> None:
    """Run the aide role's real check script (with the real aide) on a small watched tree: it writes its
    metrics into node_exporter's textfile directory as on a host."""
    from hardening_templates import render
    aide = shutil.which("aide")
    if aide is None:
        pytest.skip("aide not installed (apt-get install aide)")
    watched = work / "etc"
    watched.mkdir(parents=True)
    (watched / "sudoers").write_text("root ALL=(ALL:ALL) ALL\n")
    (work / "db").mkdir()
    overrides = {"aide_config_file": str(work / "aide.conf"), "aide_database": str(work / "db/aide.db.gz"),
                 "aide_report_file": str(work / "last-check.txt"), "aide_textfile_dir": str(textfile),
                 "aide_watch": {str(watched): "Critical"}, "aide_ignore": []}
    (work / "aide.conf").write_text(render("aide", "aide.conf.j2", **overrides))
    script = work / "rampart-aide"
    script.write_text(render("aide", "rampart-aide.sh.j2", **overrides).replace("/usr/bin/aide", aide))
    script.chmod(0o755)
    done = subprocess.run([str(script), "init"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def netmetrics_textfile(directory: Path) -> None:
    """Run the real netmetrics script in a private network namespace with a ruleset that drops a probe."""
    fakebin = directory.parent / "fakebin"
    fakebin.mkdir()
    (fakebin / "wg").write_text(FAKE_WG)
    (fakebin / "wg").chmod(0o755)
    ruleset = directory.parent / "rules.nft"
    ruleset.write_text('table inet rampart {\n  chain input {\n    type filter hook input priority filter;'
                       ' policy accept;\n    udp dport 9 counter drop comment "test drop"\n  }\n}\n')
    script = (f"ip link set lo up && nft -f {ruleset} && "
              f"python3 -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', "
              f"('127.0.0.1', 9))\" && "
              f"PATH={fakebin}:$PATH python3 {NETMETRICS} --textfile-dir {directory} --wireguard")
    done = subprocess.run(["unshare", "-rn", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"netmetrics could not run in a private network namespace here: {done.stderr.strip()[:200]}")


def backup_textfile(work: Path, textfile: Path) -> None:
    """The real backup wrapper (roles/backup_client) runs one job into a local restic repository and writes its
    metrics where node_exporter reads them."""
    restic = shutil.which("restic")
    if restic is None:
        pytest.skip("restic not installed (apt-get install restic)")
    work.mkdir()
    password = work / "password"
    password.write_text("a test repository\n")
    env = {**os.environ, "RESTIC_PASSWORD_FILE": str(password), "RESTIC_CACHE_DIR": str(work / "cache")}
    init = subprocess.run([restic, "--repo", str(work / "repo"), "init"], capture_output=True, text=True, env=env)
    assert init.returncode == 0, init.stderr
    (work / "data").mkdir()
    (work / "data" / "file").write_text("backed up by the monitoring test\n")
    config = work / "config.json"
    config.write_text(json.dumps({
        "host": "mon-test", "repository": str(work / "repo"), "password_file": str(password),
        "textfile_dir": str(textfile), "lock_file": str(work / "lock"), "cache_dir": str(work / "cache"),
        "lock_retries": 0, "jobs": {"config": {"kind": "paths", "paths": [str(work / "data")], "exclude": []}}}))
    run = subprocess.run([sys.executable, str(ROOT / "roles/backup_client/files/rampart-backup"), "--config",
                          str(config), "run", "config"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def node_exporter_names(tmp: Path) -> set[str]:
    binary = shutil.which("prometheus-node-exporter")
    if binary is None:
        pytest.skip("prometheus-node-exporter not installed (apt-get install prometheus-node-exporter)")
    textfile = tmp / "textfile"
    textfile.mkdir()
    netmetrics_textfile(textfile)
    aide_textfile(tmp / "aide", textfile)
    backup_textfile(tmp / "backup", textfile)
    port = free_port()
    p = Proc([binary, f"--web.listen-address=127.0.0.1:{port}", f"--collector.textfile.directory={textfile}"])
    try:
        text = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        p.stop()
    assert "rampart_nftables_dropped_packets_total" in text, "netmetrics output did not reach node_exporter"
    return names_in(text)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        code = 503 if self.path == "/v1/sys/health" else 200  # a sealed Vault answers 503
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def blackbox_names(tmp: Path) -> set[str]:
    binary = shutil.which("prometheus-blackbox-exporter")
    if binary is None:
        pytest.skip("prometheus-blackbox-exporter not installed (apt-get install prometheus-blackbox-exporter)")
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    config = tmp / "blackbox.yml"
    config.write_text(render_template(BLACKBOX_TEMPLATE, blackbox_exporter_ca_file=str(cert),
                                      blackbox_exporter_timeout="5s"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{server.server_address[1]}"
    port = free_port()
    p = Proc([binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"])
    names: set[str] = set()
    try:
        base = f"http://127.0.0.1:{port}/probe"
        readyz = _get(f"{base}?module=http_2xx&target=https://{target}/readyz")
        vault = _get(f"{base}?module=vault_health&target=https://{target}/v1/sys/health")
        tls = _get(f"{base}?module=tls_connect&target={target}")
        assert "probe_success 1" in readyz, readyz
        assert "probe_http_status_code 503" in vault, vault
        assert "probe_ssl_earliest_cert_expiry" in tls, tls
        for text in (readyz, vault, tls):
            names |= names_in(text)
    finally:
        p.stop()
        server.shutdown()
    return names


def postgres_exporter_names(tmp: Path) -> set[str]:
    binary = shutil.which("prometheus-postgres-exporter")
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if binary is None or not bindirs:
        pytest.skip("prometheus-postgres-exporter or the PostgreSQL server is not installed")
    bindir = os.path.dirname(bindirs[0])
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    pgdir = tmp / "pg"
    pgdir.mkdir()
    if as_root:
        shutil.chown(pgdir, "postgres", "postgres")
    data = pgdir / "data"
    pgport = free_port()
    try:
        subprocess.run([*prefix, f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", str(data), "-w", "-l", str(pgdir / "log"), "-o",
                        f"-c listen_addresses=127.0.0.1 -p {pgport} -k {pgdir} -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"could not start a throwaway PostgreSQL: {exc.stderr.decode(errors='replace')[:200]}")
    port = free_port()
    p = Proc([binary, f"--web.listen-address=127.0.0.1:{port}"],
             env={"DATA_SOURCE_NAME": f"postgresql://postgres@127.0.0.1:{pgport}/postgres?sslmode=disable"})
    try:
        text = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        p.stop()
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    assert "pg_up 1" in text, "postgres_exporter did not reach the throwaway PostgreSQL"
    return names_in(text)


def render_template(path: Path, **variables: object) -> str:
    import json

    # YAML, not HTML: nothing to escape.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)  # noqa: S701
    env.filters["to_json"] = json.dumps
    return env.from_string(path.read_text()).render(ansible_managed="rendered by a test", **variables)


@pytest.fixture(scope="module")
def exported() -> Iterator[dict[str, set[str]]]:
    tmp = Path(tempfile.mkdtemp(prefix="rampart-mon-"))
    os.chmod(tmp, 0o755)  # noqa: S103 - the postgres user must reach its data directory inside
    try:
        yield {
            "bot (rampart-bot /metrics)": bot_names(),
            "node_exporter (+ netmetrics textfile)": node_exporter_names(tmp),
            "blackbox_exporter": blackbox_names(tmp),
            "postgres_exporter": postgres_exporter_names(tmp),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _known(exported: dict[str, set[str]], recorded: set[str]) -> set[str]:
    return set().union(*exported.values()) | recorded | checks.SYNTHETIC | set(PENDING)


def test_every_rule_metric_is_exported(exported):
    used, recorded = checks.rule_metrics(checks.rule_files())
    problems = checks.unknown_metrics(used, _known(exported, recorded), "rule")
    assert not problems, "\n".join(problems)


def test_every_dashboard_metric_is_exported(exported):
    assert checks.dashboard_files(), "no dashboards in monitoring/dashboards (run generate.py)"
    _, recorded = checks.rule_metrics(checks.rule_files())
    problems = checks.unknown_metrics(checks.dashboard_metrics(checks.dashboard_files()),
                                      _known(exported, recorded), "panel")
    assert not problems, "\n".join(problems)


def test_pending_metrics_are_really_not_exported_yet(exported):
    everything = set().union(*exported.values())
    stale = sorted(set(PENDING) & everything)
    assert not stale, f"now exported, drop from PENDING in {Path(__file__).name}: {', '.join(stale)}"


def test_pending_metrics_are_used(exported):
    used, _ = checks.rule_metrics(checks.rule_files())
    named = set().union(*used.values(), *checks.dashboard_metrics(checks.dashboard_files()).values())
    unused = sorted(set(PENDING) - named)
    assert not unused, f"PENDING names no rule or panel uses: {', '.join(unused)}"


def test_metrics_not_checked_against_a_running_exporter():
    """Said plainly in the test report: these names were not checked against real output."""
    lines = [f"{name}: {why}" for name, why in sorted(PENDING.items())]
    lines.append("rampart_wireguard_*: exported by the real netmetrics script and node_exporter, but from recorded "
                 "`wg show` output (no WireGuard interface can exist on this machine)")
    pytest.skip("not checked against a running exporter: " + "; ".join(lines))


def test_an_unexported_metric_is_reported_with_file_and_rule(tmp_path: Path):
    rules = tmp_path / "bad.rules.yml"
    rules.write_text("groups:\n  - name: x\n    rules:\n      - alert: Ghost\n        expr: nobody_exports_this > 0\n")
    used, recorded = checks.rule_metrics([rules])
    problems = checks.unknown_metrics(used, {"up"} | recorded, "rule")
    assert problems == [f"{rules}: rule Ghost: names nobody_exports_this, which nothing we deploy exports"]


def test_an_unexported_metric_in_a_panel_is_reported(tmp_path: Path):
    board = tmp_path / "bad.json"
    board.write_text('{"panels": [{"title": "Ghost panel", "targets": [{"expr": "rate(ghost_total[5m])"}]}]}')
    problems = checks.unknown_metrics(checks.dashboard_metrics([board]), {"up"}, "panel")
    assert problems == [f"{board}: panel Ghost panel: names ghost_total, which nothing we deploy exports"]


def test_dashboards_are_generated_from_code():
    done = subprocess.run([sys.executable, str(ROOT / "monitoring" / "dashboards" / "generate.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
