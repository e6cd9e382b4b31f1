"""Deploys on the live lab (issue 10): a new release while the simulator streams loses and duplicates nothing,
and a release whose entry point exits is rolled back automatically, the play failing with the reason.

Both releases are built by deploy.yml from a copy of bot/ that differs from the tree by one line, so they get
their own release ids; the lab is left running the first of them (a healthy one).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from support import lab

PROBE = lab.ROOT / "playbooks/drills/files/drill_probe.py"
SCHEMA = "rampart_bot"  # the bot's schema in database rampart (roles/postgres)
TOKEN_FILE = "/etc/rampart-exchange-sim/credentials/sim_control_token"  # noqa: S105 - a path (exchange_sim_credentials_dir)


def _host(topo, service: str) -> str:
    return next(h for h in lab.hosts() if service in topo.host_view(h).listens)


def _probe(host: str, *args: str, env: str = "", timeout: float = 120) -> dict:
    """Run the drills' probe on a lab host as root (its source on stdin, nothing secret in argv)."""
    proc = lab.ssh(host, f"{env} python3 - " + " ".join(args), stdin=PROBE.read_text(), timeout=timeout)
    assert proc.stdout.strip(), f"{host}: probe {args[0]} printed nothing: {proc.stderr[-300:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in out, f"{host}: probe {args[0]}: {out}"
    return out


def _release_copy(tmp_path: Path, name: str, patch=None) -> Path:
    """A copy of bot/ with a marker line (a new source digest, so a new release id) and an optional patch."""
    copy = tmp_path / name
    shutil.copytree(lab.ROOT / "bot", copy, ignore=shutil.ignore_patterns("tests", ".venv", "__pycache__", "*.egg-info",
                                                                            "build", "dist"))
    init = copy / "src/rampart_bot/__init__.py"
    init.write_text(init.read_text() + f"# lab deploy test {name} {uuid.uuid4().hex}\n")
    if patch:
        patch(copy)
    return copy


def _deploy(project: Path) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = lab.playbook("playbooks/deploy.yml", "-e", f"rampart_release_project={project}",
                        # the bot only: a new release would restart the simulator too, and with it its books
                        "--limit", "bot,localhost")
    return proc, time.monotonic() - t0


def _burst(topo, steps: int, seconds: int) -> subprocess.Popen:
    """Start the probe's price burst on the simulator's host (the probe's source on stdin); the caller waits."""
    sim = _host(topo, "exchange_api")
    api = topo.host_view(sim).listens["exchange_api"]
    burst = subprocess.Popen(["ssh", "-F", str(lab.SSH_CONFIG), sim,
                              f"sudo sh -c 'DRILL_CA_FILE={lab.ca_file(topo.name)} python3 - burst https://{api.address}:"
                              f"{api.port}/sim/control {TOKEN_FILE} {steps} {seconds}'"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    burst.stdin.write(PROBE.read_text())
    burst.stdin.close()
    return burst


def _sim_state(topo) -> dict:
    sim = _host(topo, "exchange_api")
    api = topo.host_view(sim).listens["exchange_api"]
    ca = lab.ca_file(topo.name)
    return _probe(sim, f"sim-state https://{api.address}:{api.port}/sim/state", env=f"DRILL_CA_FILE={ca}")


def _window(topo, before: dict, since_ms: int, timeout: float = 60) -> dict:
    """What the bot's database holds of the orders and trades the exchange made since `before`, once the two
    agree (an order accepted a moment ago may still be on its way to the database); the last reading if never."""
    db = _host(topo, "postgres")
    deadline = time.monotonic() + timeout
    while True:
        after = _sim_state(topo)
        got = _probe(db, "window", "rampart", SCHEMA, shlex.quote(json.dumps(before)), shlex.quote(json.dumps(after)),
                     str(since_ms))
        if (got["orders_lost"], got["orders_duplicated"], got["fills_lost"]) == (0, 0, 0) \
                or time.monotonic() > deadline:
            return got
        time.sleep(2)


def _ready(topo) -> dict:
    bot = _host(topo, "bot_metrics")
    http = topo.host_view(bot).listens["bot_metrics"]
    return _probe(bot, "wait-ready", f"http://{http.address}:{http.port}/readyz", "60")


@pytest.fixture(scope="module")
def deployed(topo):
    bot = _host(topo, "bot_metrics")
    if lab.ssh(bot, "systemctl is-active rampart-bot.service").stdout.strip() != "active":
        pytest.skip("the bot is not deployed (playbooks/deploy.yml)")
    return bot


def test_a_redeploy_while_the_simulator_streams_loses_and_duplicates_nothing(topo, deployed, tmp_path):
    project = _release_copy(tmp_path, "next")
    since_ms = int(time.time() * 1000) - 5000
    before = _sim_state(topo)
    # Price steps for the whole deploy: the strategy keeps ordering while the old release drains and the new
    # one starts.
    burst = _burst(topo, steps=900, seconds=90)
    time.sleep(3)
    proc, took = _deploy(project)
    burst.wait(timeout=180)
    out, err = burst.stdout.read(), burst.stderr.read()
    assert proc.returncode == 0, proc.stdout[-3000:]
    switch = re.search(r"rampart-bot (\S+) ready ([\d.]+) s after the drain", proc.stdout)
    assert switch, "the deploy did not switch to the new release:\n" + proc.stdout[-2000:]
    steps = json.loads(out.strip().splitlines()[-1])
    assert steps.get("steps", 0) > 0, f"the burst made no price step: {out} {err[-300:]}"
    ready = _ready(topo)
    got = _window(topo, before, since_ms)
    placed = got["exchange_orders"]
    rss = lab.ssh(deployed, "ps -o rss= -p $(systemctl show -p MainPID --value rampart-bot.service)").stdout.strip()
    print(f"\nredeploy to {switch.group(1)} during {steps['steps']} price steps: switch {switch.group(2)} s "
          f"(drain to /readyz), deploy.yml {took:.0f} s; ready again after {ready['waited_s']:.1f} s; "
          f"the exchange accepted {placed} orders and made {got['exchange_trades']} trades meanwhile; lost orders "
          f"{got['orders_lost']}, duplicated {got['orders_duplicated']}, lost fills {got['fills_lost']}; "
          f"bot RSS {int(rss or 0) / 1024:.0f} MiB")
    assert placed > 0, "no order was placed during the redeploy: it proves nothing"
    assert (got["orders_lost"], got["orders_duplicated"], got["fills_lost"]) == (0, 0, 0), got
    assert float(switch.group(2)) <= 30, f"the switch took {switch.group(2)} s (target 30 s)"


def _broken(copy: Path) -> None:
    main = copy / "src/rampart_bot/service/main.py"
    text = main.read_text()
    anchor = "    args = parser.parse_args(argv)\n"
    assert anchor in text, "service/main.py changed: update the broken-release patch"
    main.write_text(text.replace(anchor, anchor + "    if not args.check_config:\n"
                                 "        return _fail('lab deploy test: this release is broken on purpose', 1)\n", 1))


def test_b_a_broken_release_is_rolled_back_and_the_play_says_why(topo, deployed, tmp_path):
    running = lab.ssh(deployed, "readlink -f /opt/rampart-bot/current").stdout.strip()
    project = _release_copy(tmp_path, "broken", _broken)
    proc, took = _deploy(project)
    flat = " ".join(proc.stdout.split())
    back = re.search(r"Rolled back to (\S+) \(ready, ([\d.]+) s after the drain\)", flat)
    assert proc.returncode != 0, "a release whose entry point exits was deployed without failing the play"
    assert back, "the play failed but did not roll back:\n" + proc.stdout[-3000:]
    assert "broken on purpose" in flat, "the play's message does not carry the service's own reason"
    now = lab.ssh(deployed, "readlink -f /opt/rampart-bot/current").stdout.strip()
    ready = _ready(topo)
    print(f"\nbroken release rolled back to {back.group(1)} {back.group(2)} s after the drain "
          f"(deploy.yml {took:.0f} s, failing as it must); /readyz green")
    assert now == running, f"current is {now}, not the release that ran before ({running})"
    assert ready["waited_s"] is not None
    assert float(back.group(2)) <= 60, f"the rollback took {back.group(2)} s (target 60 s)"


# The secret arrives as stdin's first line and the script after it: never in argv or the environment.
STDIN_FIRST_LINE = "import sys; SECRET = sys.stdin.readline().strip(); exec(sys.stdin.read())"
PG_LOGIN = """
import psycopg
psycopg.connect("{dsn}", password=SECRET, connect_timeout=10).close()
"""
KEY_CHECK = """
import ssl, urllib.error, urllib.request
request = urllib.request.Request("{url}", headers={{"X-MBX-APIKEY": SECRET}})
try:
    urllib.request.urlopen(request, context=ssl.create_default_context(cafile="{ca}"), timeout=10)
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
"""


def _secrets() -> dict:
    from ansible.parsing.vault import VaultLib, VaultSecret

    password = (lab.ROOT / ".secrets/lab/vault-pass").read_bytes().strip()
    vault = VaultLib([("lab", VaultSecret(password))])
    import yaml

    return yaml.safe_load(vault.decrypt((lab.ROOT / "inventory/lab/group_vars/all/secrets.yml").read_bytes()))


def test_c_rotating_the_db_password_and_the_exchange_key_loses_nothing(topo, deployed):
    sim = _host(topo, "exchange_api")
    api = topo.host_view(sim).listens["exchange_api"]
    ca = lab.ca_file(topo.name)
    old = _secrets()
    since_ms = int(time.time() * 1000) - 5000
    before = _sim_state(topo)
    burst = _burst(topo, steps=600, seconds=60)
    t0 = time.monotonic()
    proc = lab.playbook("playbooks/rotate.yml", "-e", "rotate=db_password,exchange_key")
    took = time.monotonic() - t0
    burst.wait(timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:]
    new = _secrets()
    for name in ("secret_postgres_bot_password", "secret_lab_exchange_api_key", "secret_lab_exchange_api_secret"):
        assert new[name] != old[name] and new[f"{name}_previous"] == old[name], f"{name} was not rotated"
        assert old[name] not in proc.stdout and new[name] not in proc.stdout, f"{name} appeared in the output"
    _ready(topo)
    got = _window(topo, before, since_ms)
    # The old credentials no longer open anything: PostgreSQL refuses the old password, the simulator the old key.
    db = _host(topo, "postgres")
    pg = topo.host_view(db).listens["postgres"]
    login = lab.ssh(deployed, "/opt/rampart-bot/current/venv/bin/python -c " + shlex.quote(STDIN_FIRST_LINE),
                    stdin=old["secret_postgres_bot_password"] + "\n" + PG_LOGIN.format(
                        dsn=f"host={pg.address} port={pg.port} dbname=rampart user=rampart_bot sslmode=verify-full "
                            f"sslrootcert={ca}"))
    key = lab.ssh(sim, "python3 -c " + shlex.quote(STDIN_FIRST_LINE),
                  stdin=old["secret_lab_exchange_api_key"] + "\n" + KEY_CHECK.format(
                      url=f"https://{api.address}:{api.port}/api/v3/account", ca=ca))
    print(f"\nrotation of the DB password and the exchange key while trading: rotate.yml {took:.0f} s; the exchange "
          f"accepted {got['exchange_orders']} orders meanwhile; lost orders {got['orders_lost']}, duplicated "
          f"{got['orders_duplicated']}, lost fills {got['fills_lost']}; old DB password: "
          f"{'refused' if login.returncode else 'ACCEPTED'}; old API key: {key.stdout.strip()[:60]}")
    assert got["exchange_orders"] > 0, "no order was placed during the rotation: it proves nothing"
    assert (got["orders_lost"], got["orders_duplicated"], got["fills_lost"]) == (0, 0, 0), got
    assert login.returncode != 0 and "password authentication failed" in login.stdout + login.stderr, \
        (login.stdout + login.stderr)[-300:]
    assert "-2015" in key.stdout, key.stdout + key.stderr
