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
import ssl
from collections.abc import Callable
from decimal import Decimal

import msgspec
import picows

from ..core.model import Fill, Side
from ..core.venue import BalanceUpdate, OrderUpdate
from .binance_rest import VENUE_STATUS, BinanceRest, RateLimited, TransportError, VenueError
from .binance_ws import Backoff, ConnectLimiter, ParseStats, ReconnectingStream
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


_LISTEN_KEY_EXPIRED = object()  # the shared loop's end token: the venue ended the stream


class UserStreamClient(ReconnectingStream):
    """The user-data stream on the shared reconnect loop; each connection gets a fresh listen key."""

    label = "user-data stream"
    end_token = _LISTEN_KEY_EXPIRED
    end_reason = "listen_key_expired"

    def __init__(
        self,
        rest: BinanceRest,
        ws_url: str,
        on_update: Callable[[OrderUpdate | BalanceUpdate], object],
        stats: ParseStats,
        backoff: Backoff | None = None,
        limiter: ConnectLimiter | None = None,
        healthy_after_s: float = 30.0,
        keepalive_s: float = KEEPALIVE_S,
        close_timeout_s: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(self._dispatch, backoff, limiter, healthy_after_s, close_timeout_s, ssl_context)
        self.rest = rest
        self.ws_url = ws_url.rstrip("/")
        self.on_update = on_update
        self.stats = stats
        self.keepalive_s = keepalive_s
        self.supported: bool | None = None  # None until the venue has answered once
        self._listen_key = ""
        self._keepalive: asyncio.Task[None] | None = None

    @property
    def events(self) -> int:
        return self.frames

    @property
    def connects(self) -> int:
        return self.connect_attempts

    def _dispatch(self, raw: str | bytes) -> object:
        update = translate_user_frame(raw, self.stats)
        if update is None:
            return None
        if update is STREAM_ENDS:
            return _LISTEN_KEY_EXPIRED
        self.on_update(update)  # type: ignore[arg-type]
        return None

    async def stop(self) -> None:
        await super().stop()
        if self._listen_key:
            try:
                await self.rest.close_listen_key(self._listen_key)
            except (VenueError, TransportError, RateLimited):
                pass

    async def _target(self) -> str | None:
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
                return None
            await asyncio.sleep(self.backoff.next_delay())
            return None
        except (TransportError, RateLimited):
            await asyncio.sleep(self.backoff.next_delay())
            return None
        return f"{self.ws_url}/ws/{self._listen_key}"

    async def _on_open(self, transport: picows.WSTransport) -> None:
        self._keepalive = asyncio.create_task(self._keepalive_loop(self._listen_key))
        self.connected = True

    def _on_session_end(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    async def _keepalive_loop(self, key: str) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            try:
                await self.rest.keepalive_listen_key(key)
            except (VenueError, TransportError, RateLimited) as exc:
                log.warning("listen key keep-alive failed", extra={"error": str(exc)[:200]})
