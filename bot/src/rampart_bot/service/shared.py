"""What the engine's parts share: their collaborators (venue, store, risk, tracker, market state,
metrics, breakers), the flags that gate trading and readiness, the tasks they spawn, the condition
waiters watch, and the two requests any part may make (reconcile, kill)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..adapters.binance_ws import ParseStats
from ..adapters.persistence import Store
from ..core.breaker import CircuitBreaker
from ..core.market import PriceBand, TopOfBook, TradeTape
from ..core.orders import OrderTracker
from ..core.risk import RiskEngine, SymbolRules
from ..core.venue import Venue
from .config import BotConfig
from .metrics import Metrics


@dataclass(eq=False)
class Shared:
    cfg: BotConfig
    venue: Venue
    store: Store
    risk: RiskEngine
    tracker: OrderTracker
    rules: dict[str, SymbolRules]  # replaced per symbol when the venue's rules arrive
    books: dict[str, TopOfBook]
    tapes: dict[str, TradeTape]
    bands: dict[str, PriceBand]
    metrics: Metrics
    parse_stats: ParseStats
    breakers: dict[str, CircuitBreaker]
    clock: Callable[[], float]
    reconciled: bool = False
    secrets_loaded: bool = False
    db_ok: bool = True
    accepting: bool = True  # False during graceful shutdown: no new orders, cancels still work
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    reconcile_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    # The supervisor's kill switch; parts that find a reason to halt (a ban, the loss limit) pull
    # it through here rather than knowing the supervisor.
    kill: Callable[[str], Coroutine[Any, Any, dict[str, Any]]] | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def poke(self) -> None:
        """Notify waiters from synchronous code."""
        self.spawn(self.notify())

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until predicate() holds; tests use this instead of sleeping."""

        async def _wait() -> None:
            async with self.changed:
                await self.changed.wait_for(predicate)

        await asyncio.wait_for(_wait(), timeout)

    def request_reconcile(self, reason: str) -> None:
        self.reconcile_wanted.set()

    def request_kill(self, reason: str) -> None:
        assert self.kill is not None, "no kill switch wired"
        self.spawn(self.kill(reason))


class Part:
    """Base of the engine's parts: short names for the collaborators most of them use."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.cfg = shared.cfg
        self.venue = shared.venue
        self.risk = shared.risk
        self.tracker = shared.tracker
        self.metrics = shared.metrics
        self.breakers = shared.breakers
        self.clock = shared.clock
        self.symbols = [s.symbol for s in shared.cfg.symbols]
