"""Binance-Spot user-data stream: execution reports and account updates pushed by the venue.

A listen key comes from `POST /api/v3/userDataStream`, is kept alive every 30 minutes (it expires
after 60) and names the stream at `<ws_url>/ws/<listenKey>`. Fills arrive here within milliseconds;
`myTrades` polling stays as the fallback and for reconciliation (both are deduplicated by trade id).
If the venue has no user-data stream (404 / unsupported), the client says so once and retries rarely.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from .binance_rest import BinanceRest, RateLimited, TransportError, VenueError
from .binance_ws import Backoff, ConnectLimiter, ReconnectingStream

log = logging.getLogger(__name__)

KEEPALIVE_S = 30 * 60
UNSUPPORTED_RETRY_S = 300.0


_LISTEN_KEY_EXPIRED = object()  # our end token: the engine's handler answers "listenKeyExpired"


class UserStreamClient(ReconnectingStream):
    """The user-data stream on the shared reconnect loop; each connection gets a fresh listen key."""

    label = "user-data stream"
    end_token = _LISTEN_KEY_EXPIRED
    end_reason = "listen_key_expired"

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
        super().__init__(session, self._dispatch, backoff, limiter, healthy_after_s, close_timeout_s)
        self.rest = rest
        self.ws_url = ws_url.rstrip("/")
        self.handler = on_message
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
        # Few frames here: translating the handler's answer costs nothing that matters.
        return _LISTEN_KEY_EXPIRED if self.handler(raw) == "listenKeyExpired" else None

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

    async def _on_open(self, ws: aiohttp.ClientWebSocketResponse) -> None:
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
