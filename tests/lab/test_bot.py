"""The bot trades in the lab: ready on the trading host, orders placed on the simulator (through the gateway's
NAT, over TLS the bot verifies) and persisted in PostgreSQL on the data host before they were sent."""

from __future__ import annotations

import json
import time

import pytest
from support import lab

READYZ = r"""
import json, urllib.request
print(urllib.request.urlopen(URL, timeout=5).read().decode())
"""

SIM_STATE = r"""
import json, ssl, urllib.request
ctx = ssl.create_default_context(cafile=CA)
print(urllib.request.urlopen(URL, context=ctx, timeout=5).read().decode())
"""


def _host(topo, service: str) -> str:
    return next(h for h in lab.hosts() if service in topo.host_view(h).listens)


def _run(host: str, script: str, **values) -> str:
    head = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    proc = lab.ssh(host, "python3 -", stdin=head + script)
    assert proc.returncode == 0, f"{host}: {proc.stderr[-300:]}"
    return proc.stdout


def test_the_bot_is_ready_and_its_orders_are_on_the_exchange_and_in_the_database(topo):
    bot = _host(topo, "bot_metrics")
    if lab.ssh(bot, "systemctl is-active rampart-bot.service").stdout.strip() != "active":
        pytest.skip("the bot is not deployed (playbooks/deploy.yml)")
    http = topo.host_view(bot).listens["bot_metrics"]
    ready = json.loads(_run(bot, READYZ, URL=f"http://{http.address}:{http.port}/readyz"))
    assert ready["ready"], f"/readyz: {ready}"

    sim = _host(topo, "exchange_api")
    api = topo.host_view(sim).listens["exchange_api"]
    ca = lab.ca_file(topo.name)
    db = _host(topo, "postgres")
    deadline, state, stored = time.monotonic() + 120, {}, 0
    while time.monotonic() < deadline:
        state = json.loads(_run(sim, SIM_STATE, CA=ca, URL=f"https://{api.address}:{api.port}/sim/state"))
        # Read after the exchange: the bot stores an order before it sends it, so the database holds at least
        # every order the exchange has accepted.
        stored = int(lab.ssh(db, "runuser -u postgres -- psql -d rampart -tAc "
                                 "'select count(*) from rampart_bot.orders'").stdout.strip() or 0)
        if state.get("accepted_orders", 0) > 0:
            break
        time.sleep(3)
    print(f"\nbot on {bot}: ready {ready['checks']}; exchange accepted {state.get('accepted_orders')} orders; "
          f"{stored} orders in PostgreSQL on {db}")
    assert state.get("accepted_orders", 0) > 0, "the bot placed no order on the simulator within 2 minutes"
    assert stored >= state["accepted_orders"], "an order reached the exchange without being persisted first"
