"""Binance-Spot user-data stream: execution reports and account updates pushed by the venue.

A listen key comes from `POST /api/v3/userDataStream`, is kept alive every 30 minutes (it expires
after 60) and names the stream at `<ws_url>/ws/<listenKey>`. Fills arrive here within milliseconds;
`myTrades` polling stays as the fallback and for reconciliation (both are deduplicated by trade id).
If the venue has no user-data stream (404 / unsupported), the client says so once and retries rarely.
Frames leave this module as the bot's own types (`OrderUpdate`, `BalanceUpdate`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from decimal import Decimal

import aiohttp
import msgspec

from ..core.model import Fill, Side
from ..core.venue import BalanceUpdate, OrderUpdate
from .binance_rest import VENUE_STATUS, BinanceRest, RateLimited, TransportError, VenueError
from .binance_ws import MAX_MESSAGE_BYTES, Backoff, ConnectLimiter, ParseStats, close_bounded
from .venue_types import (
    ExecutionReport,
    ListenKeyExpired,
    OutboundAccountPosition,
    ServerShutdownEvent,
    decode_user_event,
)

log = logging.getLogger(__name__)

KEEPALIVE_S = 30 * 60
UNSUPPORTED_RETRY_S = 300.0
STREAM_ENDS = "listenKeyExpired"  # translate_user_frame's answer to a frame that ends the stream


def translate_user_frame(raw: str | bytes, stats: ParseStats) -> OrderUpdate | BalanceUpdate | str | None:
    """One user-data frame in the bot's types; STREAM_ENDS when the venue ends the stream; None for
    frames that carry nothing for us or are malformed (counted in `stats`). Never raises."""
    try:
        event = decode_user_event(raw)
    except msgspec.MsgspecError:
        stats.drop("user_event_invalid", raw)
        return None
    kind = type(event)
    if kind is ExecutionReport:
        return _order_update(event, raw, stats)  # type: ignore[arg-type]
    if kind is OutboundAccountPosition:
        return BalanceUpdate({b.a: (Decimal(b.f), Decimal(b.l)) for b in event.B})  # type: ignore[union-attr]
    if kind is ListenKeyExpired or kind is ServerShutdownEvent:
        log.warning("user-data stream ends (%s); reconnecting", kind.__name__)
        return STREAM_ENDS
    return None


def _order_update(ev: ExecutionReport, raw: str | bytes, stats: ParseStats) -> OrderUpdate | None:
    fill = None
    if ev.x == "TRADE":
        price = Decimal(ev.L)
        qty = Decimal(ev.l)
        if ev.t < 0 or price <= 0 or qty <= 0 or ev.S not in ("BUY", "SELL"):
            stats.drop("user_event_bad_trade", raw)
            return None
        fill = Fill(
            symbol=ev.s,
            trade_id=ev.t,
            order_id=ev.i,
            client_order_id="",
            side=Side(ev.S),
            price=price,
            qty=qty,
            commission=Decimal(ev.n) if ev.n else Decimal(0),
            commission_asset=ev.N or "",
            time_ms=ev.T,
        )
    return OrderUpdate(
        # A cancel's report names the cancel request in c and the order itself in C.
        client_order_id=ev.C if ev.x == "CANCELED" and ev.C else ev.c,
        symbol=ev.s,
        exchange_order_id=ev.i,
        status=VENUE_STATUS.get(ev.X),
        executed_qty=Decimal(ev.z),
        fill=fill,
    )


class UserStreamClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        rest: BinanceRest,
        ws_url: str,
        on_update: Callable[[OrderUpdate | BalanceUpdate], object],
        stats: ParseStats,
        backoff: Backoff | None = None,
        limiter: ConnectLimiter | None = None,
        healthy_after_s: float = 30.0,
        keepalive_s: float = KEEPALIVE_S,
        close_timeout_s: float = 1.0,
    ) -> None:
        self.session = session
        self.rest = rest
        self.ws_url = ws_url.rstrip("/")
        self.on_update = on_update
        self.stats = stats
        self.backoff = backoff or Backoff()
        self.limiter = limiter or ConnectLimiter()
        self.healthy_after_s = healthy_after_s
        self.keepalive_s = keepalive_s
        self.close_timeout_s = close_timeout_s
        self.connected = False
        self.supported: bool | None = None  # None until the venue has answered once
        self.connects = 0
        self.events = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stopping = False
        self._listen_key = ""

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await close_bounded(self._ws, self.close_timeout_s)
        if self._listen_key:
            try:
                await self.rest.close_listen_key(self._listen_key)
            except (VenueError, TransportError, RateLimited):
                pass

    async def run(self) -> None:
        while not self._stopping:
            wait = self.limiter.wait_s()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                self._listen_key = await self.rest.new_listen_key()
                self.supported = True
            except VenueError as exc:
                if exc.status in (400, 404, 405, 410):
                    if self.supported is not False:
                        log.warning(
                            "venue has no user-data stream; fills come from myTrades polling",
                            extra={"status": exc.status},
                        )
                    self.supported = False
                    await asyncio.sleep(UNSUPPORTED_RETRY_S)
                    continue
                await asyncio.sleep(self.backoff.next_delay())
                continue
            except (TransportError, RateLimited):
                await asyncio.sleep(self.backoff.next_delay())
                continue
            self.limiter.note()
            self.connects += 1
            reason, healthy = await self._session_once(self._listen_key)
            self.connected = False
            if self._stopping:
                break
            if healthy:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            log.warning(
                "user-data stream disconnected", extra={"reason": reason, "retry_in_s": round(delay, 3)}
            )
            await asyncio.sleep(delay)

    async def _session_once(self, key: str) -> tuple[str, bool]:
        try:
            ws = await self.session.ws_connect(
                f"{self.ws_url}/ws/{key}",
                autoping=True,
                max_msg_size=MAX_MESSAGE_BYTES * 4,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.close_timeout_s),
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return f"connect_failed:{type(exc).__name__}", False
        self._ws = ws
        opened = time.monotonic()
        keepalive = asyncio.create_task(self._keepalive(key))
        try:
            self.connected = True
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self.events += 1
                    update = translate_user_frame(msg.data, self.stats)
                    if update is None:
                        continue
                    if update is STREAM_ENDS:
                        return "listen_key_expired", time.monotonic() - opened >= self.healthy_after_s
                    self.on_update(update)  # type: ignore[arg-type]
                    continue
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    return "closed_by_server", time.monotonic() - opened >= self.healthy_after_s
                if msg.type is aiohttp.WSMsgType.ERROR:
                    return "socket_error", False
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return f"error:{type(exc).__name__}", False
        finally:
            keepalive.cancel()
            self.connected = False
            self._ws = None
            await close_bounded(ws, self.close_timeout_s)

    async def _keepalive(self, key: str) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            try:
                await self.rest.keepalive_listen_key(key)
            except (VenueError, TransportError, RateLimited) as exc:
                log.warning("listen key keep-alive failed", extra={"error": str(exc)[:200]})
