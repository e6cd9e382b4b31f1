#!/usr/bin/env python3
"""Grafana dashboards as code (grafana-foundation-sdk): writes monitoring/dashboards/*.json.

    python monitoring/dashboards/generate.py          # regenerate
    python monitoring/dashboards/generate.py --check  # fail if the committed JSON is out of date

The grafana role provisions the JSON files; tests/unit/test_monitoring_metrics.py checks that every query
names only metrics something we deploy exports. Edit this file, never the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

HERE = Path(__file__).resolve().parent
# The datasource uid the grafana role provisions (roles/grafana/templates/datasources.yml.j2).
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="rampart-prometheus")


def query(expr: str, legend: str = "") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).datasource(PROMETHEUS)
    return q.legend_format(legend) if legend else q


def graph(title: str, unit: str, *queries: prometheus.Dataquery, width: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(PROMETHEUS).height(8).span(width)
    for i, q in enumerate(queries):
        panel = panel.with_target(q.ref_id(chr(ord("A") + i)))
    return panel


def single(title: str, unit: str, q: prometheus.Dataquery, width: int = 6) -> stat.Panel:
    return stat.Panel().title(title).unit(unit).datasource(PROMETHEUS).height(4).span(width).with_target(q.ref_id("A"))


def host_variable(metric: str) -> dash.QueryVariable:
    return (dash.QueryVariable("host").label("Host").datasource(PROMETHEUS)
            .query(f"label_values({metric}, host)").multi(True).include_all(True)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))


def board(uid: str, title: str) -> dash.Dashboard:
    return (dash.Dashboard(title).uid(uid).tags(["rampart"]).refresh("30s").time("now-6h", "now")
            .timezone("utc"))


def overview() -> dash.Dashboard:
    return (board("rampart-overview", "rampart / Platform overview")
            .with_row(dash.Row("Health"))
            .with_panel(single("Targets down", "short", query("count(up == 0) or vector(0)")))
            .with_panel(single("Alerts firing", "short", query('count(ALERTS{alertstate="firing"}) or vector(0)')))
            .with_panel(single("Bot ready", "bool", query("max(rampart_bot_ready)")))
            .with_panel(single("Trading state (0 active, 1 reducing, 2 halted)", "short",
                               query("max(rampart_bot_trading_state_code)")))
            .with_row(dash.Row("Everything Prometheus scrapes"))
            .with_panel(graph("Scrape targets up", "short", query("sum by (job) (up)", "{{job}}")))
            .with_panel(graph("Firing alerts by severity", "short",
                              query('sum by (severity) (ALERTS{alertstate="firing"})', "{{severity}}"))))


def bot() -> dash.Dashboard:
    return (board("rampart-bot", "rampart / Trading bot")
            .with_row(dash.Row("Market data"))
            .with_panel(graph("Frames per second", "ops",
                              query("rate(rampart_bot_md_messages_total[$__rate_interval])", "{{host}}")))
            .with_panel(graph("Feed staleness", "s", query("rampart_bot_md_staleness_seconds", "{{host}}")))
            .with_panel(graph("Feed connected and reconnects", "short",
                              query("rampart_bot_md_connected", "connected {{host}}"),
                              query("increase(rampart_bot_md_reconnects_total[$__rate_interval])",
                                    "reconnects {{host}}")))
            .with_panel(graph("Dropped frames by reason", "ops",
                              query("sum by (reason) (rate(rampart_bot_md_dropped_total[$__rate_interval]))",
                                    "{{reason}}")))
            .with_row(dash.Row("Orders"))
            .with_panel(graph("Orders submitted and fills", "ops",
                              query("rate(rampart_bot_orders_submitted_total[$__rate_interval])", "submitted"),
                              query("rate(rampart_bot_fills_total[$__rate_interval])", "fills")))
            .with_panel(graph("Open, in flight and unknown orders", "short",
                              query("rampart_bot_orders_open", "open"),
                              query("rampart_bot_orders_in_flight", "in flight"),
                              query("rampart_bot_orders_unknown", "unknown")))
            .with_panel(graph("Order ack latency p50 / p99", "s",
                              query("histogram_quantile(0.5, sum by (le) "
                                    "(rate(rampart_bot_order_ack_seconds_bucket[$__rate_interval])))", "p50"),
                              query("histogram_quantile(0.99, sum by (le) "
                                    "(rate(rampart_bot_order_ack_seconds_bucket[$__rate_interval])))", "p99")))
            .with_panel(graph("Tick to order p99", "s",
                              query("histogram_quantile(0.99, sum by (le) "
                                    "(rate(rampart_bot_tick_to_order_seconds_bucket[$__rate_interval])))", "p99")))
            .with_panel(graph("Venue errors by kind", "ops",
                              query("sum by (kind) (rate(rampart_bot_venue_errors_total[$__rate_interval]))",
                                    "{{kind}}")))
            .with_row(dash.Row("Risk"))
            .with_panel(graph("Trading state", "short",
                              query("rampart_bot_trading_state == 1", "{{state}}")))
            .with_panel(graph("Daily and total PnL", "short", query("rampart_bot_pnl_quote", "{{period}}")))
            .with_panel(graph("Exposure", "short", query("rampart_bot_exposure_quote", "exposure")))
            .with_panel(graph("Risk rejects by reason", "ops",
                              query("sum by (reason) (rate(rampart_bot_risk_rejects_total[$__rate_interval]))",
                                    "{{reason}}")))
            .with_panel(graph("Readiness checks", "short", query("rampart_bot_ready_check", "{{check}}")))
            .with_panel(graph("Circuit breakers (0 closed, 2 open)", "short",
                              query("rampart_bot_circuit_breaker_state", "{{breaker}}"))))


def hosts() -> dash.Dashboard:
    sel = 'job="node_exporter", host=~"$host"'
    return (board("rampart-hosts", "rampart / Hosts")
            .with_variable(host_variable('up{job="node_exporter"}'))
            .with_panel(graph("CPU busy", "percentunit",
                              query(f'1 - avg by (host) (rate(node_cpu_seconds_total{{{sel}, mode="idle"}}'
                                    "[$__rate_interval]))", "{{host}}")))
            .with_panel(graph("Memory available", "bytes",
                              query(f"node_memory_MemAvailable_bytes{{{sel}}}", "{{host}}")))
            .with_panel(graph("Filesystem free", "percentunit",
                              query('rampart:filesystem_avail:ratio{host=~"$host"}', "{{host}} {{mountpoint}}")))
            .with_panel(graph("Load (1 min)", "short", query(f"node_load1{{{sel}}}", "{{host}}")))
            .with_panel(graph("Network received", "Bps",
                              query(f'rate(node_network_receive_bytes_total{{{sel}, device!="lo"}}'
                                    "[$__rate_interval])", "{{host}} {{device}}")))
            .with_panel(graph("Network sent", "Bps",
                              query(f'rate(node_network_transmit_bytes_total{{{sel}, device!="lo"}}'
                                    "[$__rate_interval])", "{{host}} {{device}}"))))


def network() -> dash.Dashboard:
    return (board("rampart-network", "rampart / Network")
            .with_variable(host_variable("rampart_netmetrics_last_run_timestamp_seconds"))
            .with_panel(graph("Firewall drops per chain", "pps",
                              query('rampart:nftables_dropped_packets:rate5m{host=~"$host"}', "{{host}} {{chain}}"),
                              width=24))
            .with_panel(graph("WireGuard handshake age", "s",
                              query('rampart:wireguard_peer_handshake_age_seconds{host=~"$host"}',
                                    "{{peer}}")))
            .with_panel(graph("WireGuard transfer", "Bps",
                              query('rate(rampart_wireguard_peer_receive_bytes_total{host=~"$host"}'
                                    "[$__rate_interval])", "rx {{peer}}"),
                              query('rate(rampart_wireguard_peer_transmit_bytes_total{host=~"$host"}'
                                    "[$__rate_interval])", "tx {{peer}}")))
            .with_panel(graph("Conntrack usage", "percentunit",
                              query('rampart_conntrack_entries{host=~"$host"} / '
                                    'rampart_conntrack_entries_limit{host=~"$host"}', "{{host}}")))
            .with_panel(graph("Collector health", "short",
                              query('rampart_netmetrics_collector_success{host=~"$host"}',
                                    "{{host}} {{collector}}"))))


def backups() -> dash.Dashboard:
    return (board("rampart-backups", "rampart / Backups")
            .with_panel(graph("Age of the last successful backup", "s",
                              query("time() - rampart_backup_last_success_timestamp_seconds", "{{host}} {{backup}}")))
            .with_panel(graph("Last run succeeded", "bool",
                              query("rampart_backup_last_run_success", "{{host}} {{backup}}")))
            .with_panel(graph("Duration", "s", query("rampart_backup_duration_seconds", "{{host}} {{backup}}")))
            .with_panel(graph("Data added", "bytes", query("rampart_backup_bytes_added", "{{host}} {{backup}}")))
            .with_panel(graph("Snapshots in the repository", "short",
                              query("rampart_backup_snapshots", "{{host}} {{backup}}"))))


DASHBOARDS = {"overview": overview, "bot": bot, "hosts": hosts, "network": network, "backups": backups}


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(make().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
            for name, make in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail if the JSON files are out of date")
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print(f"dashboards out of date (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
