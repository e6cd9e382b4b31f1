"""A small circuit breaker with an injected clock, so it stays pure and testable."""

from __future__ import annotations

import enum
from collections.abc import Callable


class BreakerState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self, name: str, clock: Callable[[], float], failure_threshold: int = 5, reset_after_s: float = 5.0
    ) -> None:
        self.name = name
        self._clock = clock
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_after_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """CLOSED and HALF_OPEN let calls through; a HALF_OPEN success closes the breaker again."""
        # Never opened (every order passes two breakers): no state computation, no clock read.
        return self._opened_at is None or self.state is not BreakerState.OPEN

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def failure(self) -> None:
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()

    def trip(self) -> None:
        self._failures = self.failure_threshold
        self._opened_at = self._clock()
