"""Binance-Spot market data: a defensive message parser and a self-healing WebSocket client."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation

import aiohttp
import orjson

from ..core.model import BookTicker, Trade

log = logging.getLogger(__name__)

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


def _dec(value: object) -> Decimal:
    # Venue decimals are plain "123.45" strings. Requiring exactly that rejects NaN, Infinity,
    # negatives and exponents (1e999999) in one cheap check, before Decimal() sees them.
    if (
        type(value) is not str
        or len(value) > 40
        or not value.isascii()
        or not value.replace(".", "", 1).isdigit()
    ):
        raise ValueError("decimal field must be a short plain decimal string")
    return Decimal(value)


def _symbol(value: object) -> str:
    if type(value) is not str or not (0 < len(value) <= 20) or not value.isalnum():
        raise ValueError("bad symbol")
    return value


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise TypeError("integer field expected")
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
        msg = orjson.loads(raw)
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
    try:
        event = msg.get("e")
        if event == "trade":
            trade = Trade(
                _symbol(msg["s"]),
                _int(msg["t"]),
                _dec(msg["p"]),
                _dec(msg["q"]),
                _int(msg["T"]),
                msg["m"] is True,
            )
            stats.trades += 1
            return trade
        if event is None and "u" in msg:
            bid = _dec(msg["b"])
            ask = _dec(msg["a"])
            book = BookTicker(_symbol(msg["s"]), _int(msg["u"]), bid, _dec(msg["B"]), ask, _dec(msg["A"]))
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
    ) -> None:
        self.session = session
        self.ws_url = ws_url.rstrip("/")
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

    @property
    def staleness_s(self) -> float:
        if not self.last_message_monotonic:
            return float("inf")
        return time.monotonic() - self.last_message_monotonic

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
                f"{self.ws_url}/stream",
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
                    self.last_message_monotonic = time.monotonic()
                    if handler(msg.data) is SERVER_SHUTDOWN:
                        self._reconnect_now = True
                        return "server_shutdown"
                    if not got_data:
                        got_data = True
                        self.backoff.reset()
                    continue
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self.last_message_monotonic = time.monotonic()
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
