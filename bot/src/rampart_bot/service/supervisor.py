"""Supervision: start and graceful shutdown, the background tasks, readiness, automatic degradations,
the kill switch and the operator's state changes.

Trading states: the effective state is the worst of the operator/limit state and the degradations
(REST breaker open or a 429 back-off -> REDUCING; database failure -> HALTED until it answers again;
a ban or the daily loss limit fires the kill switch).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..adapters.binance_user import UserStreamClient
from ..adapters.binance_ws import MarketDataClient
from ..core.model import TradingState
from ..core.venue import CALL_FAILED
from .gateway import OrderGateway
from .keep_warm import KeepWarm
from .ledger import Ledger
from .reconciler import Reconciler
from .shared import Part, Shared

log = logging.getLogger("rampart_bot.engine")


class Supervisor(Part):
    def __init__(self, shared: Shared, ledger: Ledger, gateway: OrderGateway, reconciler: Reconciler) -> None:
        super().__init__(shared)
        self.ledger = ledger
        self.gateway = gateway
        self.reconciler = reconciler
        self.store = shared.store
        self.md: MarketDataClient | None = None
        self.user_stream: UserStreamClient | None = None
        self._bg: list[asyncio.Task[Any]] = []
        self.keep_warm: KeepWarm | None = None
        self._day = self._utc_day()
        shared.kill = self.kill

    # -- start / stop --------------------------------------------------------------------------
    async def start(self, md: MarketDataClient, user_stream: UserStreamClient | None) -> None:
        self.md = md
        self.user_stream = user_stream
        self._bg = [
            asyncio.create_task(md.run(), name="market-data"),
            asyncio.create_task(self.reconciler.run(), name="reconcile"),
            asyncio.create_task(self._poll_loop(), name="account-poll"),
        ]
        if user_stream is not None:
            self._bg.append(asyncio.create_task(user_stream.run(), name="user-data"))
        warm_ms = self.cfg.runtime.keep_warm_ms
        if warm_ms > 0:
            self.keep_warm = KeepWarm(self.shared)
            self._bg.append(asyncio.create_task(self.keep_warm.run(warm_ms / 1000), name="keep-warm"))
        self.shared.reconcile_wanted.set()
        if self.risk.manual_state is TradingState.HALTED:
            # A kill requested by config still cancels whatever the venue holds for us.
            self.shared.spawn(self.kill(self.risk.halt_reason or "config", force=True))

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop new orders, let in-flight requests settle, cancel open orders if configured, flush."""
        shared = self.shared
        shared.accepting = False
        if self.md is not None:
            await self.md.stop()
        if self.user_stream is not None:
            await self.user_stream.stop()
        pending = [t for t in shared.tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        if self.cfg.runtime.cancel_on_shutdown:
            await self.gateway.cancel_all(self.symbols)
            try:
                await self.reconciler.sync_account()
            except CALL_FAILED:
                log.warning("final account sync failed")
        for task in self._bg:
            task.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        self.ledger.save_expected_balances()  # the next start compares the venue with what we expect now
        for task in list(shared.tasks):
            task.cancel()
        await shared.notify()
        self.ledger.persist_event("shutdown", {"open_orders": len(self.tracker.open_orders())})

    # -- market data connection ----------------------------------------------------------------
    async def on_connected(self) -> None:
        # After every (re)connect the view may have gaps: refresh the book, reconcile before trading.
        self.shared.reconciled = False
        for symbol in self.symbols:
            self.shared.books[symbol].reset()
            self.shared.tapes[symbol].reset()
        self.shared.request_reconcile("connected")
        await self.shared.notify()

    def on_disconnected(self, reason: str) -> None:
        self.shared.reconciled = False
        self.ledger.persist_event("md_disconnected", {"reason": reason})
        self.shared.poke()

    # -- readiness -----------------------------------------------------------------------------
    def readiness_checks(self) -> dict[str, bool]:
        shared = self.shared
        return {
            "feed_fresh": bool(self.md is not None and self.md.is_fresh()),
            "reconciled": shared.reconciled,
            "db_reachable": shared.db_ok and self.breakers["db"].allow(),
            "secrets_loaded": shared.secrets_loaded,
        }

    def ready(self) -> bool:
        return all(self.readiness_checks().values())

    # -- periodic work -------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        interval = self.cfg.runtime.fill_poll_interval_s
        while True:
            await asyncio.sleep(interval)
            self._roll_day()
            await self._check_db()
            if self.shared.db_ok and self.store.dialect == "sqlite":
                try:
                    await asyncio.to_thread(self.store.checkpoint)
                except Exception as exc:  # noqa: BLE001
                    self.ledger.db_failed(exc)
            self._update_degradations()
            await self.reconciler.poll()
            await self.cancel_aged()
            await self.shared.notify()  # readiness is time-dependent: let waiters re-check

    async def cancel_aged(self) -> int:
        """Cancel our orders that have rested longer than runtime.order_max_age_s; returns how many."""
        max_age = self.cfg.runtime.order_max_age_s
        if max_age <= 0:
            return 0
        cutoff_ms = (self.clock() - max_age) * 1000
        resting = (o for o in self.tracker.open_orders() if o.exchange_order_id is not None)
        aged = [o for o in resting if o.created_ms < cutoff_ms]
        for order in aged:
            await self.gateway.cancel(order)
        return len(aged)

    async def _check_db(self) -> None:
        db = self.breakers["db"]
        if self.shared.db_ok and db.state == 0:
            return
        ok = await asyncio.to_thread(self.store.ping)
        if ok:
            db.success()
            self.shared.db_ok = True
            self.risk.recover("db")
            log.info("database reachable again")
        else:
            db.failure()

    def _update_degradations(self) -> None:
        if self.breakers["rest"].allow():
            self.risk.recover("rest")
        else:
            self.risk.degrade("rest", TradingState.REDUCING)
        if self.venue.backing_off():
            self.risk.degrade("rate_limit", TradingState.REDUCING)
        else:
            self.risk.recover("rate_limit")

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
            self.ledger.persist_event("kill_switch", {"reason": reason})
        cancelled = await self.gateway.cancel_all(self.symbols)
        await self.shared.notify()
        return {"state": self.risk.state.name, "newly_halted": changed, "cancelled": cancelled}

    def resume(self, actor: str = "operator") -> dict[str, Any]:
        if self.risk.loss_limit_breached(self.tracker):
            return {"ok": False, "error": "daily loss limit still breached", "state": self.risk.state.name}
        self.risk.set_manual_state(TradingState.ACTIVE)
        self.ledger.persist_event("resume", {"actor": actor})
        log.warning("trading resumed", extra={"actor": actor})
        self.shared.poke()
        return {"ok": True, "state": self.risk.state.name}

    def set_reducing(self, actor: str = "operator") -> dict[str, Any]:
        self.risk.set_manual_state(TradingState.REDUCING)
        self.ledger.persist_event("reducing", {"actor": actor})
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
