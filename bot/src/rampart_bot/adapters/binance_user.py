"""Binance-Spot user-data stream: execution reports and account updates pushed by the venue.

A listen key comes from `POST /api/v3/userDataStream`, is kept alive every 30 minutes (it expires
after 60) and names the stream at `<ws_url>/ws/<listenKey>`. Fills arrive here within milliseconds;
`myTrades` polling stays as the fallback and for reconciliation (both are deduplicated by trade id).
If the venue has no user-data stream (404 / unsupported), the client says so once and retries rarely.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from .binance_rest import BinanceRest, RateLimited, TransportError, VenueError
from .binance_ws import MAX_MESSAGE_BYTES, Backoff, ConnectLimiter, close_bounded

log = logging.getLogger(__name__)

KEEPALIVE_S = 30 * 60
UNSUPPORTED_RETRY_S = 300.0


class UserStreamClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        rest: BinanceRest,
        ws_url: str,
        on_message: Callable[[str | bytes], object],
        backoff: Backoff | None = None,
        limiter: ConnectLimiter | None = None,
        healthy_after_s: float = 30.0,
        keepalive_s: float = KEEPALIVE_S,
        close_timeout_s: float = 1.0,
    ) -> None:
        self.session = session
        self.rest = rest
        self.ws_url = ws_url.rstrip("/")
        self.on_message = on_message
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
                    if self.on_message(msg.data) == "listenKeyExpired":
                        return "listen_key_expired", time.monotonic() - opened >= self.healthy_after_s
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
