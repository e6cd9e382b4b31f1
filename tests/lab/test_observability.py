"""Observability in the lab, against the real services: every declared scrape target is up in Prometheus,
and a line logged on a platform host reaches the central journal collector over TLS."""

from __future__ import annotations

import json
import secrets
import time
import urllib.request

from support import lab

DEPLOYED_LATER = {"bot_metrics"}  # the bot's deploy (playbooks/deploy.yml) brings this target up


def _host_running(topo, service: str) -> str:
    return next(h for h in lab.hosts() if service in topo.host_view(h).listens)


def test_every_declared_scrape_target_is_up(topo):
    mon = _host_running(topo, "prometheus")
    ep = topo.host_view(mon).listens["prometheus"]
    with urllib.request.urlopen(f"http://{ep.address}:{ep.port}/api/v1/targets", timeout=10) as r:  # noqa: S310
        targets = json.load(r)["data"]["activeTargets"]
    scraped = {(t["labels"]["job"], t["labels"]["instance"]): t for t in targets if t["labels"]["job"] != "blackbox"}
    declared = {(job, t["target"]) for job, ts in topo.scrape_endpoints().items() for t in ts}
    assert set(scraped) == declared, "Prometheus scrapes exactly the topology's targets"
    # A target just configured may not have been scraped yet: give each one scrape interval.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{ep.address}:{ep.port}/api/v1/targets", timeout=10) as r:  # noqa: S310
            targets = json.load(r)["data"]["activeTargets"]
        down = sorted(f"{t['labels']['job']} {t['labels']['instance']}: {t.get('lastError', '')}" for t in targets
                      if t["health"] != "up" and t["labels"]["job"] not in DEPLOYED_LATER)
        if not down:
            break
        time.sleep(2)
    print(f"\nprometheus: {len(targets)} targets; not up: {down or 'none'}; "
          f"not checked until the bot is deployed: {sorted(DEPLOYED_LATER)}")
    assert not down
    rss = lab.ssh(mon, "ps -o rss= -C prometheus").stdout.split()
    print(f"prometheus RSS on {mon}: {int(rss[0]) / 1024:.0f} MiB" if rss else "prometheus RSS: not found")


def test_a_log_line_reaches_the_central_collector(topo):
    collector = _host_running(topo, "journal_remote")
    source = next(h for h in lab.hosts() if "journal_remote" in topo.host_view(h).connects)
    token = "rampart-log-probe-" + secrets.token_hex(8)
    t0 = time.monotonic()
    assert lab.ssh(source, f"logger -t rampart-test {token}").returncode == 0
    seen = None
    while time.monotonic() - t0 < 60:
        proc = lab.ssh(collector, f"journalctl -D /var/log/journal/remote -o cat --no-pager -t rampart-test "
                                  f"--since=-5min | grep -c {token}")
        if proc.stdout.strip() not in ("", "0"):
            seen = time.monotonic() - t0
            break
        time.sleep(0.5)
    after = f"{seen:.1f} s" if seen is not None else "never (60 s)"
    print(f"\ncentral logs: a line logged on {source} was on {collector} after {after} (target ≤ 10 s)")
    assert seen is not None, f"{token} logged on {source} never reached {collector}"
