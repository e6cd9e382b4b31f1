"""The engine is the composition root: it builds the parts, wires them to the adapters, and keeps
the market-data hot path (frame -> book/tape -> strategy -> order gateway) in one place.

The parts, one job each:
- `Ledger` (ledger.py): local orders, fills and balances, moved by venue reports and persisted;
- `OrderGateway` (gateway.py): the pre-trade gate, persist-before-send, unknown outcomes, cancels;
- `Reconciler` (reconciler.py): start-up, on-demand and periodic agreement with the venue;
- `Supervisor` (supervisor.py): lifecycle, background tasks, readiness, degradations, kill switch.
They talk to the venue only through `core.venue.Venue` (Binance: `BinanceVenue`), in the bot's types.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from ..adapters.binance_rest import BinanceRest, BinanceVenue
from ..adapters.binance_user import UserStreamClient
from ..adapters.binance_ws import (
    SERVER_SHUTDOWN,
    YIELD_TO_LOOP,
    Backoff,
    ConnectLimiter,
    MarketDataClient,
    ParseStats,
    ServerShutdown,
    parse_market_message,
)
from ..adapters.persistence import Store
from ..core.breaker import CircuitBreaker
from ..core.market import BookMarks, PriceBand, TopOfBook, TradeTape
from ..core.model import BookTicker, Order, OrderIntent, Trade
from ..core.orders import ClientIdGenerator, OrderTracker
from ..core.risk import RiskEngine
from ..core.strategy import Strategy, build_strategy
from ..core.venue import Venue
from .config import BotConfig
from .gateway import OrderGateway
from .ledger import Ledger
from .metrics import Metrics
from .reconciler import Reconciler
from .shared import Shared
from .supervisor import Supervisor

log = logging.getLogger("rampart_bot.engine")

_perf_counter_ns = time.perf_counter_ns  # read per frame: one global lookup, not two
BAND_RESYNC_AFTER = 20  # consecutive out-of-band frames before the reference is re-taken from REST


def _forward(part: str, name: str) -> Any:
    """A read-write attribute that lives on one of the engine's parts."""
    return property(
        lambda self: getattr(getattr(self, part), name),
        lambda self, value: setattr(getattr(self, part), name, value),
    )


class Engine:
    def __init__(
        self,
        cfg: BotConfig,
        store: Store,
        rest: BinanceRest | None,
        strategy: Strategy | None = None,
        clock: Callable[[], float] = time.time,
        venue: Venue | None = None,
    ) -> None:
        """`rest`: the Binance client (listen keys for the user-data stream, and the venue unless
        `venue` is given). `venue`: any `core.venue.Venue`, e.g. an in-memory fake in tests."""
        self.cfg = cfg
        self.store = store
        self.rest = rest
        if venue is None:
            assert rest is not None, "Engine needs a venue or a Binance client"
            venue = BinanceVenue(rest)
        self.venue = venue
        self.clock = clock
        self.symbols = [s.symbol for s in cfg.symbols]
        self.rules = {s.symbol: s for s in cfg.symbols}
        first = cfg.symbols[0]
        self.strategy = strategy or build_strategy(cfg.strategy, cfg.strategy_params, first.tick_size)
        self.risk = RiskEngine(self.rules, cfg.limits)
        self.tracker = OrderTracker(
            ClientIdGenerator(cfg.runtime.client_id_prefix, int(clock() * 1000)),
            {s.symbol: s.quote_asset for s in cfg.symbols},
        )
        rt = cfg.runtime
        self.bands = {
            s: PriceBand(Decimal(str(rt.price_band)), Decimal(str(rt.max_price))) for s in self.symbols
        }
        self.books = {s: TopOfBook(s, self.bands[s], rt.max_seq_jump) for s in self.symbols}
        self.tracker.marks = BookMarks(self.books)
        self.tapes = {s: TradeTape(s, band=self.bands[s], max_jump=rt.max_seq_jump) for s in self.symbols}
        self.parse_stats = ParseStats()
        self.metrics = Metrics()
        mono = time.monotonic
        self.breakers = {
            "rest": CircuitBreaker("rest", mono, rt.breaker_failures, rt.breaker_reset_s),
            "db": CircuitBreaker("db", mono, 1, rt.breaker_reset_s),
            "vault": CircuitBreaker("vault", mono, rt.breaker_failures, rt.breaker_reset_s),
        }
        self.user_stream_enabled = cfg.venue.user_stream
        # One budget for every WebSocket we open: the venue counts connections per IP.
        self.connect_limiter = ConnectLimiter(rt.max_connects_per_5min, 300.0)

        self.shared = shared = Shared(
            cfg,
            self.venue,
            store,
            self.risk,
            self.tracker,
            self.rules,
            self.books,
            self.tapes,
            self.bands,
            self.metrics,
            self.parse_stats,
            self.breakers,
            clock,
        )
        self.ledger = Ledger(shared)
        self.gateway = OrderGateway(shared, self.ledger)
        self.reconciler = Reconciler(shared, self.ledger)
        self.supervisor = Supervisor(shared, self.ledger, self.gateway, self.reconciler)
        # The same objects the parts use, under the names callers (app, runtime, bench, tests) know.
        self.expected_balances = self.ledger.expected_balances
        self.venue_balances = self.ledger.venue_balances
        self.latency_samples = self.gateway.latency_samples
        self.ack_samples = self.gateway.ack_samples
        self.tick_to_ack_samples = self.gateway.tick_to_ack_samples
        self.changed = shared.changed
        self._tasks = shared.tasks
        self._submit = self.gateway.submit_intent  # bound once: the hot path makes one call per intent
        self._current_tick_ns = 0
        self.load_state = self.ledger.load
        self.sync_account = self.reconciler.sync_account
        self.reconcile = self.reconciler.reconcile
        self.readiness_checks = self.supervisor.readiness_checks
        self.ready = self.supervisor.ready
        self.kill = self.supervisor.kill
        self.resume = self.supervisor.resume
        self.set_reducing = self.supervisor.set_reducing
        self.status = self.supervisor.status
        self.shutdown = self.supervisor.shutdown
        self.wait_for = shared.wait_for
        self._on_connected = self.supervisor.on_connected
        if cfg.start_halted:
            self.risk.halt("config:start_halted")
        self.metrics.attach(self)

    # Flags and clients the parts own, under the names callers (app, bench, tests) read and set.
    reconciled = _forward("shared", "reconciled")
    accepting = _forward("shared", "accepting")
    secrets_loaded = _forward("shared", "secrets_loaded")
    db_ok = _forward("shared", "db_ok")
    md = _forward("supervisor", "md")
    user_stream = _forward("supervisor", "user_stream")

    # -- start ---------------------------------------------------------------------------------
    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Load state, connect the venue's streams (wss:// verified by `ssl_context`; None: the
        system trust store), start the background tasks."""
        self.load_state()
        rt = self.cfg.runtime
        md = MarketDataClient(
            self.cfg.venue.ws_url,
            self.symbols,
            self.on_raw,
            on_connected=self.supervisor.on_connected,
            on_disconnected=self.supervisor.on_disconnected,
            stale_after_s=rt.stale_after_s,
            backoff=Backoff(rt.reconnect_base_s, rt.reconnect_cap_s),
            healthy_after_s=rt.healthy_after_s,
            limiter=self.connect_limiter,
            ssl_context=ssl_context,
        )
        user_stream = None
        if self.user_stream_enabled and self.rest is not None:
            user_stream = UserStreamClient(
                self.rest,
                self.cfg.venue.ws_url,
                self.ledger.on_update,
                self.parse_stats,
                backoff=Backoff(rt.reconnect_base_s, rt.reconnect_cap_s),
                limiter=self.connect_limiter,
                healthy_after_s=rt.healthy_after_s,
                ssl_context=ssl_context,
            )
        await self.supervisor.start(md, user_stream)

    def submit_intent(self, intent: OrderIntent) -> Order | None:
        """Gate, persist, send (see OrderGateway.submit_intent)."""
        return self._submit(intent, self._current_tick_ns)

    # -- market data hot path ------------------------------------------------------------------
    def on_raw(self, raw: str | bytes) -> object:
        """The hot path, one function: parse -> book or tape -> strategy -> order (a call per frame
        saved). Returns the event, or YIELD_TO_LOOP once an order was placed (its send goes first)."""
        now_ns = self._current_tick_ns = _perf_counter_ns()
        event = parse_market_message(raw, self.parse_stats)
        cls = type(event)  # a dropped frame (None) matches no branch below and returns None
        if cls is BookTicker:
            book = self.books.get(event.symbol)  # type: ignore[union-attr]
            if book is None:
                self.parse_stats.drop("unknown_symbol", event)
            elif not book.apply(event, now_ns):  # type: ignore[arg-type]
                self._refused(book.reject, event, book.band)
            else:
                intent = self.strategy.on_book(book, self.tracker)
                if intent is not None and self._submit(intent, now_ns) is not None:
                    return YIELD_TO_LOOP
        elif cls is Trade:
            tape = self.tapes.get(event.symbol)  # type: ignore[union-attr]
            if tape is None:
                self.parse_stats.drop("unknown_symbol", event)
            elif not tape.apply(event):  # type: ignore[arg-type]
                self._refused(tape.reject, event, tape.band)
            else:
                intent = self.strategy.on_trade(tape, self.tracker)
                if intent is not None and self._submit(intent, now_ns) is not None:
                    return YIELD_TO_LOOP
        elif cls is ServerShutdown:
            log.info("venue announced serverShutdown; reconnecting")
            return SERVER_SHUTDOWN
        return event

    def _refused(self, reason: str, event: object, band: PriceBand) -> None:
        """A well-formed frame the book or tape refused: a replay is normal, anything else a feed fault."""
        if reason == "stale":
            return
        self.parse_stats.drop(reason, event)
        if reason == "price_out_of_band" and band.refused_in_row >= BAND_RESYNC_AFTER:
            # The stream keeps disagreeing with our reference price: let a REST snapshot decide.
            band.refused_in_row = 0
            band.clear()
            self.shared.reconciled = False
            self.shared.request_reconcile("price_band")
