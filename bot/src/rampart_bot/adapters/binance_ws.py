"""Binance-Spot market data: a defensive message parser and a self-healing WebSocket client."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation

import aiohttp
import orjson

from ..core.model import BookTicker, Trade

log = logging.getLogger(__name__)
_loads = orjson.loads

MAX_MESSAGE_BYTES = 64 * 1024  # real trade/bookTicker frames are ~200 bytes; anything huge is hostile


class ServerShutdown:
    """The venue announced it will close this connection (maintenance or 24 h rotation)."""

    __slots__ = ()


class SubscribeAck:
    __slots__ = ("id", "error")

    def __init__(self, id_: object, error: object) -> None:
        self.id = id_
        self.error = error


SERVER_SHUTDOWN = ServerShutdown()


class ParseStats:
    """Plain counters: incrementing an int is far cheaper than a Prometheus counter on the hot path."""

    __slots__ = ("messages", "trades", "books", "dropped")

    def __init__(self) -> None:
        self.messages = 0
        self.trades = 0
        self.books = 0
        self.dropped: dict[str, int] = {}

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


# Venue decimals are plain "123.45" strings. Requiring exactly that rejects NaN, Infinity,
# negatives and exponents (1e999999) before Decimal() sees them.
_PLAIN_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?").fullmatch
_SYMBOL = re.compile(r"[A-Z0-9]{1,20}").fullmatch

# Prices and sizes repeat a lot from tick to tick: converting each distinct string once is the
# single biggest saving on the hot path. Only validated strings are ever cached.
_DEC_CACHE: dict[str, Decimal] = {}
_DEC_CACHE_MAX = 8192


def _dec(value: object) -> Decimal:
    d = _DEC_CACHE.get(value)  # type: ignore[call-overload]
    if d is not None:
        return d
    if type(value) is not str or _PLAIN_DECIMAL(value) is None:
        raise ValueError("decimal field must be a short plain decimal string")
    if len(_DEC_CACHE) >= _DEC_CACHE_MAX:
        _DEC_CACHE.clear()
    d = _DEC_CACHE[value] = Decimal(value)
    return d


_SYMBOLS_SEEN: set[str] = set()


def _size(value: object) -> str:
    """Validate a size without converting it (see model.Trade)."""
    if type(value) is not str or _PLAIN_DECIMAL(value) is None:  # type: ignore[arg-type]
        raise ValueError("size must be a short plain decimal string")
    return value  # type: ignore[return-value]


def _symbol(value: object) -> str:
    if value in _SYMBOLS_SEEN:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    if type(value) is not str or _SYMBOL(value) is None:
        raise ValueError("bad symbol")
    if len(_SYMBOLS_SEEN) < 10_000:
        _SYMBOLS_SEEN.add(value)
    return value


def parse_market_message(
    raw: str | bytes, stats: ParseStats
) -> Trade | BookTicker | ServerShutdown | SubscribeAck | None:
    """Parse one frame. Anything malformed is counted in `stats` and returns None; this never raises."""
    stats.messages += 1
    if len(raw) > MAX_MESSAGE_BYTES:
        stats.drop("too_large")
        return None
    try:
        msg = _loads(raw)
    except orjson.JSONDecodeError:
        stats.drop("invalid_json")
        return None
    if type(msg) is not dict:
        stats.drop("not_an_object")
        return None
    data = msg.get("data")
    if data is not None and "stream" in msg:
        if type(data) is not dict:
            stats.drop("bad_envelope")
            return None
        msg = data
    # The two hot message kinds are parsed inline (helper calls cost more than the checks).
    # Unhashable or wrong-typed values raise TypeError/ValueError inside and are counted below.
    dec_get = _DEC_CACHE.get
    try:
        event = msg.get("e")
        if event == "trade":
            t = msg["t"]
            ts = msg["T"]
            sym = msg["s"]
            p = msg["p"]
            q = msg["q"]
            if type(t) is not int or type(ts) is not int or t < 0:
                raise TypeError("integer field expected")
            if sym not in _SYMBOLS_SEEN:
                _symbol(sym)
            price = dec_get(p) or _dec(p)
            if type(q) is not str or _PLAIN_DECIMAL(q) is None:
                raise ValueError("bad size")
            trade = Trade(sym, t, price, q, ts, msg["m"] is True)
            stats.trades += 1
            return trade
        if event is None and "u" in msg:
            u = msg["u"]
            sym = msg["s"]
            b = msg["b"]
            bq = msg["B"]
            a = msg["a"]
            aq = msg["A"]
            if type(u) is not int or u < 0:
                raise TypeError("integer field expected")
            if sym not in _SYMBOLS_SEEN:
                _symbol(sym)
            bid = dec_get(b) or _dec(b)
            ask = dec_get(a) or _dec(a)
            if (
                type(bq) is not str
                or _PLAIN_DECIMAL(bq) is None
                or type(aq) is not str
                or _PLAIN_DECIMAL(aq) is None
            ):
                raise ValueError("bad size")
            book = BookTicker(sym, u, bid, bq, ask, aq)
            stats.books += 1
            return book
        if event == "serverShutdown":
            return SERVER_SHUTDOWN
        if "id" in msg and ("result" in msg or "error" in msg):
            return SubscribeAck(msg.get("id"), msg.get("error"))
        stats.drop("unknown_event")
        return None
    except KeyError:
        stats.drop("missing_field")
    except (TypeError, ValueError, InvalidOperation):
        # InvalidOperation subclasses ArithmeticError, not ValueError: list it explicitly.
        stats.drop("bad_field")
    return None


class Backoff:
    """Capped exponential backoff with full jitter (spreads reconnect storms)."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 30.0, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class MarketDataClient:
    """Connects to `<ws_url>/stream`, SUBSCRIBEs, feeds every text frame to `on_message`.

    Reconnects forever with backoff; a watchdog closes silent (stalled) sockets; `serverShutdown`
    and connection age trigger a prompt, backoff-free reconnect. `on_connected` runs after each
    subscription (the engine uses it for REST catch-up and reconciliation).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        ws_url: str,
        symbols: Sequence[str],
        on_message: Callable[[str], object],
        on_connected: Callable[[], Awaitable[None]] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        stale_after_s: float = 5.0,
        max_age_s: float = 23 * 3600,
        backoff: Backoff | None = None,
        path: str = "/stream",
    ) -> None:
        self.session = session
        self.ws_url = ws_url.rstrip("/")
        self.path = path
        self.streams = [f"{s.lower()}@{kind}" for s in symbols for kind in ("trade", "bookTicker")]
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.stale_after_s = stale_after_s
        self.max_age_s = max_age_s
        self.backoff = backoff or Backoff()
        self.connected = False
        self.reconnects = 0
        self.last_message_monotonic = 0.0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stopping = False
        self._reconnect_now = False
        self._opened_monotonic = 0.0
        self.stale_reconnects = 0
        self.frames = 0
        self._frames_seen = 0

    @property
    def staleness_s(self) -> float:
        self._observe_frames()
        if not self.last_message_monotonic:
            return float("inf")
        return time.monotonic() - self.last_message_monotonic

    def _observe_frames(self) -> None:
        """Stamp the time when the frame counter moved (cheaper than a clock read per frame)."""
        if self.frames != self._frames_seen:
            self._frames_seen = self.frames
            self.last_message_monotonic = time.monotonic()

    def is_fresh(self) -> bool:
        return self.connected and self.staleness_s < self.stale_after_s

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await self._ws.close()

    async def run(self) -> None:
        watchdog = asyncio.create_task(self._watchdog())
        try:
            while not self._stopping:
                reason = await self._session_once()
                self.connected = False
                if self.on_disconnected is not None:
                    self.on_disconnected(reason)
                if self._stopping:
                    break
                self.reconnects += 1
                if self._reconnect_now:
                    self._reconnect_now = False
                    continue
                delay = self.backoff.next_delay()
                log.warning(
                    "market data disconnected", extra={"reason": reason, "retry_in_s": round(delay, 3)}
                )
                await asyncio.sleep(delay)
        finally:
            watchdog.cancel()

    async def _session_once(self) -> str:
        try:
            ws = await self.session.ws_connect(
                f"{self.ws_url}{self.path}",
                autoping=True,
                max_msg_size=MAX_MESSAGE_BYTES * 4,
                # A stalled peer never answers our close frame: do not wait long for it.
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=min(1.0, self.stale_after_s)),
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return f"connect_failed:{type(exc).__name__}"
        self._ws = ws
        self._opened_monotonic = time.monotonic()
        try:
            await ws.send_bytes(orjson.dumps({"method": "SUBSCRIBE", "params": self.streams, "id": 1}))
            self.connected = True
            self.last_message_monotonic = time.monotonic()
            if self.on_connected is not None:
                await self.on_connected()
            handler = self.on_message
            receive = ws.receive
            text = aiohttp.WSMsgType.TEXT
            got_data = False
            while True:
                msg = await receive()
                if msg.type is text:
                    self.frames += 1  # the watchdog turns frame counts into staleness
                    if handler(msg.data) is SERVER_SHUTDOWN:
                        self._reconnect_now = True
                        return "server_shutdown"
                    if not got_data:
                        got_data = True
                        self.backoff.reset()
                    continue
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self.frames += 1
                    handler(msg.data)
                    continue
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    return "closed_by_server"
                if msg.type is aiohttp.WSMsgType.ERROR:
                    return "socket_error"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return f"error:{type(exc).__name__}"
        finally:
            self.connected = False
            self._ws = None
            if not ws.closed:
                await ws.close()

    async def _watchdog(self) -> None:
        """Close silent or too-old sockets; the run loop then reconnects and resubscribes."""
        interval = max(0.01, self.stale_after_s / 4)
        while True:
            await asyncio.sleep(interval)
            ws = self._ws
            if ws is None or not self.connected:
                continue
            if self.staleness_s > self.stale_after_s:
                log.warning("market data stale, forcing reconnect", extra={"staleness_s": self.staleness_s})
                self.stale_reconnects += 1
                self._reconnect_now = True
                await ws.close()
            elif time.monotonic() - self._opened_monotonic > self.max_age_s:
                self._reconnect_now = True
                await ws.close()
