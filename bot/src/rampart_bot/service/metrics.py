"""Prometheus metrics. Hot-path counts are plain ints read at scrape time by a custom collector;
per-order latencies go to real histograms (an order is rare compared with a tick).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..core.breaker import BreakerState
from ..core.model import OrderStatus, TradingState

if TYPE_CHECKING:
    from .engine import Engine

LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.0002,
    0.0003,
    0.0005,
    0.00075,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
    1.0,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.order_ack = Histogram(
            "rampart_bot_order_ack_seconds",
            "Time from sending a new order to the venue's answer",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tick_to_order = Histogram(
            "rampart_bot_tick_to_order_seconds",
            "Time from receiving the market data frame to the order leaving for the venue (send task start)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejects: dict[str, int] = {}
        self.venue_errors: dict[str, int] = {}
        self.mismatches: dict[str, int] = {}
        self.reconciliations: dict[str, int] = {}
        self.orders_submitted = 0
        self.fills = 0
        self.kill_switch = 0

    def reject(self, reason: str) -> None:
        self.rejects[reason] = self.rejects.get(reason, 0) + 1

    def venue_error(self, kind: str) -> None:
        self.venue_errors[kind] = self.venue_errors.get(kind, 0) + 1

    def mismatch(self, kind: str) -> None:
        self.mismatches[kind] = self.mismatches.get(kind, 0) + 1

    def attach(self, engine: Engine) -> None:
        self.registry.register(EngineCollector(engine))


def _labelled_counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        fam.add_metric([key], value)
    return fam


class EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.e = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:  # noqa: C901 - a flat list
        e = self.e
        m = e.metrics
        ps = e.parse_stats
        md = e.md
        yield CounterMetricFamily("rampart_bot_md_messages", "Market data frames received", value=ps.messages)
        yield CounterMetricFamily("rampart_bot_md_trades", "Trade messages accepted", value=ps.trades)
        yield CounterMetricFamily(
            "rampart_bot_md_book_updates", "bookTicker messages accepted", value=ps.books
        )
        yield _labelled_counter(
            "rampart_bot_md_dropped", "Malformed or unexpected frames dropped", "reason", ps.dropped
        )
        yield GaugeMetricFamily(
            "rampart_bot_md_connected",
            "1 when the market data socket is up",
            value=1 if md and md.connected else 0,
        )
        staleness = md.staleness_s if md else float("inf")
        yield GaugeMetricFamily(
            "rampart_bot_md_staleness_seconds", "Seconds since the last market data frame", value=staleness
        )
        yield CounterMetricFamily(
            "rampart_bot_md_reconnects", "Market data reconnects", value=md.reconnects if md else 0
        )
        yield CounterMetricFamily("rampart_bot_orders_submitted", "New orders sent", value=m.orders_submitted)
        yield GaugeMetricFamily(
            "rampart_bot_orders_in_flight", "Orders awaiting a venue answer", value=len(e.tracker.in_flight)
        )
        unknown = sum(1 for o in e.tracker.open_orders() if o.status is OrderStatus.UNKNOWN)
        yield GaugeMetricFamily(
            "rampart_bot_orders_unknown", "Orders whose outcome is not yet known", value=unknown
        )
        yield GaugeMetricFamily(
            "rampart_bot_orders_open", "Orders open or unresolved", value=len(e.tracker.open_orders())
        )
        yield _labelled_counter(
            "rampart_bot_risk_rejects", "Orders denied before sending", "reason", m.rejects
        )
        yield _labelled_counter("rampart_bot_venue_errors", "Venue errors by kind", "kind", m.venue_errors)
        yield CounterMetricFamily("rampart_bot_fills", "Fills applied (deduplicated)", value=m.fills)
        yield CounterMetricFamily(
            "rampart_bot_fills_duplicate", "Fills seen again and ignored", value=e.tracker.duplicate_fills
        )
        state = GaugeMetricFamily(
            "rampart_bot_trading_state", "1 for the current trading state", labels=["state"]
        )
        for s in TradingState:
            state.add_metric([s.name], 1 if e.risk.state is s else 0)
        yield state
        yield GaugeMetricFamily(
            "rampart_bot_trading_state_code", "0 ACTIVE, 1 REDUCING, 2 HALTED", value=int(e.risk.state)
        )
        yield GaugeMetricFamily(
            "rampart_bot_exposure_quote",
            "Position plus open order notional, quote units",
            value=float(e.tracker.position_notional() + e.tracker.open_notional()),
        )
        pos = GaugeMetricFamily("rampart_bot_position", "Position in base units", labels=["symbol"])
        for sym in e.symbols:
            pos.add_metric([sym], float(e.tracker.position(sym)))
        yield pos
        pnl = GaugeMetricFamily("rampart_bot_pnl_quote", "PnL in quote units", labels=["period"])
        pnl.add_metric(["daily"], float(e.tracker.daily_pnl()))
        pnl.add_metric(["total"], float(e.tracker.total_pnl()))
        yield pnl
        yield GaugeMetricFamily(
            "rampart_bot_daily_loss_limit_quote",
            "Configured daily loss limit (positive, quote units); DailyLossNearLimit compares PnL with it",
            value=float(e.risk.limits.daily_loss_limit),
        )
        br = GaugeMetricFamily(
            "rampart_bot_circuit_breaker_state", "0 closed, 1 half-open, 2 open", labels=["breaker"]
        )
        for name, breaker in e.breakers.items():
            br.add_metric([name], int(breaker.state))
        yield br
        yield _labelled_counter(
            "rampart_bot_reconciliations", "Reconciliation runs by result", "result", m.reconciliations
        )
        yield _labelled_counter(
            "rampart_bot_reconcile_mismatches", "Differences found and corrected", "kind", m.mismatches
        )
        ready = GaugeMetricFamily(
            "rampart_bot_ready_check", "1 when a readiness check passes", labels=["check"]
        )
        checks = e.readiness_checks()
        for name, ok in checks.items():
            ready.add_metric([name], 1 if ok else 0)
        yield ready
        yield GaugeMetricFamily(
            "rampart_bot_ready", "1 when ready to trade", value=1 if all(checks.values()) else 0
        )
        yield CounterMetricFamily("rampart_bot_kill_switch", "Kill switch activations", value=m.kill_switch)
        yield GaugeMetricFamily(
            "rampart_bot_clock_offset_ms",
            "Venue clock minus local clock",
            value=e.rest.offset_ms if e.rest else 0,
        )
        yield GaugeMetricFamily(
            "rampart_bot_secrets_loaded", "1 when all secrets are loaded", value=1 if e.secrets_loaded else 0
        )


__all__ = ["Metrics", "BreakerState"]
