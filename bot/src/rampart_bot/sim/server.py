"""The exchange simulator's network side: Binance-Spot WebSocket and REST formats, signature checks,
request-weight accounting, a user-data stream, fault injection (Python API and an authenticated
/sim/control endpoint, see `control.py`) and a load mode with pre-framed sends.

What Binance documents and the simulator does too:

* REST errors are JSON `{"code": ..., "msg": ...}` on every path, unknown ones included (404/405).
* Signed requests are verified over the query string and body *exactly as sent* (percent-encoded),
  `signature` removed; a parameter sent twice is refused (-1101); the query wins over the body.
* Every /api response carries `X-MBX-USED-WEIGHT-1M` (Binance's per-endpoint weights, a fixed
  one-minute window); past `weight_limit` the answer is 429/-1003 with `Retry-After`. Accepted orders
  carry `X-MBX-ORDER-COUNT-10S` and `-1D`; past the ORDERS limits, 429/-1015.
* Market data at `/ws` (then SUBSCRIBE), `/ws/<stream>` and `/stream?streams=a/b`; a stream the
  simulator does not serve is refused (`{"code": 2, "msg": "Invalid request: invalid stream"}`).
* User data, `executionReport` and `outboundAccountPosition` for every order change and fill, two ways:
  the WebSocket API at `/ws-api/v3` (`userDataStream.subscribe.signature`, events wrapped as
  `{"subscriptionId": n, "event": ...}`), which is how Binance serves it today, and the legacy listen
  key (`POST|PUT|DELETE /api/v3/userDataStream`, then `/ws/<listenKey>`), which Binance retired on
  2026-02-20 but many clients (and binance-connector 3.x) still use.
* An account holds several API keys at once: any active key signs, and orders and listen keys belong
  to the account, not to the key that made them (so a key can be rotated while the bot trades). Keys
  are added and retired through /sim/control; a retired key gets 401/-2015 like an unknown one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_plus

import orjson
from aiohttp import WSMsgType, web

from .control import ControlEndpoint, digest
from .exchange import Exchange, PriceProcess, SimError, SimSymbol, int_param

log = logging.getLogger(__name__)

LISTEN_KEY_TTL_MS = 60 * 60 * 1000  # a listen key lives 60 minutes after its last keep-alive
ORDER_LIMIT_10S = 100
ORDER_LIMIT_1D = 200_000
INVALID_STREAM = b'{"code":2,"msg":"Invalid request: invalid stream"}'

# Request weights from Binance's REST documentation; endpoints not listed weigh 1.
_FIXED_WEIGHTS = {
    ("GET", "/api/v3/exchangeInfo"): 20,
    ("GET", "/api/v3/order"): 4,
    ("GET", "/api/v3/allOrders"): 20,
    ("GET", "/api/v3/account"): 20,
    ("POST", "/api/v3/userDataStream"): 2,
    ("PUT", "/api/v3/userDataStream"): 2,
    ("DELETE", "/api/v3/userDataStream"): 2,
}


def request_weight(method: str, path: str, query: Any) -> int:
    fixed = _FIXED_WEIGHTS.get((method, path))
    if fixed is not None:
        return fixed
    if path == "/api/v3/depth":
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            limit = 100
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    if path in ("/api/v3/ticker/price", "/api/v3/ticker/bookTicker"):
        return 2 if "symbol" in query else 4
    if path == "/api/v3/openOrders" and method == "GET":
        return 6 if "symbol" in query else 80
    if path == "/api/v3/myTrades":
        return 5 if "orderId" in query else 20
    if path == "/api/v3/order/test":
        return 20 if query.get("computeCommissionRates") == "true" else 1
    return 1


@dataclass
class Faults:
    """Switchable per test. Counters (`*_next`) apply to the next N matching requests."""

    order_5xx_after_accept_next: int = 0  # accept the order, then answer 5xx (outcome unknown to the bot)
    order_5xx_before_accept_next: int = 0  # answer 5xx without accepting
    error_status: int = 504
    order_stall_after_accept_next: int = (
        0  # accept the order, then answer only after stall_s (client times out)
    )
    stall_s: float = 3.0
    rate_limit_next: int = 0  # 429 for the next N signed requests
    ban_next: int = 0  # 418 for the next N signed requests
    retry_after_s: int = 1
    limit_only: str = ""  # "METHOD /path": 429/418 faults hit only that endpoint (e.g. "POST /api/v3/order")
    clock_skew_ms: int = 0  # server clock runs ahead by this much
    duplicate_fills: bool = False  # myTrades lists every trade twice
    hold_fills: bool = False  # new fills hidden from myTrades until released (late fills)
    stall: bool = False  # keep sockets open but send nothing
    user_stream_stall: bool = False  # user-data events are dropped (the bot must fall back to polling)


def frame_text(payload: bytes) -> bytes:
    """A server-to-client (unmasked) WebSocket text frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + struct.pack("!H", n) + payload
    return b"\x81\x7f" + struct.pack("!Q", n) + payload


class _Client:
    __slots__ = ("ws", "streams", "combined", "transport")

    def __init__(self, ws: web.WebSocketResponse, combined: bool, transport: Any) -> None:
        self.ws = ws
        self.streams: set[str] = set()
        self.combined = combined
        self.transport = transport


def default_exchange(seed: int = 7, id_base: int = 1) -> Exchange:
    return Exchange(
        [
            SimSymbol("BTCUSDT", "BTC", "USDT", mid=Decimal("30000.00")),
            SimSymbol(
                "ETHUSDT",
                "ETH",
                "USDT",
                tick_size=Decimal("0.01"),
                step_size=Decimal("0.0001"),
                min_qty=Decimal("0.0001"),
                mid=Decimal("2000.00"),
            ),
        ],
        balances={"USDT": Decimal("1000000"), "BTC": Decimal("10"), "ETH": Decimal("100")},
        process=PriceProcess(seed=seed),
        id_base=id_base,
    )


def _split_signature(raw: str) -> tuple[str, str | None]:
    """Remove `signature=` from a raw (still percent-encoded) parameter string."""
    if "signature=" not in raw:
        return raw, None
    kept: list[str] = []
    signature: str | None = None
    for part in raw.split("&"):
        if part.startswith("signature="):
            signature = part[len("signature=") :]
        else:
            kept.append(part)
    return "&".join(kept), signature


def _parse(raw: str, into: dict[str, str], overwrite: bool) -> None:
    """Decode `a=1&b=2` into `into`; a name twice in one string is refused as Binance does."""
    seen: set[str] = set()
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = unquote_plus(name)
        if name in seen:
            raise SimError(400, -1101, "Duplicate values for a parameter detected.")
        seen.add(name)
        if overwrite or name not in into:
            into[name] = unquote_plus(value)


Handler = Callable[[dict[str, str]], Awaitable[web.StreamResponse]]


class SimServer:
    def __init__(
        self,
        api_key: str,
        api_secret: str,
        exchange: Exchange | None = None,
        tick_interval_s: float = 0.0,
        trades_per_tick: int = 1,
        control_token: str | None = None,
        weight_limit: int = 6000,
        order_limit_10s: int = ORDER_LIMIT_10S,
        order_limit_1d: int = ORDER_LIMIT_1D,
    ) -> None:
        # sha256(key) -> secret: the keys are only ever compared as digests, in constant time.
        self._api_keys: dict[bytes, bytes] = {digest(api_key): api_secret.encode()}
        self.exchange = exchange or default_exchange()
        self.faults = Faults()
        self.tick_interval_s = tick_interval_s
        self.paused = False  # tests freeze the price process and drive it with step()
        self.trades_per_tick = trades_per_tick
        self.clients: set[_Client] = set()
        self.request_log: list[tuple[str, str, dict[str, str]]] = []
        self.connections = 0
        self.subscribed = asyncio.Event()  # set whenever a client (re)subscribes; tests clear it
        self.held_trade_ids: set[int] = set()
        self.weight_limit = weight_limit
        self.order_limits = {"10S": (10, order_limit_10s), "1D": (86400, order_limit_1d)}
        self.used_weight = 0
        self._weight_window = 0
        self.clock = time.time  # rate-limit windows; tests pin it so no window rolls over mid-test
        self._order_counts: dict[str, tuple[int, int]] = {}  # interval -> (window, count)
        self.listen_keys: dict[str, int] = {}  # listen key -> expiry (ms)
        self.ws_api_subs: dict[tuple[int, int], Any] = {}  # (connection, subscriptionId) -> transport
        self._ws_api_next: dict[int, int] = {}  # connection -> last subscriptionId handed out
        self.user_events_sent = 0
        self._load_cache: dict[tuple[str, int, str, bool], bytes] = {}
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.port = 0
        self.tls = False
        self.control = ControlEndpoint(self, control_token)
        self.app = web.Application(middlewares=[self._api_middleware])
        self.app.add_routes(
            [
                web.get("/ws", self._ws_handler),
                web.get("/ws/{streams}", self._ws_handler),
                web.get("/stream", self._ws_handler),
                web.get("/ws-api/v3", self._ws_api_handler),
                web.get("/load", self._load_handler),
                web.get("/echo", self._echo_handler),
                web.get("/api/v3/time", self._time),
                web.get("/api/v3/ping", self._ping),
                web.get("/api/v3/exchangeInfo", self._exchange_info),
                web.get("/api/v3/ticker/bookTicker", self._book_ticker),
                web.get("/api/v3/ticker/price", self._ticker_price),
                web.get("/api/v3/depth", self._depth),
                web.post("/api/v3/order", self._signed(self._new_order)),
                web.post("/api/v3/order/test", self._signed(self._test_order)),
                web.get("/api/v3/order", self._signed(self._query_order)),
                web.delete("/api/v3/order", self._signed(self._cancel_order)),
                web.get("/api/v3/openOrders", self._signed(self._open_orders)),
                web.delete("/api/v3/openOrders", self._signed(self._cancel_all)),
                web.get("/api/v3/allOrders", self._signed(self._all_orders)),
                web.get("/api/v3/myTrades", self._signed(self._my_trades)),
                web.get("/api/v3/account", self._signed(self._account)),
                web.post("/api/v3/userDataStream", self._keyed(self._listen_key_new)),
                web.put("/api/v3/userDataStream", self._keyed(self._listen_key_keepalive)),
                web.delete("/api/v3/userDataStream", self._keyed(self._listen_key_close)),
                web.post("/sim/control", self.control.handle),
                web.get("/sim/state", self._state),
            ]
        )

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> int:
        """Serve REST and WebSocket on one port; over TLS (https/wss) when ssl_context is given."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self.tls = ssl_context is not None
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self.tick_interval_s > 0:
            self._ticker = asyncio.create_task(self._tick_loop())
        return self.port

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for client in list(self.clients):
            await client.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- API keys (the control endpoint and tests call these) ------------------------------------
    @property
    def active_api_keys(self) -> int:
        return len(self._api_keys)

    def secret_for(self, api_key: str) -> bytes | None:
        """The secret of an active key, else None. Every active key is compared, without stopping
        at a match, so the time taken tells nothing about which key matched or how closely."""
        probe = digest(api_key)
        found: bytes | None = None
        for key_digest, secret in self._api_keys.items():
            if hmac.compare_digest(probe, key_digest):
                found = secret
        return found

    def check_api_key_change(self, api_key: str, api_secret: str | None) -> None:
        """ValueError (never naming a key or secret) if add (with a secret) or retire (without) would
        fail; the caller checks first so that a refused request changes nothing."""
        known = self.secret_for(api_key)
        if api_secret is not None:
            if known is not None and not hmac.compare_digest(
                hashlib.sha256(known).digest(), digest(api_secret)
            ):
                raise ValueError("'api_key' is already active with a different secret; retire it first")
        elif known is None:
            raise ValueError("'api_key' is not an active key")
        elif len(self._api_keys) == 1:
            raise ValueError("'api_key' is the last active key; add its successor before retiring it")

    def add_api_key(self, api_key: str, api_secret: str) -> bool:
        """Accept another key pair; False if it was already active (a re-run changes nothing)."""
        self.check_api_key_change(api_key, api_secret)
        if self.secret_for(api_key) is not None:
            return False
        self._api_keys[digest(api_key)] = api_secret.encode()
        log.info("API key added", extra={"active_keys": len(self._api_keys)})
        return True

    def retire_api_key(self, api_key: str) -> None:
        """Stop accepting a key. Its orders and the account's listen keys stay: they are the account's."""
        self.check_api_key_change(api_key, None)
        del self._api_keys[digest(api_key)]
        log.info("API key retired", extra={"active_keys": len(self._api_keys)})

    # -- fault API (tests call these directly) ---------------------------------------------------
    def check_faults(self, **changes: Any) -> dict[str, Any]:
        """The changes, typed as declared; ValueError for an unknown name or a wrong type."""
        kinds = {f.name: type(getattr(self.faults, f.name)) for f in fields(Faults)}
        checked: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in kinds:
                raise ValueError(f"unknown fault {key!r}")
            kind = kinds[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not kind:
                raise ValueError(f"fault {key!r} needs a {kind.__name__}, got {type(value).__name__}")
            checked[key] = value
        return checked

    def set_faults(self, **changes: Any) -> None:
        """Change faults; all or nothing: one bad name or type changes none of them."""
        for key, value in self.check_faults(**changes).items():
            setattr(self.faults, key, value)

    def drop_sockets(self) -> int:
        """Abort every WebSocket connection without a close handshake."""
        transports = [c.transport for c in self.clients] + list(self.ws_api_subs.values())
        dropped = 0
        for transport in {id(t): t for t in transports if t is not None}.values():
            transport.abort()
            dropped += 1
        return dropped

    async def rotate(self) -> int:
        """What the venue does at 24 h and before maintenance: serverShutdown, then close."""
        clients = list(self.clients)
        event = {"e": "serverShutdown", "E": self.now_ms()}
        for client in clients:
            payload = {"stream": "!serverShutdown", "data": event} if client.combined else event
            try:
                await client.ws.send_str(orjson.dumps(payload).decode())
                await client.ws.close(code=1001, message=b"server shutdown")
            except (ConnectionError, RuntimeError):
                pass
        return len(clients)

    def release_fills(self) -> None:
        self.faults.hold_fills = False
        self.held_trade_ids.clear()

    def expire_listen_keys(self) -> int:
        """Expire every listen key now, as Binance does 60 minutes after the last keep-alive."""
        keys = list(self.listen_keys)
        for key in keys:
            self.listen_keys[key] = 0
            self._expire(key)
        return len(keys)

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.faults.clock_skew_ms

    # -- market data ---------------------------------------------------------------------------
    async def step(self, symbol: str | None = None, mid: Decimal | None = None) -> None:
        """Advance the price process one step (or set the mid) and publish book and trade updates."""
        symbols = [symbol] if symbol else list(self.exchange.symbols)
        for sym in symbols:
            now = self.now_ms()
            self._track_fills(lambda sym=sym, now=now: self._move(sym, mid, now))
            await self.publish(f"{sym.lower()}@bookTicker", self.exchange.book_ticker(sym))
            for _ in range(self.trades_per_tick):
                await self.publish(f"{sym.lower()}@trade", self.exchange.market_trade(sym, now))

    def _move(self, sym: str, mid: Decimal | None, now: int) -> None:
        if mid is None:
            self.exchange.step(sym, now)
        else:
            self.exchange.set_mid(sym, mid, now)

    def _track_fills(self, action: Any) -> Any:
        """Run an exchange action; while hold_fills is on, hide the trades it created (late fills)."""
        before = {s: len(t) for s, t in self.exchange.trades.items()}
        result = action()
        if self.faults.hold_fills:
            for s, trades in self.exchange.trades.items():
                for t in trades[before[s] :]:
                    self.held_trade_ids.add(t["id"])
        return result

    def market_streams(self) -> set[str]:
        return {f"{s.lower()}@{kind}" for s in self.exchange.symbols for kind in ("trade", "bookTicker")}

    def _valid_stream(self, name: str) -> bool:
        return name in self.market_streams() or self._live_key(name)

    async def publish(self, stream: str, data: dict[str, Any]) -> None:
        if self.faults.stall:
            return
        raw_data = orjson.dumps(data)
        wrapped: str | None = None
        plain = raw_data.decode()
        for client in list(self.clients):
            if stream not in client.streams or client.ws.closed:
                continue
            if client.combined:
                if wrapped is None:
                    wrapped = orjson.dumps({"stream": stream, "data": data}).decode()
                text = wrapped
            else:
                text = plain
            try:
                await client.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                self.clients.discard(client)

    # -- user data -----------------------------------------------------------------------------
    def _live_key(self, key: str) -> bool:
        expiry = self.listen_keys.get(key)
        if expiry is None:
            return False
        if expiry > self.now_ms():
            return True
        self._expire(key)
        return False

    def _expire(self, key: str) -> None:
        """Tell the key's subscribers it expired (listenKeyExpired) and stop serving it."""
        self.listen_keys.pop(key, None)
        self._sync_listener()
        event = {"e": "listenKeyExpired", "E": self.now_ms(), "listenKey": key}
        self._send_user(key, event)
        for client in self.clients:
            client.streams.discard(key)

    def _sync_listener(self) -> None:
        """The engine builds user-data events only while someone can receive them."""
        wanted = self.listen_keys or self.ws_api_subs
        self.exchange.listener = self._user_event if wanted else None

    def _user_event(self, event: dict[str, Any]) -> None:
        """Exchange listener: deliver an account event to every live listen key's subscribers and
        every WebSocket API subscription (wrapped as {"subscriptionId": n, "event": ...})."""
        if self.faults.user_stream_stall:
            return
        for (conn, sub_id), transport in list(self.ws_api_subs.items()):
            if transport.is_closing():
                del self.ws_api_subs[(conn, sub_id)]
                continue
            transport.write(frame_text(orjson.dumps({"subscriptionId": sub_id, "event": event})))
            self.user_events_sent += 1
        if not self.listen_keys:
            return
        now = self.now_ms()
        for key, expiry in list(self.listen_keys.items()):
            if expiry <= now:
                self._expire(key)
            else:
                self._send_user(key, event)

    def _send_user(self, key: str, event: dict[str, Any]) -> None:
        # Written straight to the transport as ready frames: synchronous, so the engine never waits,
        # and the frames leave in the order the engine produced them.
        raw: bytes | None = None
        wrapped: bytes | None = None
        for client in list(self.clients):
            if key not in client.streams:
                continue
            transport = client.transport
            if transport is None or transport.is_closing():
                self.clients.discard(client)
                continue
            if client.combined:
                if wrapped is None:
                    wrapped = frame_text(orjson.dumps({"stream": key, "data": event}))
                transport.write(wrapped)
            else:
                if raw is None:
                    raw = frame_text(orjson.dumps(event))
                transport.write(raw)
            self.user_events_sent += 1

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval_s)
            if not self.paused:
                await self.step()

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if "load" in request.query:
            return await self._load_handler(request)
        combined = request.path == "/stream"
        if combined:
            names = [s for s in request.query.get("streams", "").split("/") if s]
        else:
            name = request.match_info.get("streams")
            names = [name] if name else []
        if not all(self._valid_stream(n) for n in names):
            # Refused before the upgrade, so a client sees the error instead of a silent socket.
            return web.Response(status=400, body=INVALID_STREAM, content_type="application/json")
        ws = web.WebSocketResponse(autoping=True, heartbeat=20.0)
        await ws.prepare(request)
        client = _Client(ws, combined, request.transport)
        client.streams.update(names)
        self.clients.add(client)
        self.connections += 1
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    await ws.send_str(self._ws_request(client, msg.data).decode())
        finally:
            self.clients.discard(client)
        return ws

    async def _ws_api_handler(self, request: web.Request) -> web.StreamResponse:
        """The WebSocket API's user-data methods (Binance's current way to get account events):
        `userDataStream.subscribe.signature`, `userDataStream.unsubscribe`, `ping`, `time`."""
        ws = web.WebSocketResponse(autoping=True, heartbeat=20.0)
        await ws.prepare(request)
        conn = id(ws)
        subs: list[int] = []  # this connection's subscription ids, in order; ids never repeat
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    reply = self._ws_api_request(conn, request.transport, subs, msg.data)
                    await ws.send_str(orjson.dumps(reply).decode())
        finally:
            for sub_id in subs:
                self.ws_api_subs.pop((conn, sub_id), None)
            self._ws_api_next.pop(conn, None)
            self._sync_listener()
        return ws

    def _ws_api_request(
        self, conn: int, transport: Any, subs: list[int], data: str | bytes
    ) -> dict[str, Any]:
        try:
            req = orjson.loads(data)
        except orjson.JSONDecodeError:
            req = None
        if not isinstance(req, dict):
            return {"id": None, "status": 400, "error": {"code": -1102, "msg": "Malformed request."}}
        req_id, method, params = req.get("id"), req.get("method"), req.get("params") or {}

        def fail(status: int, code: int, msg: str) -> dict[str, Any]:
            return {"id": req_id, "status": status, "error": {"code": code, "msg": msg}}

        if not isinstance(params, dict):
            return fail(400, -1102, "Malformed request: 'params' must be an object.")
        if method == "ping":
            return {"id": req_id, "status": 200, "result": {}}
        if method == "time":
            return {"id": req_id, "status": 200, "result": {"serverTime": self.now_ms()}}
        if method == "userDataStream.subscribe.signature":
            given = params.get("signature")
            if not isinstance(given, str) or not given:
                return fail(
                    400, -1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed."
                )
            api_key = params.get("apiKey")
            secret = self.secret_for(api_key) if isinstance(api_key, str) else None
            if secret is None:
                return fail(401, -2015, "Invalid API-key, IP, or permissions for action.")
            # WebSocket API payload: every parameter but the signature, sorted by name.
            payload = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "signature")
            expected = hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(given.lower().encode(), expected.encode()):
                return fail(400, -1022, "Signature for this request is not valid.")
            ts = params.get("timestamp")
            window = params.get("recvWindow", 5000)
            now = self.now_ms()
            if not isinstance(ts, int) or not isinstance(window, (int, float)) or not 0 < window <= 60000:
                return fail(
                    400, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."
                )
            if ts >= now + 1000 or now - ts > window:
                return fail(400, -1021, "Timestamp for this request is outside of the recvWindow.")
            self._ws_api_next[conn] = sub_id = self._ws_api_next.get(conn, -1) + 1
            subs.append(sub_id)
            self.ws_api_subs[(conn, sub_id)] = transport
            self._sync_listener()
            return {"id": req_id, "status": 200, "result": {"subscriptionId": sub_id}}
        if method == "userDataStream.unsubscribe":
            wanted = params.get("subscriptionId")
            for sub_id in list(subs):
                if wanted is None or wanted == sub_id:
                    subs.remove(sub_id)
                    self.ws_api_subs.pop((conn, sub_id), None)
            self._sync_listener()
            return {"id": req_id, "status": 200, "result": {}}
        return fail(400, -1020, "This operation is not supported.")

    def _ws_request(self, client: _Client, data: str | bytes) -> bytes:
        """Answer one SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY."""
        try:
            req = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return orjson.dumps({"code": 3, "msg": f"Invalid JSON: {exc}"})
        if not isinstance(req, dict):
            return orjson.dumps({"code": 3, "msg": "Invalid JSON: expected an object"})
        req_id = req.get("id")
        if req_id is not None and (
            isinstance(req_id, bool)
            or not isinstance(req_id, (int, str))
            or (isinstance(req_id, str) and (len(req_id) > 36 or not req_id.isalnum()))
        ):
            return orjson.dumps({"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"})
        method = req.get("method")
        params = req.get("params", [])

        def error(msg: str) -> bytes:
            return orjson.dumps({"error": {"code": 2, "msg": f"Invalid request: {msg}"}, "id": req_id})

        if method is None:
            return error("missing field `method`")
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return error("params must be a list of stream names")
            if method == "SUBSCRIBE":
                if not all(self._valid_stream(p) for p in params):
                    return error("invalid stream")
                client.streams.update(params)
                self.subscribed.set()
            else:
                client.streams.difference_update(params)
            return orjson.dumps({"result": None, "id": req_id})
        if method == "LIST_SUBSCRIPTIONS":
            return orjson.dumps({"result": sorted(client.streams), "id": req_id})
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            if not isinstance(params, list) or not params or params[0] != "combined":
                return orjson.dumps({"code": 0, "msg": "Unknown property", "id": req_id})
            if method == "GET_PROPERTY":
                return orjson.dumps({"result": client.combined, "id": req_id})
            if len(params) != 2 or not isinstance(params[1], bool):
                return orjson.dumps({"code": 1, "msg": "Invalid value type: expected Boolean", "id": req_id})
            client.combined = params[1]
            return orjson.dumps({"result": None, "id": req_id})
        return error(
            f"unknown variant `{method}`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, "
            "`LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"
        )

    async def _load_handler(self, request: web.Request) -> web.StreamResponse:
        """Load mode: after the handshake, blast `count` pre-framed messages straight to the transport.

        Frames are built before the first byte is sent, so sending runs at memcpy speed and the bot,
        not the simulator, is the bottleneck. `kind` = trade | book | mixed.
        """
        count = int(request.query.get("count") or request.query.get("load") or "100000")
        kind = request.query.get("kind", "mixed")
        combined = request.query.get("combined", "1") == "1"
        symbol = request.query.get("symbol", "BTCUSDT")
        key = (symbol, count, kind, combined)
        frames = self._load_cache.get(key)
        if frames is None:
            frames = self._load_cache[key] = build_load_frames(symbol, count, kind, combined)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        chunk = 1 << 20
        for start in range(0, len(frames), chunk):
            transport.write(frames[start : start + chunk])
            while transport.get_write_buffer_size() > 8 * chunk:
                await asyncio.sleep(0.001)  # simple flow control in load mode only
        # Leave the socket open until the client closes it, so the tail is not cut.
        async for _ in ws:
            pass
        return ws

    async def _echo_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    # -- REST plumbing -------------------------------------------------------------------------
    @staticmethod
    def _err(status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=status,
            body=orjson.dumps({"code": code, "msg": msg}),
            content_type="application/json",
            headers=headers,
        )

    @staticmethod
    def _ok(data: Any) -> web.Response:
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    @web.middleware
    async def _api_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Request weight for /api paths, and JSON (never plain-text) errors for unknown routes."""
        is_api = request.path.startswith("/api/")
        if is_api:
            now = self.clock()
            window = int(now // 60)
            if window != self._weight_window:
                self._weight_window, self.used_weight = window, 0
            self.used_weight += request_weight(request.method, request.path, request.query)
            if self.used_weight > self.weight_limit:
                return self._err(
                    429,
                    -1003,
                    f"Too much request weight used; current limit is {self.weight_limit} request weight "
                    "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
                    {
                        "Retry-After": str(max(1, math.ceil((window + 1) * 60 - now))),
                        "X-MBX-USED-WEIGHT-1M": str(self.used_weight),
                    },
                )
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status == 404:
                response = self._err(404, -1020, "This operation is not supported.")
            elif exc.status == 405:
                response = self._err(405, -1020, "This operation is not supported.")
            else:
                raise
        if is_api and not response.prepared:
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(self.used_weight)
        return response

    def _signed(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """A signed REST endpoint: verify the request, then map the exchange's rejections to error replies."""

        async def endpoint(request: web.Request) -> web.StreamResponse:
            try:
                params = await self._authenticate(request)
                if isinstance(params, web.Response):
                    return params
                return await handler(params)
            except SimError as exc:
                return self._err(exc.status, exc.code, exc.msg)

        return endpoint

    def _keyed(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """An API-key-only endpoint (USER_STREAM): key header, no signature."""

        async def endpoint(request: web.Request) -> web.StreamResponse:
            refused = self._check_key(request)
            if isinstance(refused, web.Response):
                return refused
            try:
                params: dict[str, str] = {}
                _parse(request.rel_url.raw_query_string, params, overwrite=True)
                if request.can_read_body:
                    _parse((await request.read()).decode("latin-1"), params, overwrite=False)
                return await handler(params)
            except SimError as exc:
                return self._err(exc.status, exc.code, exc.msg)

        return endpoint

    def _check_key(self, request: web.Request) -> web.Response | bytes:
        """The secret of the request's X-MBX-APIKEY, or the venue's 401 for a missing or inactive key."""
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            return self._err(401, -2014, "API-key format invalid.")
        secret = self.secret_for(key)
        if secret is None:
            return self._err(401, -2015, "Invalid API-key, IP, or permissions for action.")
        return secret

    async def _authenticate(self, request: web.Request) -> dict[str, str] | web.Response:
        """Check rate-limit faults, API key, HMAC signature and timestamp; return the parameters."""
        f = self.faults
        targeted = not f.limit_only or f.limit_only == f"{request.method} {request.path}"
        if f.ban_next > 0 and targeted:
            f.ban_next -= 1
            return self._err(
                418, -1003, "Way too many requests; IP banned.", {"Retry-After": str(f.retry_after_s)}
            )
        if f.rate_limit_next > 0 and targeted:
            f.rate_limit_next -= 1
            return self._err(429, -1003, "Too many requests.", {"Retry-After": str(f.retry_after_s)})
        secret = self._check_key(request)
        if isinstance(secret, web.Response):
            return secret
        # Binance signs the query string and the body exactly as they travel (percent-encoding
        # included), concatenated without a separator; verify over those raw bytes.
        query, q_sig = _split_signature(request.rel_url.raw_query_string)
        body_raw = (await request.read()).decode("latin-1") if request.can_read_body else ""
        body, b_sig = _split_signature(body_raw)
        if q_sig is not None and b_sig is not None:
            raise SimError(400, -1101, "Duplicate values for a parameter detected.")
        given = q_sig if q_sig is not None else b_sig
        if not given:
            return self._err(
                400, -1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed."
            )
        expected = hmac.new(secret, (query + body).encode("latin-1"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.lower().encode(), expected.encode()):
            return self._err(400, -1022, "Signature for this request is not valid.")
        params: dict[str, str] = {}
        _parse(query, params, overwrite=True)
        _parse(body, params, overwrite=False)  # "the query string parameter will be used"
        raw_ts = params.get("timestamp", "")
        if not raw_ts.isdigit():
            return self._err(
                400, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."
            )
        ts = int(raw_ts)
        if ts > 10**14:
            ts //= 1000  # microseconds are accepted too
        try:
            recv_window = Decimal(params.get("recvWindow", "5000"))
        except ArithmeticError:
            return self._err(400, -1100, "Illegal characters found in parameter 'recvWindow'.")
        if not recv_window.is_finite() or recv_window <= 0 or recv_window > 60000:
            return self._err(400, -1131, "recvWindow must be less than 60000")
        server_now = self.now_ms()
        if ts >= server_now + 1000:
            return self._err(400, -1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if server_now - ts > recv_window:
            return self._err(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        self.request_log.append((request.method, request.path, params))
        return params

    def _count_order(self) -> web.Response | dict[str, str]:
        """ORDERS rate limits: refuse past a limit, otherwise return the X-MBX-ORDER-COUNT headers."""
        now = int(self.clock())
        headers: dict[str, str] = {}
        for interval, (seconds, limit) in self.order_limits.items():
            window, count = self._order_counts.get(interval, (0, 0))
            if window != now // seconds:
                window, count = now // seconds, 0
            count += 1
            self._order_counts[interval] = (window, count)
            if count > limit:
                label = "10 SECOND" if interval == "10S" else "1 DAY"
                return self._err(
                    429,
                    -1015,
                    f"Too many new orders; current limit is {limit} orders per {label}.",
                    {"Retry-After": str(max(1, (window + 1) * seconds - now))},
                )
            headers[f"X-MBX-ORDER-COUNT-{interval}"] = str(count)
        return headers

    # -- public endpoints ----------------------------------------------------------------------
    async def _time(self, request: web.Request) -> web.Response:
        return self._ok({"serverTime": self.now_ms()})

    async def _ping(self, request: web.Request) -> web.Response:
        return self._ok({})

    def _symbols_param(self, query: Any) -> list[str] | None:
        """`symbol=X` or `symbols=["X","Y"]` (JSON array, as Binance takes it); None for all."""
        symbol, symbols = query.get("symbol"), query.get("symbols")
        if symbol is not None and symbols is not None:
            raise SimError(400, -1128, "Combination of optional parameters invalid.")
        if symbol is not None:
            if symbol not in self.exchange.symbols:
                raise SimError(400, -1121, "Invalid symbol.")
            return [symbol]
        if symbols is None:
            return None
        try:
            names = orjson.loads(symbols)
        except orjson.JSONDecodeError:
            names = None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise SimError(
                400,
                -1100,
                "Illegal characters found in parameter 'symbols'; legal range is "
                '\'^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$\'.',
            )
        for name in names:
            if name not in self.exchange.symbols:
                raise SimError(400, -1121, "Invalid symbol.")
        return names

    def rate_limits(self) -> list[dict[str, Any]]:
        return [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": self.weight_limit,
            },
            {
                "rateLimitType": "ORDERS",
                "interval": "SECOND",
                "intervalNum": 10,
                "limit": self.order_limits["10S"][1],
            },
            {
                "rateLimitType": "ORDERS",
                "interval": "DAY",
                "intervalNum": 1,
                "limit": self.order_limits["1D"][1],
            },
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ]

    async def _exchange_info(self, request: web.Request) -> web.Response:
        try:
            names = self._symbols_param(request.query)
            return self._ok(self.exchange.exchange_info(names, self.now_ms(), self.rate_limits()))
        except SimError as exc:
            return self._err(exc.status, exc.code, exc.msg)

    async def _book_ticker(self, request: web.Request) -> web.Response:
        try:
            names = self._symbols_param(request.query)
        except SimError as exc:
            return self._err(exc.status, exc.code, exc.msg)
        rows = []
        for symbol in names if names is not None else list(self.exchange.symbols):
            bt = self.exchange.book_ticker(symbol)
            rows.append(
                {
                    "symbol": symbol,
                    "bidPrice": bt["b"],
                    "bidQty": bt["B"],
                    "askPrice": bt["a"],
                    "askQty": bt["A"],
                }
            )
        return self._ok(rows[0] if "symbol" in request.query else rows)

    async def _ticker_price(self, request: web.Request) -> web.Response:
        try:
            names = self._symbols_param(request.query)
        except SimError as exc:
            return self._err(exc.status, exc.code, exc.msg)
        rows = [
            {"symbol": s, "price": f"{self.exchange.symbols[s].last_price:.8f}"}
            for s in (names if names is not None else list(self.exchange.symbols))
        ]
        return self._ok(rows[0] if "symbol" in request.query else rows)

    async def _depth(self, request: web.Request) -> web.Response:
        try:
            sym = self.exchange.symbol_param(dict(request.query))
            limit = int_param(dict(request.query), "limit", 100, 1, 5000)
            assert limit is not None
        except SimError as exc:
            return self._err(exc.status, exc.code, exc.msg)
        return self._ok(self.exchange.depth(sym.symbol, limit))

    # -- signed endpoints ----------------------------------------------------------------------
    async def _new_order(self, params: dict[str, str]) -> web.StreamResponse:
        f = self.faults
        if f.order_5xx_before_accept_next > 0:
            f.order_5xx_before_accept_next -= 1
            return self._err(f.error_status, -1000, "An unknown error occurred while processing the request.")
        counted = self._count_order()
        if isinstance(counted, web.Response):
            return counted
        order, fills, resp_type = self._track_fills(lambda: self.exchange.new_order(params, self.now_ms()))
        if f.order_stall_after_accept_next > 0:
            f.order_stall_after_accept_next -= 1
            await asyncio.sleep(f.stall_s)  # the venue is slow: the bot's timeout fires first
        if f.order_5xx_after_accept_next > 0:
            f.order_5xx_after_accept_next -= 1
            return self._err(f.error_status, -1000, "An unknown error occurred while processing the request.")
        response = self._ok(order.response(resp_type, fills))
        response.headers.update(counted)
        return response

    async def _test_order(self, params: dict[str, str]) -> web.Response:
        req = self.exchange.validate(params)
        if params.get("computeCommissionRates") != "true":
            return self._ok({})
        rate = f"{self.exchange.commission_rate:.8f}"
        zero = "0.00000000"
        return self._ok(
            {
                "standardCommissionForOrder": {"maker": rate, "taker": rate},
                "specialCommissionForOrder": {"maker": zero, "taker": zero},
                "taxCommissionForOrder": {"maker": zero, "taker": zero},
                "discount": {
                    "enabledForAccount": False,
                    "enabledForSymbol": False,
                    "discountAsset": req.sym.quote,
                    "discount": zero,
                },
            }
        )

    async def _query_order(self, params: dict[str, str]) -> web.Response:
        return self._ok(self.exchange.find(params).as_dict())

    async def _cancel_order(self, params: dict[str, str]) -> web.Response:
        return self._ok(self.exchange.cancel(params, self.now_ms()))

    async def _open_orders(self, params: dict[str, str]) -> web.Response:
        return self._ok([o.as_dict() for o in self.exchange.open_orders(params.get("symbol"))])

    async def _cancel_all(self, params: dict[str, str]) -> web.Response:
        return self._ok(self.exchange.cancel_all(params, self.now_ms()))

    async def _all_orders(self, params: dict[str, str]) -> web.Response:
        return self._ok([o.as_dict() for o in self.exchange.all_orders(params)])

    async def _my_trades(self, params: dict[str, str]) -> web.Response:
        sym = self.exchange.symbol_param(params)
        from_id = int_param(params, "fromId", None)
        limit = int_param(params, "limit", 500, 1, 1000)
        assert limit is not None
        if "orderId" in params:
            order_id = int_param(params, "orderId", None)
            trades = [t for t in self.exchange.trades[sym.symbol] if t["orderId"] == order_id][:limit]
        else:
            trades = self.exchange.my_trades(sym.symbol, from_id, limit)
        trades = [t for t in trades if t["id"] not in self.held_trade_ids]
        if self.faults.duplicate_fills:
            trades = [t for t in trades for _ in (0, 1)]
        return self._ok(trades)

    async def _account(self, params: dict[str, str]) -> web.Response:
        return self._ok(self.exchange.account())

    # -- listen keys (USER_STREAM) -------------------------------------------------------------
    async def _listen_key_new(self, params: dict[str, str]) -> web.Response:
        """One key per account, as on Binance: asking again returns the live key, extended."""
        now = self.now_ms()
        live = [k for k in list(self.listen_keys) if self._live_key(k)]
        key = live[0] if live else secrets.token_urlsafe(45)[:60]
        self.listen_keys[key] = now + LISTEN_KEY_TTL_MS
        self._sync_listener()
        return self._ok({"listenKey": key})

    def _known_key(self, params: dict[str, str]) -> str:
        key = params.get("listenKey")
        if not key:
            raise SimError(
                400, -1102, "Mandatory parameter 'listenKey' was not sent, was empty/null, or malformed."
            )
        if not self._live_key(key):
            raise SimError(400, -1125, "This listenKey does not exist.")
        return key

    async def _listen_key_keepalive(self, params: dict[str, str]) -> web.Response:
        self.listen_keys[self._known_key(params)] = self.now_ms() + LISTEN_KEY_TTL_MS
        return self._ok({})

    async def _listen_key_close(self, params: dict[str, str]) -> web.Response:
        key = self._known_key(params)
        del self.listen_keys[key]
        self._sync_listener()
        for client in list(self.clients):
            if key in client.streams:
                client.streams.discard(key)
        return self._ok({})

    # -- state ---------------------------------------------------------------------------------
    async def _state(self, request: web.Request) -> web.Response:
        ex = self.exchange
        return self._ok(
            {
                "faults": asdict(self.faults),
                "accepted_orders": ex.accepted_orders,
                # ids are given in order: what was made between two readings is the range between these
                "next_order_id": ex.next_order_id,
                "next_trade_id": ex.next_trade_id,
                "open_orders": sum(len(o) for o in ex.open.values()),
                "trades": {s: len(t) for s, t in ex.trades.items()},
                "connections": self.connections,
                "clients": len(self.clients),
                "used_weight": self.used_weight,
                "user_events_sent": self.user_events_sent,
                "api_keys": len(self._api_keys),  # how many are active; never a key
            }
        )


def build_load_frames(symbol: str, count: int, kind: str = "mixed", combined: bool = True) -> bytes:
    """Pre-framed market data with increasing ids (the bot must not drop them as replays).

    Prices wander over a few thousand ticks and sizes are nearly all distinct, like a real feed,
    so the bot's decimal cache gets no unrealistic help.
    """
    lower = symbol.lower()
    parts: list[bytes] = []
    append = parts.append
    for i in range(count):
        is_trade = kind == "trade" or (kind == "mixed" and i % 2 == 0)
        cents = 3_000_000 + (i * 37) % 5000
        size = f"{((i * 7919) % 1_000_000 or 1) / 100000:.5f}"  # never zero: a real trade has a size
        if is_trade:
            data = (
                f'{{"e":"trade","E":{1700000000000 + i},"s":"{symbol}","t":{i + 1},"p":"{cents / 100:.2f}",'
                f'"q":"{size}","T":{1700000000000 + i},"m":{"true" if i & 1 else "false"},"M":true}}'
            )
            stream = f"{lower}@trade"
        else:
            other = f"{(i * 104729) % 1_000_000 / 100000:.5f}"
            data = (
                f'{{"u":{i + 1},"s":"{symbol}","b":"{cents / 100:.2f}","B":"{size}",'
                f'"a":"{(cents + 2) / 100:.2f}","A":"{other}"}}'
            )
            stream = f"{lower}@bookTicker"
        text = f'{{"stream":"{stream}","data":{data}}}' if combined else data
        append(frame_text(text.encode()))
    return b"".join(parts)
