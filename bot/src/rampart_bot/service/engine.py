"""The engine wires the pure core to the adapters: market data in, orders out, state persisted.

Order life cycle (the rules that prevent duplicate orders and lost fills):
1. risk check (synchronous) -> 2. the order with its client id is persisted -> 3. it is sent;
a 5xx/timeout makes it UNKNOWN, resolved by querying the same client id (and, if the venue never
saw it, by resending with the *same* id: the venue refuses duplicates, so at most one order exists);
fills are pulled from the account side and applied once per trade id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec

from ..adapters.binance_rest import (
    WEIGHT_HARD,
    WEIGHT_SOFT,
    BinanceRest,
    CancelRejected,
    ClockSkew,
    IpBanned,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    TransportError,
    UnknownOutcome,
    VenueError,
)
from ..adapters.binance_user import UserStreamClient
from ..adapters.binance_ws import (
    SERVER_SHUTDOWN,
    Backoff,
    ConnectLimiter,
    MarketDataClient,
    ParseStats,
    ServerShutdown,
    parse_market_message,
)
from ..adapters.persistence import Store
from ..adapters.venue_types import (
    ExecutionReport,
    ListenKeyExpired,
    OutboundAccountPosition,
    ServerShutdownEvent,
    decode_user_event,
)
from ..core.breaker import CircuitBreaker
from ..core.market import BookMarks, PriceBand, TopOfBook, TradeTape
from ..core.model import (
    BookTicker,
    Fill,
    Order,
    OrderIntent,
    OrderStatus,
    OrderType,
    Side,
    Trade,
    TradingState,
)
from ..core.orders import ClientIdGenerator, OrderTracker
from ..core.risk import RiskEngine
from ..core.strategy import Strategy, build_strategy
from .config import BotConfig
from .metrics import Metrics

log = logging.getLogger("rampart_bot.engine")

_VENUE_STATUS = {s.value: s for s in OrderStatus}
BAND_RESYNC_AFTER = 20
LANDING_MARGIN_MS = 1000
RESOLVE_QUERY_ATTEMPTS = 5  # consecutive out-of-band frames before the reference is re-taken from REST


class Engine:
    def __init__(
        self,
        cfg: BotConfig,
        store: Store,
        rest: BinanceRest,
        strategy: Strategy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.rest = rest
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
        rt = cfg.runtime
        self.breakers = {
            "rest": CircuitBreaker("rest", mono, rt.breaker_failures, rt.breaker_reset_s),
            "db": CircuitBreaker("db", mono, 1, rt.breaker_reset_s),
            "vault": CircuitBreaker("vault", mono, rt.breaker_failures, rt.breaker_reset_s),
        }
        self.md: MarketDataClient | None = None
        self.user_stream: UserStreamClient | None = None
        self.user_stream_enabled = cfg.venue.user_stream
        # One budget for every WebSocket we open: the venue counts connections per IP.
        self.connect_limiter = ConnectLimiter(cfg.runtime.max_connects_per_5min, 300.0)
        self.venue_balances: dict[str, Decimal] = {}  # latest outboundAccountPosition (informational)
        self.rules_loaded_monotonic: float | None = None
        self.overrides = cfg.symbol_overrides
        # Without exchangeInfo the bot trades only on rules the config gives completely.
        self.rules_complete_from_config = bool(self.overrides) and all(
            len(self.overrides.get(s, {})) == 6 for s in self.symbols
        )
        self.reconciled = False
        self.secrets_loaded = False
        self.db_ok = True
        self.accepting = True  # False during graceful shutdown: no new orders, cancels still work
        self.expected_balances: dict[str, Decimal] = {}
        self.latency_samples: deque[float] = deque(maxlen=100_000)  # tick-to-order, seconds (for the bench)
        self.ack_samples: deque[float] = deque(maxlen=100_000)
        self.tick_to_ack_samples: deque[float] = deque(maxlen=100_000)
        self.changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bg: list[asyncio.Task[Any]] = []
        self._reconcile_lock = asyncio.Lock()
        self._reconcile_wanted = asyncio.Event()
        self._current_tick_ns = 0
        self._day = self._utc_day()
        if cfg.start_halted:
            self.risk.halt("config:start_halted")
        self.metrics.attach(self)

    # -- start / stop --------------------------------------------------------------------------
    def load_state(self) -> None:
        """Rebuild orders, fills and positions from the database (the source of truth across restarts)."""
        for order in self.store.load_orders():
            self.tracker.add(order)
        self.tracker.load_fills(self.store.load_fills())
        self.metrics.fills = len(self.tracker.seen_trades)
        for asset, (free, locked) in self.store.load_balances().items():
            self.expected_balances[asset] = free + locked
        self.tracker.start_day()

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.load_state()
        self.md = MarketDataClient(
            session,
            self.cfg.venue.ws_url,
            self.symbols,
            self.on_raw,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            stale_after_s=self.cfg.runtime.stale_after_s,
            backoff=Backoff(self.cfg.runtime.reconnect_base_s, self.cfg.runtime.reconnect_cap_s),
            healthy_after_s=self.cfg.runtime.healthy_after_s,
            limiter=self.connect_limiter,
        )
        self._bg = [
            asyncio.create_task(self.md.run(), name="market-data"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._poll_loop(), name="account-poll"),
        ]
        if self.user_stream_enabled:
            self.user_stream = UserStreamClient(
                session,
                self.rest,
                self.cfg.venue.ws_url,
                self.on_user_raw,
                backoff=Backoff(self.cfg.runtime.reconnect_base_s, self.cfg.runtime.reconnect_cap_s),
                limiter=self.connect_limiter,
                healthy_after_s=self.cfg.runtime.healthy_after_s,
            )
            self._bg.append(asyncio.create_task(self.user_stream.run(), name="user-data"))
        self._reconcile_wanted.set()
        if self.risk.manual_state is TradingState.HALTED:
            # A kill requested by config still cancels whatever the venue holds for us.
            self._spawn(self.kill(self.risk.halt_reason or "config", force=True))

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop new orders, let in-flight requests settle, cancel open orders if configured, flush."""
        self.accepting = False
        if self.md is not None:
            await self.md.stop()
        if self.user_stream is not None:
            await self.user_stream.stop()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        if self.cfg.runtime.cancel_on_shutdown:
            await self._cancel_all_symbols()
            try:
                await self.sync_account()
            except (VenueError, TransportError, RateLimited):
                log.warning("final account sync failed")
        for task in self._bg:
            task.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        self._save_expected_balances()  # the next start compares the venue with what we expect now
        for task in list(self._tasks):
            task.cancel()
        await self._notify()
        self._persist_event("shutdown", {"open_orders": len(self.tracker.open_orders())})

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def _poke(self) -> None:
        """Notify waiters from synchronous code."""
        self._spawn(self._notify())

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until predicate() holds; tests use this instead of sleeping."""

        async def _wait() -> None:
            async with self.changed:
                await self.changed.wait_for(predicate)

        await asyncio.wait_for(_wait(), timeout)

    # -- readiness -----------------------------------------------------------------------------
    def readiness_checks(self) -> dict[str, bool]:
        return {
            "feed_fresh": bool(self.md is not None and self.md.is_fresh()),
            "reconciled": self.reconciled,
            "db_reachable": self.db_ok and self.breakers["db"].allow(),
            "secrets_loaded": self.secrets_loaded,
        }

    def ready(self) -> bool:
        return all(self.readiness_checks().values())

    # -- market data hot path ------------------------------------------------------------------
    def on_raw(self, raw: str | bytes) -> object:
        self._current_tick_ns = time.perf_counter_ns()
        event = parse_market_message(raw, self.parse_stats)
        if event is None:
            return None
        cls = type(event)
        if cls is BookTicker:
            self._on_book(event)  # type: ignore[arg-type]
        elif cls is Trade:
            self._on_trade(event)  # type: ignore[arg-type]
        elif cls is ServerShutdown:
            log.info("venue announced serverShutdown; reconnecting")
            return SERVER_SHUTDOWN
        return event

    def _on_book(self, tick: BookTicker) -> None:
        book = self.books.get(tick.symbol)
        if book is None:
            self.parse_stats.drop("unknown_symbol", tick)
            return
        if not book.apply(tick, self._current_tick_ns):
            self._refused(book.reject, tick, book.band)
            return
        intent = self.strategy.on_book(book, self.tracker)
        if intent is not None:
            self.submit_intent(intent)

    def _on_trade(self, trade: Trade) -> None:
        tape = self.tapes.get(trade.symbol)
        if tape is None:
            self.parse_stats.drop("unknown_symbol", trade)
            return
        if not tape.apply(trade):
            self._refused(tape.reject, trade, tape.band)
            return
        intent = self.strategy.on_trade(tape, self.tracker)
        if intent is not None:
            self.submit_intent(intent)

    def _refused(self, reason: str, event: object, band: PriceBand) -> None:
        """A well-formed frame the book or tape refused: a replay is normal, anything else a feed fault."""
        if reason == "stale":
            return
        self.parse_stats.drop(reason, event)
        if reason == "price_out_of_band" and band.refused_in_row >= BAND_RESYNC_AFTER:
            # The stream keeps disagreeing with our reference price: let a REST snapshot decide.
            band.refused_in_row = 0
            band.clear()
            self.reconciled = False
            self._request_reconcile("price_band")

    # -- order path ----------------------------------------------------------------------------
    def submit_intent(self, intent: OrderIntent) -> Order | None:
        """Risk gate, persist, then hand to an async sender. Returns the order if one was created."""
        if not self.accepting:
            self.metrics.reject("shutting_down")
            return None
        if not self.reconciled:
            self.metrics.reject("not_reconciled")
            return None
        if not self.breakers["rest"].allow():
            self.metrics.reject("breaker_rest")
            return None
        if not self.breakers["db"].allow():
            self.metrics.reject("breaker_db")
            return None
        if self.rest.weight_ratio() >= WEIGHT_HARD:
            # Close to the venue's request-weight limit: refuse locally before it answers 429.
            self.metrics.reject("weight_budget")
            return None
        decision = self.risk.check(intent, self.tracker, time.monotonic())
        if not decision.approved:
            self.metrics.reject(decision.reason)
            return None
        order = self.tracker.create(intent, int(self.clock() * 1000))
        try:
            self.store.insert_order(order)  # persisted BEFORE it can be sent
        except Exception as exc:  # noqa: BLE001 - any DB failure must stop trading, not crash
            self._db_failed(exc)
            self.tracker.transition(order, OrderStatus.REJECTED, order.created_ms, reason="db_unavailable")
            self.metrics.reject("db_unavailable")
            return None
        self.tracker.in_flight.add(order.client_order_id)
        self._spawn(self._send(order, self._current_tick_ns))
        return order

    async def _send(self, order: Order, tick_ns: int = 0) -> None:
        if tick_ns:
            # Tick-to-order: from the frame's arrival to the request being issued (the HTTP write
            # happens synchronously inside new_order on a kept-alive connection).
            elapsed = (time.perf_counter_ns() - tick_ns) / 1e9
            self.metrics.tick_to_order.observe(elapsed)
            self.latency_samples.append(elapsed)
        try:
            await self._send_until_known(order, tick_ns)
        finally:
            self.tracker.in_flight.discard(order.client_order_id)
            await self._notify()
        if self.risk.state is TradingState.HALTED and order.status.is_open and order.exchange_order_id:
            # Accepted after the kill switch fired: cancel it too.
            await self._cancel(order)

    async def _send_until_known(self, order: Order, tick_ns: int = 0) -> None:
        attempts = self.cfg.runtime.max_submit_attempts
        while order.submit_attempts < attempts:
            if order.submit_attempts:
                # A resend: stamp it, so the "could it still land?" deadline starts again from here.
                order.updated_ms = int(self.clock() * 1000)
                self._save(order)
            order.submit_attempts += 1
            t0 = time.perf_counter()
            try:
                resp = await self.rest.new_order(order)
            except UnknownOutcome as exc:
                self.metrics.venue_error("unknown_outcome")
                self.breakers["rest"].failure()
                self._transition(order, OrderStatus.UNKNOWN, reason=str(exc.cause)[:200])
                order.updated_ms = int(self.clock() * 1000)
                self._save(order)
                log.warning("order outcome unknown", extra={"client_order_id": order.client_order_id})
                if await self._resolve(order) is not False:
                    return  # known at the venue, or still unknown: reconciliation owns it
                continue  # proven absent (its request can no longer be accepted): resend is safe
            except OrderRejected as exc:
                self.breakers["rest"].success()
                if "Duplicate" in exc.msg:
                    # The venue already has this id open (an earlier attempt landed): learn its state.
                    await self._resolve(order)
                    return
                self.metrics.venue_error("rejected")
                self.metrics.reject(f"venue_{exc.code}")
                self._transition(order, OrderStatus.REJECTED, reason=exc.msg[:200])
                return
            except IpBanned as exc:
                self.metrics.venue_error("ip_banned")
                self._transition(order, OrderStatus.REJECTED, reason="ip_banned")
                self._spawn(self.kill(f"venue_ip_ban(retry_after={exc.retry_after_s}s)"))
                return
            except RateLimited:
                self.metrics.venue_error("rate_limited")
                self.metrics.reject("rate_limited")
                self._transition(order, OrderStatus.REJECTED, reason="rate_limited")
                return
            except ClockSkew:
                self.metrics.venue_error("clock_skew")
                self._transition(order, OrderStatus.REJECTED, reason="clock_skew")
                return
            except VenueError as exc:
                self.metrics.venue_error(f"code_{exc.code}")
                self._transition(order, OrderStatus.REJECTED, reason=exc.msg[:200])
                return
            ack = time.perf_counter() - t0
            self.metrics.order_ack.observe(ack)
            self.ack_samples.append(ack)
            if tick_ns and order.submit_attempts == 1:
                self.tick_to_ack_samples.append((time.perf_counter_ns() - tick_ns) / 1e9)
            self.metrics.orders_submitted += 1
            self.breakers["rest"].success()
            self._apply_venue_order(order, resp)
            return
        # Attempts exhausted and still unknown: reconciliation owns it now.
        self._request_reconcile("unresolved_order")

    def _landing_deadline_ms(self, order: Order) -> int:
        """Local time after which a request for this order can no longer be accepted by the venue.

        The venue refuses a request whose timestamp is older than recvWindow when it processes it;
        `updated_ms` is stamped no earlier than the last send's timestamp (persisted before sending
        and on every resend), plus a margin for our clock-offset estimate.
        """
        return order.updated_ms + self.cfg.venue.recv_window_ms + LANDING_MARGIN_MS

    async def _resolve(self, order: Order) -> bool | None:
        """Settle an UNKNOWN order by querying its client id.

        True: the venue knows it (state applied). False: proven absent, i.e. the venue said "no such
        order" *after* the request could no longer land (a not-found before that may just be lag).
        None: still unknown (queries failing): never resend; reconciliation keeps trying.
        """
        delay = 0.05
        failures = 0
        while True:
            try:
                resp = await self.rest.query_order(order.symbol, order.client_order_id)
            except OrderNotFound:
                wait_ms = self._landing_deadline_ms(order) - int(self.clock() * 1000)
                if wait_ms <= 0:
                    return False
                # Not found *yet*: the request may still be queued at the venue. Ask again later.
                await asyncio.sleep(min(wait_ms / 1000, max(delay, 0.05)))
                delay = min(delay * 2, 1.0)
                continue
            except (TransportError, VenueError, RateLimited) as exc:
                failures += 1
                self.metrics.venue_error("query_failed")
                log.warning(
                    "order query failed", extra={"client_order_id": order.client_order_id, "error": str(exc)}
                )
                if failures >= RESOLVE_QUERY_ATTEMPTS:
                    self._request_reconcile("unresolved_order")
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self._apply_venue_order(order, resp)
            return True

    def _apply_venue_order(self, order: Order, resp: dict[str, Any]) -> None:
        status = _VENUE_STATUS.get(str(resp.get("status")))
        if status is None:
            # An ACK answer (ids only): the venue has it; the stream or a query brings the state.
            status = (
                OrderStatus.NEW
                if order.status in (OrderStatus.PENDING, OrderStatus.UNKNOWN)
                else order.status
            )
        try:
            executed = Decimal(str(resp.get("executedQty", "0")))
        except ArithmeticError:
            executed = None
        self._transition(order, status, exchange_order_id=resp.get("orderId"), executed_qty=executed)
        fills = resp.get("fills")
        if fills and order.exchange_order_id is not None:
            when = int(resp.get("transactTime", 0) or self.clock() * 1000)
            for f in fills:
                self._apply_fill(
                    Fill(
                        symbol=order.symbol,
                        trade_id=int(f["tradeId"]),
                        order_id=order.exchange_order_id,
                        client_order_id=order.client_order_id,
                        side=order.side,
                        price=Decimal(f["price"]),
                        qty=Decimal(f["qty"]),
                        commission=Decimal(f["commission"]),
                        commission_asset=f["commissionAsset"],
                        time_ms=when,
                    ),
                    order,
                )
            self._check_loss_limit()
        if not self.tracker.fills_complete(order):
            self._spawn(self._fetch_order_fills(order))

    def _transition(self, order: Order, status: OrderStatus, **kw: Any) -> None:
        try:
            changed = self.tracker.transition(order, status, int(self.clock() * 1000), **kw)
        except Exception:  # InvalidTransition: log, keep state, never crash the pipeline
            log.exception("invalid order transition", extra={"client_order_id": order.client_order_id})
            return
        if changed:
            self._save(order)
            self._poke()

    def _save(self, order: Order) -> None:
        if not self.breakers["db"].allow():
            return
        try:
            self.store.save_order(order)
        except Exception as exc:  # noqa: BLE001
            self._db_failed(exc)

    def _db_failed(self, exc: BaseException) -> None:
        self.breakers["db"].failure()
        self.db_ok = False
        self.risk.degrade("db", TradingState.HALTED)
        log.error("database failure; trading halted until it recovers", extra={"error": repr(exc)[:300]})

    # -- fills ---------------------------------------------------------------------------------
    def _apply_trade_row(self, row: dict[str, Any], order: Order | None = None) -> bool:
        symbol = row["symbol"]
        if order is None:
            order = self.tracker.by_exchange_id.get((symbol, int(row["orderId"])))
        fill = Fill(
            symbol=symbol,
            trade_id=int(row["id"]),
            order_id=int(row["orderId"]),
            client_order_id=order.client_order_id if order else "",
            side=Side.BUY if row.get("isBuyer") else Side.SELL,
            price=Decimal(row["price"]),
            qty=Decimal(row["qty"]),
            commission=Decimal(row.get("commission", "0")),
            commission_asset=str(row.get("commissionAsset", "")),
            time_ms=int(row.get("time", 0)),
        )
        return self._apply_fill(fill, order)

    def _apply_fill(self, fill: Fill, order: Order | None) -> bool:
        """Apply a fill once, whichever source brought it (order answer, user-data stream, myTrades)."""
        if not self.tracker.apply_fill(fill):
            return False
        symbol = fill.symbol
        self.metrics.fills += 1
        if order is None:
            self.metrics.mismatch("fill_for_unknown_order")
        try:
            self.store.insert_fill(fill)
            self.store.save_position(symbol, self.tracker.positions[symbol])
        except Exception as exc:  # noqa: BLE001
            self._db_failed(exc)
        rules = self.rules.get(symbol)
        if rules is not None and rules.base_asset in self.expected_balances:
            signed = fill.qty if fill.side is Side.BUY else -fill.qty
            self.expected_balances[rules.base_asset] += signed
            self.expected_balances[rules.quote_asset] = self.expected_balances.get(
                rules.quote_asset, Decimal(0)
            ) - (signed * fill.price)
            if fill.commission_asset in self.expected_balances:
                self.expected_balances[fill.commission_asset] -= fill.commission
            # Persist what we now expect, so a restart compares the venue with *this*, not with the
            # balances of the last reconciliation (which would be a false mismatch on every deploy).
            self._save_expected_balances()
        self._poke()
        return True

    def _save_expected_balances(self) -> None:
        if not self.breakers["db"].allow():
            return
        try:
            self.store.save_balances({a: (v, Decimal(0)) for a, v in self.expected_balances.items()})
        except Exception as exc:  # noqa: BLE001
            self._db_failed(exc)

    async def _fetch_order_fills(self, order: Order) -> None:
        if order.exchange_order_id is None:
            return
        try:
            rows = await self.rest.my_trades(order.symbol, order_id=order.exchange_order_id)
        except (VenueError, TransportError, RateLimited):
            return  # the poll loop retries
        for row in rows:
            self._apply_trade_row(row, order)
        self._check_loss_limit()

    async def sync_account(self) -> None:
        """Pull new fills and settle orders the venue no longer lists as open."""
        for symbol in self.symbols:
            last = self.tracker.max_trade_id.get(symbol)
            from_id = last + 1 if last is not None else None
            rows = await self.rest.my_trades(symbol, from_id=from_id)
            for row in rows:
                self._apply_trade_row(row)
            venue_open = {o["clientOrderId"]: o for o in await self.rest.open_orders(symbol)}
            for order in self.tracker.open_orders(symbol):
                if order.client_order_id in self.tracker.in_flight:
                    continue
                remote = venue_open.pop(order.client_order_id, None)
                if remote is not None:
                    self._apply_venue_order(order, remote)
                    continue
                await self._settle_missing(order)
            for cid, remote in venue_open.items():
                local = self.tracker.orders.get(cid)
                if local is not None and local.client_order_id in self.tracker.in_flight:
                    continue
                self._adopt(remote, local)
            # Late fills: the venue says executed, we have not seen all trades yet.
            for order in list(self.tracker.orders.values()):
                if (
                    order.symbol == symbol
                    and order.exchange_order_id
                    and not self.tracker.fills_complete(order)
                ):
                    await self._fetch_order_fills(order)
        self._check_loss_limit()

    async def _settle_missing(self, order: Order) -> None:
        """A locally open order the venue does not list as open: find out what happened."""
        try:
            resp = await self.rest.query_order(order.symbol, order.client_order_id)
        except OrderNotFound:
            if order.status in (OrderStatus.PENDING, OrderStatus.UNKNOWN):
                if int(self.clock() * 1000) < self._landing_deadline_ms(order):
                    return  # its request may still land (venue lag): ask again next round
                # Never reached the venue (crash before send, or a 5xx before acceptance).
                self.metrics.mismatch("order_not_at_venue")
                self._transition(order, OrderStatus.REJECTED, reason="not_at_venue")
                self._persist_event("order_not_at_venue", {"client_order_id": order.client_order_id})
            else:
                self.metrics.mismatch("open_order_vanished")
                self._transition(order, OrderStatus.EXPIRED, reason="vanished")
            return
        if (
            order.status not in (OrderStatus.PENDING, OrderStatus.UNKNOWN)
            and resp.get("status") != order.status
        ):
            self.metrics.mismatch("order_status")
        self._apply_venue_order(order, resp)

    def _adopt(self, remote: dict[str, Any], local: Order | None) -> None:
        """The venue has an open order we think is closed or never knew: take the venue's word."""
        cid = remote["clientOrderId"]
        self.metrics.mismatch("unknown_open_order" if local is None else "order_reopened")
        self._persist_event("order_adopted", {"client_order_id": cid, "status": remote.get("status")})
        status = _VENUE_STATUS.get(remote.get("status", ""), OrderStatus.NEW)
        order = Order(
            client_order_id=cid,
            symbol=remote["symbol"],
            side=Side(remote["side"]),
            order_type=_order_type(remote.get("type", "LIMIT")),
            qty=Decimal(remote["origQty"]),
            price=Decimal(remote["price"]) if Decimal(remote["price"]) else None,
            status=status,
            exchange_order_id=remote.get("orderId"),
            executed_qty=Decimal(remote.get("executedQty", "0")),
            created_ms=int(remote.get("time", 0)),
            updated_ms=int(self.clock() * 1000),
            reason="adopted",
        )
        if local is not None:
            self.tracker.forget(local)
        self.tracker.add(order)
        self._save(order)

    # -- reconciliation ------------------------------------------------------------------------
    async def _on_connected(self) -> None:
        # After every (re)connect the view may have gaps: refresh the book, reconcile before trading.
        self.reconciled = False
        for symbol in self.symbols:
            self.books[symbol].reset()
            self.tapes[symbol].reset()
        self._request_reconcile("connected")
        await self._notify()

    def _on_disconnected(self, reason: str) -> None:
        self.reconciled = False
        self._persist_event("md_disconnected", {"reason": reason})
        self._poke()

    def _request_reconcile(self, reason: str) -> None:
        self._reconcile_wanted.set()

    async def _reconcile_loop(self) -> None:
        backoff = Backoff(0.05, 5.0)
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            try:
                await self.reconcile()
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - keep trying; readiness stays false meanwhile
                self.metrics.reconciliations["failed"] = self.metrics.reconciliations.get("failed", 0) + 1
                log.warning("reconciliation failed", extra={"error": repr(exc)[:300]})
                await asyncio.sleep(backoff.next_delay())
                self._reconcile_wanted.set()

    async def reconcile(self) -> None:
        async with self._reconcile_lock:
            self.reconciled = False
            await self.rest.sync_time()
            await self._maybe_refresh_rules(required=True)
            await self._catch_up_books()
            await self.sync_account()
            await self._reconcile_balances()
            self.reconciled = True
            self.metrics.reconciliations["ok"] = self.metrics.reconciliations.get("ok", 0) + 1
            self._persist_event("reconciled", {"open_orders": len(self.tracker.open_orders())})
        log.info("reconciled", extra={"open_orders": len(self.tracker.open_orders())})
        await self._notify()

    async def _catch_up_books(self) -> None:
        for symbol in self.symbols:
            snap = await self.rest.book_ticker(symbol)
            book = self.books[symbol]
            book.reset()
            # The REST snapshot is the trusted reference after a (re)connect; it is still checked
            # (positive, not crossed, under the absolute ceiling) before it counts.
            book.band.clear()
            tick = BookTicker(
                symbol,
                -1,  # no usable update id: the stream's next id becomes the baseline
                Decimal(snap["bidPrice"]),
                snap["bidQty"],
                Decimal(snap["askPrice"]),
                snap["askQty"],
            )
            if not book.apply(tick, time.perf_counter_ns()):
                self.parse_stats.drop(f"rest_book_{book.reject}", snap)
                raise VenueError(200, None, f"{symbol} book snapshot refused: {book.reject}")

    async def _reconcile_balances(self) -> None:
        account = await self.rest.account()
        assets = {r.base_asset for r in self.cfg.symbols} | {r.quote_asset for r in self.cfg.symbols}
        actual: dict[str, tuple[Decimal, Decimal]] = {}
        for row in account.get("balances", []):
            if row["asset"] in assets:
                actual[row["asset"]] = (Decimal(row["free"]), Decimal(row["locked"]))
        for asset in sorted(assets):
            free, locked = actual.get(asset, (Decimal(0), Decimal(0)))
            total = free + locked
            expected = self.expected_balances.get(asset)
            if expected is not None and expected != total:
                self.metrics.mismatch("balance")
                log.warning(
                    "balance mismatch corrected",
                    extra={"asset": asset, "expected": str(expected), "actual": str(total)},
                )
                self._persist_event(
                    "balance_mismatch", {"asset": asset, "expected": expected, "actual": total}
                )
            self.expected_balances[asset] = total
        try:
            self.store.save_balances(actual)
        except Exception as exc:  # noqa: BLE001
            self._db_failed(exc)

    # -- symbol rules from exchangeInfo -------------------------------------------------------
    async def _maybe_refresh_rules(self, required: bool = False) -> None:
        due = (
            self.rules_loaded_monotonic is None
            or time.monotonic() - self.rules_loaded_monotonic >= self.cfg.venue.rules_refresh_s
        )
        if not due:
            return
        try:
            info = await self.rest.exchange_info(self.symbols)
        except (VenueError, TransportError, RateLimited) as exc:
            log.warning("exchangeInfo failed", extra={"error": str(exc)[:200]})
            if required and self.rules_loaded_monotonic is None and not self.rules_complete_from_config:
                raise  # no rules at all yet: not ready to trade
            return
        self.apply_exchange_info(info)

    def apply_exchange_info(self, info: dict[str, Any]) -> None:
        """Venue filters become the symbol rules; keys set in the config file override them."""
        by_symbol = {row["symbol"]: row for row in info.get("symbols", [])}
        missing = [s for s in self.symbols if s not in by_symbol]
        if missing and not self.rules_complete_from_config:
            raise VenueError(200, -1121, f"exchangeInfo lacks symbols {missing}")
        for symbol in self.symbols:
            row = by_symbol.get(symbol)
            if row is None:
                continue
            venue = _rules_from_filters(row)
            max_price = venue.pop("max_price", None)
            if row.get("status") not in (None, "TRADING"):
                log.warning(
                    "symbol not trading at the venue", extra={"symbol": symbol, "status": row["status"]}
                )
            new = dataclasses.replace(self.rules[symbol], **{**venue, **self.overrides.get(symbol, {})})
            if new != self.rules[symbol]:
                log.info("symbol rules from exchangeInfo", extra={"symbol": symbol, "rules": str(new)})
            self.rules[symbol] = new
            self.risk.rules[symbol] = new
            band = self.bands[symbol]
            if max_price and max_price < band.max_price:
                band.max_price = max_price
        self.rules_loaded_monotonic = time.monotonic()

    # -- user-data stream ----------------------------------------------------------------------
    def on_user_raw(self, raw: str | bytes) -> object:
        """One user-data frame: execution reports move orders and bring fills; never raises."""
        try:
            event = decode_user_event(raw)
        except msgspec.MsgspecError:
            self.parse_stats.drop("user_event_invalid", raw)
            return None
        kind = type(event)
        if kind is ExecutionReport:
            self._on_execution_report(event, raw)  # type: ignore[arg-type]
        elif kind is OutboundAccountPosition:
            for b in event.B:  # type: ignore[union-attr]
                self.venue_balances[b.a] = Decimal(b.f) + Decimal(b.l)
        elif kind is ListenKeyExpired or kind is ServerShutdownEvent:
            log.warning("user-data stream ends (%s); reconnecting", kind.__name__)
            return "listenKeyExpired"
        return None

    def _on_execution_report(self, ev: ExecutionReport, raw: str | bytes) -> None:
        cid = ev.C if ev.x == "CANCELED" and ev.C else ev.c
        order = self.tracker.orders.get(cid) or self.tracker.by_exchange_id.get((ev.s, ev.i))
        if ev.x == "TRADE":
            price = Decimal(ev.L)
            qty = Decimal(ev.l)
            if ev.t < 0 or price <= 0 or qty <= 0 or ev.S not in ("BUY", "SELL"):
                self.parse_stats.drop("user_event_bad_trade", raw)
                return
            if order is not None and order.exchange_order_id is None:
                self._transition(order, order.status, exchange_order_id=ev.i)
            fill = Fill(
                symbol=ev.s,
                trade_id=ev.t,
                order_id=ev.i,
                client_order_id=order.client_order_id if order else "",
                side=Side(ev.S),
                price=price,
                qty=qty,
                commission=Decimal(ev.n) if ev.n else Decimal(0),
                commission_asset=ev.N or "",
                time_ms=ev.T,
            )
            self._apply_fill(fill, order)
            self._check_loss_limit()
        if order is None:
            return  # not ours (or not yet known): reconciliation adopts or ignores it
        status = _VENUE_STATUS.get(ev.X)
        if status is None:
            self.parse_stats.drop("user_event_bad_status", raw)
            return
        self._transition(order, status, exchange_order_id=ev.i, executed_qty=Decimal(ev.z))

    # -- periodic work -------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        interval = self.cfg.runtime.fill_poll_interval_s
        while True:
            await asyncio.sleep(interval)
            self._roll_day()
            await self._check_db()
            if self.db_ok and self.store.dialect == "sqlite":
                try:
                    await asyncio.to_thread(self.store.checkpoint)
                except Exception as exc:  # noqa: BLE001
                    self._db_failed(exc)
            self._update_degradations()
            if not self.reconciled or not self.breakers["rest"].allow():
                await self._notify()  # readiness is time-dependent: let waiters re-check
                continue
            if self.rest.weight_ratio() >= WEIGHT_SOFT:
                self.metrics.venue_error("weight_soft_limit")  # skip a round: slow down before a 429
                await self._notify()
                continue
            await self._maybe_refresh_rules()
            try:
                await self.sync_account()
                self.breakers["rest"].success()
            except IpBanned as exc:
                self.metrics.venue_error("ip_banned")
                await self.kill(f"venue_ip_ban(retry_after={exc.retry_after_s}s)")
            except RateLimited:
                self.metrics.venue_error("rate_limited")
            except (VenueError, TransportError) as exc:
                self.breakers["rest"].failure()
                self.metrics.venue_error("poll_failed")
                log.warning("account poll failed", extra={"error": str(exc)[:200]})
            await self._notify()

    async def _check_db(self) -> None:
        if self.db_ok and self.breakers["db"].state == 0:
            return
        ok = await asyncio.to_thread(self.store.ping)
        if ok:
            self.breakers["db"].success()
            self.db_ok = True
            self.risk.recover("db")
            log.info("database reachable again")
        else:
            self.breakers["db"].failure()

    def _update_degradations(self) -> None:
        rest = self.breakers["rest"]
        if rest.allow():
            self.risk.recover("rest")
        else:
            self.risk.degrade("rest", TradingState.REDUCING)
        if self.rest.blocked_until > time.monotonic():
            self.risk.degrade("rate_limit", TradingState.REDUCING)
        else:
            self.risk.recover("rate_limit")

    def _check_loss_limit(self) -> None:
        if self.risk.manual_state is not TradingState.HALTED and self.risk.loss_limit_breached(self.tracker):
            self._spawn(self.kill("daily_loss_limit"))

    def _roll_day(self) -> None:
        day = self._utc_day()
        if day != self._day:
            self._day = day
            self.tracker.start_day()

    def _utc_day(self) -> int:
        return int(self.clock() // 86400)

    # -- operator actions ----------------------------------------------------------------------
    async def kill(self, reason: str, force: bool = False) -> dict[str, Any]:
        """Kill switch: HALTED + cancel-all. Safe to call any number of times."""
        changed = self.risk.halt(reason)
        if changed:
            self.metrics.kill_switch += 1
            log.error("kill switch", extra={"reason": reason})
            self._persist_event("kill_switch", {"reason": reason})
        cancelled = await self._cancel_all_symbols()
        await self._notify()
        return {"state": self.risk.state.name, "newly_halted": changed, "cancelled": cancelled}

    async def _cancel_all_symbols(self) -> int:
        cancelled = 0
        for symbol in self.symbols:
            try:
                rows = await self.rest.cancel_all(symbol)
            except (VenueError, TransportError, RateLimited) as exc:
                self.metrics.venue_error("cancel_all_failed")
                log.error(
                    "cancel-all failed; will retry on next kill/reconcile", extra={"error": str(exc)[:200]}
                )
                self._request_reconcile("cancel_failed")
                continue
            for row in rows:
                order = self.tracker.orders.get(row.get("clientOrderId", ""))
                if order is not None:
                    self._apply_venue_order(order, row)
                cancelled += 1
        return cancelled

    async def _cancel(self, order: Order) -> None:
        try:
            resp = await self.rest.cancel_order(order.symbol, order.client_order_id)
            self._apply_venue_order(order, resp)
        except CancelRejected:
            # Already closed (often: filled). Query so a racing fill is never lost.
            try:
                self._apply_venue_order(
                    order, await self.rest.query_order(order.symbol, order.client_order_id)
                )
            except (VenueError, TransportError, RateLimited):
                self._request_reconcile("cancel_race")
        except (VenueError, TransportError, RateLimited):
            self._request_reconcile("cancel_failed")

    def resume(self, actor: str = "operator") -> dict[str, Any]:
        if self.risk.loss_limit_breached(self.tracker):
            return {"ok": False, "error": "daily loss limit still breached", "state": self.risk.state.name}
        self.risk.set_manual_state(TradingState.ACTIVE)
        self._persist_event("resume", {"actor": actor})
        log.warning("trading resumed", extra={"actor": actor})
        self._poke()
        return {"ok": True, "state": self.risk.state.name}

    def set_reducing(self, actor: str = "operator") -> dict[str, Any]:
        self.risk.set_manual_state(TradingState.REDUCING)
        self._persist_event("reducing", {"actor": actor})
        return {"ok": True, "state": self.risk.state.name}

    def status(self) -> dict[str, Any]:
        return {
            "state": self.risk.state.name,
            "manual_state": self.risk.manual_state.name,
            "halt_reason": self.risk.halt_reason,
            "degradations": {k: v.name for k, v in self.risk.degradations.items()},
            "ready": self.readiness_checks(),
            "positions": {s: str(self.tracker.position(s)) for s in self.symbols},
            "open_orders": [
                {
                    "client_order_id": o.client_order_id,
                    "symbol": o.symbol,
                    "side": o.side.value,
                    "status": o.status.value,
                }
                for o in self.tracker.open_orders()
            ],
            "in_flight": len(self.tracker.in_flight),
            "daily_pnl": str(self.tracker.daily_pnl()),
            "breakers": {k: b.state.name for k, b in self.breakers.items()},
        }

    def _persist_event(self, kind: str, detail: dict[str, Any]) -> None:
        if not self.breakers["db"].allow():
            return
        try:
            self.store.log_event(kind, detail)
        except Exception as exc:  # noqa: BLE001
            self._db_failed(exc)


def _order_type(value: str) -> OrderType:
    try:
        return OrderType(value)
    except ValueError:
        return OrderType.LIMIT  # other venue types (STOP_LOSS_LIMIT, ...) rest like a limit


_FILTER_FIELDS = {
    "PRICE_FILTER": (("tickSize", "tick_size"), ("maxPrice", "max_price")),
    "LOT_SIZE": (("stepSize", "step_size"), ("minQty", "min_qty"), ("maxQty", "max_qty")),
    "MIN_NOTIONAL": (("minNotional", "min_notional"),),
    "NOTIONAL": (("minNotional", "min_notional"), ("maxNotional", "max_notional")),
}


def _rules_from_filters(row: dict[str, Any]) -> dict[str, Any]:
    """exchangeInfo filters -> SymbolRules fields (a zero means "no limit" at Binance: skipped)."""
    out: dict[str, Any] = {"base_asset": row["baseAsset"], "quote_asset": row["quoteAsset"]}
    for f in row.get("filters", []):
        fields = _FILTER_FIELDS.get(f.get("filterType", ""))
        if fields is None:
            continue
        for venue_key, ours in fields:
            value = f.get(venue_key)
            if not isinstance(value, str):
                continue
            try:
                d = Decimal(value)
            except ArithmeticError:
                continue
            if d.is_finite() and d > 0:
                out[ours] = d.normalize() if ours in ("tick_size", "step_size") else d
    return out
