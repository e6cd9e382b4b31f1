"""The exchange simulator's network side: Binance-Spot WebSocket and REST formats, signature checks,
fault injection (Python API and a /sim/control endpoint) and a load mode with pre-framed sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import struct
import time
from dataclasses import asdict, dataclass, fields
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import WSMsgType, web

from .exchange import Exchange, PriceProcess, SimError, SimSymbol

log = logging.getLogger(__name__)

SIGNED_PATHS = {"/api/v3/order", "/api/v3/openOrders", "/api/v3/myTrades", "/api/v3/account"}


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


def default_exchange(seed: int = 7) -> Exchange:
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
    )


class SimServer:
    def __init__(
        self,
        api_key: str,
        api_secret: str,
        exchange: Exchange | None = None,
        tick_interval_s: float = 0.0,
        trades_per_tick: int = 1,
    ) -> None:
        self.api_key = api_key
        self._secret = api_secret.encode()
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
        self._load_cache: dict[tuple[str, int, str, bool], bytes] = {}
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.port = 0
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/ws/{streams}", self._ws_handler),
                web.get("/stream", self._ws_handler),
                web.get("/load", self._load_handler),
                web.get("/echo", self._echo_handler),
                web.get("/api/v3/time", self._time),
                web.get("/api/v3/ping", self._ping),
                web.get("/api/v3/exchangeInfo", self._exchange_info),
                web.get("/api/v3/ticker/bookTicker", self._book_ticker),
                web.post("/api/v3/order", self._signed(self._new_order)),
                web.get("/api/v3/order", self._signed(self._query_order)),
                web.delete("/api/v3/order", self._signed(self._cancel_order)),
                web.get("/api/v3/openOrders", self._signed(self._open_orders)),
                web.delete("/api/v3/openOrders", self._signed(self._cancel_all)),
                web.get("/api/v3/myTrades", self._signed(self._my_trades)),
                web.get("/api/v3/account", self._signed(self._account)),
                web.post("/sim/control", self._control),
                web.get("/sim/state", self._state),
            ]
        )

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self.tick_interval_s > 0:
            self._ticker = asyncio.create_task(self._tick_loop())
        return self.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for client in list(self.clients):
            await client.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- fault API (tests call these directly) ---------------------------------------------------
    def set_faults(self, **changes: Any) -> None:
        names = {f.name for f in fields(Faults)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown fault {key!r}")
            setattr(self.faults, key, value)

    def drop_sockets(self) -> int:
        """Abort every market-data connection without a close handshake."""
        dropped = 0
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abort()
                dropped += 1
        return dropped

    async def rotate(self) -> int:
        """What the venue does at 24 h and before maintenance: serverShutdown, then close."""
        clients = list(self.clients)
        payload = orjson.dumps({"e": "serverShutdown", "E": self.now_ms()})
        for client in clients:
            try:
                await client.ws.send_str(payload.decode())
                await client.ws.close(code=1001, message=b"server shutdown")
            except (ConnectionError, RuntimeError):
                pass
        return len(clients)

    def release_fills(self) -> None:
        self.faults.hold_fills = False
        self.held_trade_ids.clear()

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

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval_s)
            if not self.paused:
                await self.step()

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if "load" in request.query:
            return await self._load_handler(request)
        ws = web.WebSocketResponse(autoping=True, heartbeat=20.0)
        await ws.prepare(request)
        combined = request.path == "/stream"
        client = _Client(ws, combined, request.transport)
        if combined:
            streams = request.query.get("streams", "")
            client.streams.update(s for s in streams.split("/") if s)
        else:
            client.streams.update(request.match_info["streams"].split("/"))
        self.clients.add(client)
        self.connections += 1
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
                    continue
                try:
                    req = orjson.loads(msg.data)
                    method = req.get("method")
                    params = req.get("params") or []
                    req_id = req.get("id")
                except (orjson.JSONDecodeError, AttributeError):
                    await ws.send_str('{"error":{"code":2,"msg":"Invalid request"}}')
                    continue
                if method == "SUBSCRIBE":
                    client.streams.update(str(p) for p in params)
                    await ws.send_str(orjson.dumps({"result": None, "id": req_id}).decode())
                    self.subscribed.set()
                elif method == "UNSUBSCRIBE":
                    client.streams.difference_update(str(p) for p in params)
                    await ws.send_str(orjson.dumps({"result": None, "id": req_id}).decode())
                elif method == "LIST_SUBSCRIPTIONS":
                    await ws.send_str(orjson.dumps({"result": sorted(client.streams), "id": req_id}).decode())
                else:
                    await ws.send_str(
                        orjson.dumps({"error": {"code": 1, "msg": "Invalid method"}, "id": req_id}).decode()
                    )
        finally:
            self.clients.discard(client)
        return ws

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

    # -- REST ----------------------------------------------------------------------------------
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

    def _signed(self, handler):
        """A signed REST endpoint: verify the request, then map the exchange's rejections to error replies."""

        async def endpoint(request: web.Request) -> web.Response:
            params = await self._authenticate(request)
            if isinstance(params, web.Response):
                return params
            try:
                return await handler(params)
            except SimError as exc:
                return self._err(exc.status, exc.code, exc.msg)

        return endpoint

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
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            return self._err(401, -2015, "Invalid API-key, IP, or permissions for action.")
        query = request.query_string
        body = (await request.text()) if request.can_read_body else ""
        total = query + body
        marker = total.rfind("signature=")
        if marker <= 0 or total[marker - 1] != "&":
            return self._err(400, -1102, "Mandatory parameter 'signature' was not sent.")
        payload = total[: marker - 1]
        given = total[marker + len("signature=") :]
        expected = hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given, expected):
            return self._err(400, -1022, "Signature for this request is not valid.")
        params = dict(parse_qsl(payload, keep_blank_values=True))
        try:
            ts = int(params["timestamp"])
            recv_window = int(params.get("recvWindow", "5000"))
        except (KeyError, ValueError):
            return self._err(400, -1102, "Mandatory parameter 'timestamp' was not sent.")
        if recv_window > 60000:
            return self._err(400, -1131, "recvWindow must be less than 60000")
        server_now = self.now_ms()
        if ts >= server_now + 1000 or server_now - ts > recv_window:
            return self._err(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        self.request_log.append((request.method, request.path, params))
        return params

    async def _time(self, request: web.Request) -> web.Response:
        return self._ok({"serverTime": self.now_ms()})

    async def _ping(self, request: web.Request) -> web.Response:
        return self._ok({})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return self._ok(self.exchange.exchange_info())

    async def _book_ticker(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        if symbol not in self.exchange.symbols:
            return self._err(400, -1121, "Invalid symbol.")
        bt = self.exchange.book_ticker(symbol)
        return self._ok(
            {"symbol": symbol, "bidPrice": bt["b"], "bidQty": bt["B"], "askPrice": bt["a"], "askQty": bt["A"]}
        )

    async def _new_order(self, params: dict[str, str]) -> web.Response:
        f = self.faults
        if f.order_5xx_before_accept_next > 0:
            f.order_5xx_before_accept_next -= 1
            return self._err(f.error_status, -1000, "An unknown error occurred while processing the request.")
        order = self._track_fills(lambda: self.exchange.new_order(params, self.now_ms()))
        if f.order_stall_after_accept_next > 0:
            f.order_stall_after_accept_next -= 1
            await asyncio.sleep(f.stall_s)  # the venue is slow: the bot's timeout fires first
        if f.order_5xx_after_accept_next > 0:
            f.order_5xx_after_accept_next -= 1
            return self._err(f.error_status, -1000, "An unknown error occurred while processing the request.")
        d = order.as_dict()
        d["transactTime"] = order.time_ms
        return self._ok(d)

    async def _query_order(self, params: dict[str, str]) -> web.Response:
        return self._ok(self.exchange.find(params).as_dict())

    async def _cancel_order(self, params: dict[str, str]) -> web.Response:
        return self._ok(self.exchange.cancel(params, self.now_ms()).as_dict())

    async def _open_orders(self, params: dict[str, str]) -> web.Response:
        return self._ok([o.as_dict() for o in self.exchange.open_orders(params.get("symbol"))])

    async def _cancel_all(self, params: dict[str, str]) -> web.Response:
        return self._ok([o.as_dict() for o in self.exchange.cancel_all(params, self.now_ms())])

    async def _my_trades(self, params: dict[str, str]) -> web.Response:
        symbol = params.get("symbol", "")
        if symbol not in self.exchange.symbols:
            return self._err(400, -1121, "Invalid symbol.")
        from_id = int(params["fromId"]) if "fromId" in params else None
        limit = min(int(params.get("limit", "500")), 1000)
        trades = self.exchange.my_trades(symbol, from_id, limit)
        if "orderId" in params:
            trades = [t for t in self.exchange.trades[symbol] if str(t["orderId"]) == params["orderId"]]
        trades = [t for t in trades if t["id"] not in self.held_trade_ids]
        if self.faults.duplicate_fills:
            trades = [t for t in trades for _ in (0, 1)]
        return self._ok(trades)

    async def _account(self, params: dict[str, str]) -> web.Response:
        return self._ok(self.exchange.account())

    # -- control -------------------------------------------------------------------------------
    async def _control(self, request: web.Request) -> web.Response:
        """Out-of-process fault switch: {"faults": {...}, "action": "drop|rotate|release_fills|step"}.

        Only for the simulator: it is never deployed where a real venue is reachable.
        """
        try:
            body = await request.json()
            if "faults" in body:
                self.set_faults(**body["faults"])
            action = body.get("action")
            result: Any = None
            if action == "drop":
                result = self.drop_sockets()
            elif action == "rotate":
                result = await self.rotate()
            elif action == "release_fills":
                self.release_fills()
            elif action == "step":
                await self.step(body.get("symbol"))
            elif action is not None:
                raise ValueError(f"unknown action {action!r}")
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, "result": result, "faults": asdict(self.faults)})

    async def _state(self, request: web.Request) -> web.Response:
        ex = self.exchange
        return self._ok(
            {
                "faults": asdict(self.faults),
                "accepted_orders": ex.accepted_orders,
                "open_orders": sum(len(o) for o in ex.open.values()),
                "trades": {s: len(t) for s, t in ex.trades.items()},
                "connections": self.connections,
                "clients": len(self.clients),
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
        size = f"{(i * 7919) % 1_000_000 / 100000:.5f}"
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
