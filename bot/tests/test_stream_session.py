"""The WebSocket receive side (binance_ws.StreamSession on picows): frames reach the handler whole, in
order, never past a close, and an order placed by one frame is sent before the next frame is handled.

Unit tests feed picows' own frame objects (`_make_test_ws_frame`) to the session; the integration
tests run the real client against an aiohttp WebSocket server on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

import pytest
from aiohttp import web
from picows import WSMsgType
from picows.picows import _make_test_ws_frame

from rampart_bot.adapters import binance_ws
from rampart_bot.adapters.binance_ws import (
    HELD_PAUSE_BYTES,
    MAX_MESSAGE_BYTES,
    SOCKET_RCVBUF_BYTES,
    YIELD_TO_LOOP,
    MarketDataClient,
    ParseStats,
    StreamSession,
    parse_market_message,
)

from .test_issue13 import _serve

BOOK = b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"1.00","B":"1","a":"1.01","A":"1"}}'


def text(payload: bytes, fin: bool = True):  # type: ignore[no-untyped-def]
    return _make_test_ws_frame(WSMsgType.TEXT, payload, fin, False)


def frame(kind: WSMsgType, payload: bytes, fin: bool = True):  # type: ignore[no-untyped-def]
    return _make_test_ws_frame(kind, payload, fin, False)


class FakeUnderlying:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1


class FakeTransport:
    def __init__(self) -> None:
        self.underlying_transport = FakeUnderlying()
        self.closes: list[object] = []
        self.disconnects = 0

    def send_close(self, code: object = None, message: object = None) -> None:
        self.closes.append(code)

    def disconnect(self, graceful: bool = True) -> None:
        self.disconnects += 1


def session_with(handler: Callable[[bytes], object]) -> tuple[StreamSession, FakeTransport]:
    stream = MarketDataClient("ws://127.0.0.1:9", ["BTCUSDT"], handler)
    session = StreamSession(stream)
    transport = FakeTransport()
    session.on_ws_connected(transport)  # type: ignore[arg-type]
    return session, transport


@pytest.mark.asyncio
async def test_frames_before_start_wait_and_are_handled_in_order() -> None:
    got: list[bytes] = []
    session, transport = session_with(got.append)
    for i in range(3):
        session.on_ws_frame(transport, text(b'{"n":%d}' % i))  # type: ignore[arg-type]
    assert got == []  # the subscription and the REST catch-up run first
    session.start(healthy_at=float("inf"))
    session.on_ws_frame(transport, text(b'{"n":3}'))  # type: ignore[arg-type]
    assert got == [b'{"n":%d}' % i for i in range(4)]
    assert session.stream.frames == 4


@pytest.mark.asyncio
async def test_an_order_is_sent_before_the_next_frame_is_handled() -> None:
    """A frame that places an order (YIELD_TO_LOOP) holds the frames behind it, those of the same
    socket read included, until the order's send task has run."""
    log: list[str] = []

    async def send(n: int) -> None:
        log.append(f"sent {n}")

    def handler(payload: bytes) -> object:
        n = int(payload[5:-1])
        log.append(f"frame {n}")
        if n in (1, 2):
            asyncio.get_running_loop().create_task(send(n))
            return YIELD_TO_LOOP
        return None

    session, transport = session_with(handler)
    session.start(healthy_at=float("inf"))
    for i in range(5):  # one socket read: picows delivers all five in one go
        session.on_ws_frame(transport, text(b'{"n":%d}' % i))  # type: ignore[arg-type]
    assert log == ["frame 0", "frame 1"]
    for _ in range(4):
        await asyncio.sleep(0)
    assert log == ["frame 0", "frame 1", "sent 1", "frame 2", "sent 2", "frame 3", "frame 4"]


@pytest.mark.asyncio
async def test_held_frames_pause_the_socket_and_resume_it_once_handled() -> None:
    got: list[bytes] = []
    session, transport = session_with(got.append)
    payload = b'{"pad":"' + b"x" * 60_000 + b'"}'
    count = HELD_PAUSE_BYTES // len(payload) + 2
    for _ in range(count):
        session.on_ws_frame(transport, text(payload))  # type: ignore[arg-type]
    assert transport.underlying_transport.paused == 1  # once, at the threshold
    assert transport.underlying_transport.resumed == 0
    session.start(healthy_at=float("inf"))
    assert len(got) == count
    assert transport.underlying_transport.resumed == 1


@pytest.mark.asyncio
async def test_a_close_ends_the_session_after_the_frames_before_it() -> None:
    got: list[bytes] = []
    session, transport = session_with(got.append)
    session.on_ws_frame(transport, text(b'{"n":0}'))  # type: ignore[arg-type]
    session.on_ws_frame(transport, frame(WSMsgType.CLOSE, struct.pack("!H", 1000)))  # type: ignore[arg-type]
    session.on_ws_frame(transport, text(b'{"n":1}'))  # type: ignore[arg-type]  # after the close: never handled
    assert transport.disconnects == 1 and len(transport.closes) == 1  # answered, then dropped
    assert not session.ended.done()
    session.start(healthy_at=float("inf"))
    assert got == [b'{"n":0}']
    assert session.ended.result() == "closed_by_server"
    session.on_ws_disconnected(transport)  # type: ignore[arg-type]
    assert session.ended.result() == "closed_by_server"


@pytest.mark.asyncio
async def test_only_data_frames_reach_the_handler() -> None:
    """The fast path takes a frame whose payload is a JSON object as data without reading its type:
    a close frame (whatever its code) must never be taken for one, and data that is not an object
    still arrives through the typed path."""
    got: list[bytes] = []
    session, transport = session_with(got.append)
    session.start(healthy_at=float("inf"))
    session.on_ws_frame(transport, frame(WSMsgType.BINARY, b"[1,2]"))  # type: ignore[arg-type]
    session.on_ws_frame(transport, frame(WSMsgType.TEXT, b' {"n":1}'))  # type: ignore[arg-type]
    session.on_ws_frame(transport, frame(WSMsgType.PONG, b"x"))  # type: ignore[arg-type]
    assert got == [b"[1,2]", b' {"n":1}']
    for code in (1000, 1001, 3000, 4999):
        closing, tr = session_with(got.append)
        closing.start(healthy_at=float("inf"))
        closing.on_ws_frame(tr, frame(WSMsgType.CLOSE, struct.pack("!H", code) + b"{}"))  # type: ignore[arg-type]
        assert closing.ended.result() == "closed_by_server"
    assert got == [b"[1,2]", b' {"n":1}']


@pytest.mark.asyncio
async def test_a_fragmented_message_is_reassembled() -> None:
    got: list[bytes] = []
    session, transport = session_with(got.append)
    session.start(healthy_at=float("inf"))
    session.on_ws_frame(transport, text(BOOK[:10], fin=False))  # type: ignore[arg-type]
    session.on_ws_frame(transport, frame(WSMsgType.PING, b"{}"))  # type: ignore[arg-type]
    session.on_ws_frame(transport, frame(WSMsgType.CONTINUATION, BOOK[10:50], fin=False))  # type: ignore[arg-type]
    session.on_ws_frame(transport, frame(WSMsgType.CONTINUATION, BOOK[50:]))  # type: ignore[arg-type]
    assert got == [BOOK]
    # A continuation with no message started is not data.
    session.on_ws_frame(transport, frame(WSMsgType.CONTINUATION, b"[1]"))  # type: ignore[arg-type]
    assert got == [BOOK]


@pytest.mark.asyncio
async def test_an_oversized_fragmented_message_is_cut_and_dropped_as_too_large() -> None:
    got: list[bytes] = []
    session, transport = session_with(got.append)
    session.start(healthy_at=float("inf"))
    chunk = b"x" * 40_000
    session.on_ws_frame(transport, text(b'{"pad":"' + chunk, fin=False))  # type: ignore[arg-type]
    for _ in range(5):
        session.on_ws_frame(transport, frame(WSMsgType.CONTINUATION, chunk, fin=False))  # type: ignore[arg-type]
    session.on_ws_frame(transport, frame(WSMsgType.CONTINUATION, b'"}'))  # type: ignore[arg-type]
    assert [len(p) for p in got] == [MAX_MESSAGE_BYTES + 1]  # kept no more than needed to refuse it
    stats = ParseStats(shared_log_limit=False)
    assert parse_market_message(got[0], stats) is None
    assert stats.dropped == {"too_large": 1}


@pytest.mark.asyncio
async def test_a_failing_handler_ends_the_session_not_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    def handler(payload: bytes) -> object:
        raise RuntimeError("bug")

    session, transport = session_with(handler)
    session.start(healthy_at=float("inf"))
    session.on_ws_frame(transport, text(b'{"n":0}'))  # type: ignore[arg-type]
    session.on_ws_frame(transport, text(b'{"n":1}'))  # type: ignore[arg-type]
    assert session.ended.result() == "handler_error:RuntimeError"
    assert session.stream.frames == 1  # nothing after the failure
    assert any("frame handler failed" in r.getMessage() for r in caplog.records)


# -- against a real server -----------------------------------------------------------------------
@pytest.mark.asyncio
async def test_subscribes_receives_answers_pings_and_caps_the_socket_buffer() -> None:
    seen: dict[str, object] = {}

    async def venue(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        sub = await ws.receive()
        seen["subscribe"] = (sub.type, sub.data)
        await ws.ping(b"hb")
        seen["pong"] = (await ws.receive()).data  # picows answers on its own
        for u in range(1, 4):
            await ws.send_str(BOOK.decode().replace('"u":1', f'"u":{u}'))
        await ws.receive()  # until the client goes
        return ws

    runner, url = await _serve(venue)
    got: list[bytes] = []
    try:
        md = MarketDataClient(url, ["BTCUSDT"], got.append)
        task = asyncio.create_task(md.run())
        for _ in range(200):
            if len(got) == 3:
                break
            await asyncio.sleep(0.01)
        ws = md._ws
        assert ws is not None
        sock = ws.underlying_transport.get_extra_info("socket")
        # Linux reports twice the value set (its bookkeeping share); autotuning would be far above.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= 2 * SOCKET_RCVBUF_BYTES
        await md.stop()
        await asyncio.wait_for(task, 5)
    finally:
        await runner.cleanup()
    kind, data = seen["subscribe"]  # type: ignore[misc]
    assert kind is web.WSMsgType.TEXT and '"SUBSCRIBE"' in data
    assert seen["pong"] == b"hb"
    assert [p[p.index(b'"u":') : p.index(b',"s"')] for p in got] == [b'"u":1', b'"u":2', b'"u":3']


@pytest.mark.asyncio
async def test_a_handler_error_reconnects_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    connects = 0

    async def venue(request: web.Request) -> web.WebSocketResponse:
        nonlocal connects
        connects += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        await ws.send_bytes(BOOK)
        await ws.receive()
        return ws

    def handler(payload: bytes) -> object:
        raise RuntimeError("bug")

    runner, url = await _serve(venue)
    try:
        md = MarketDataClient(url, ["BTCUSDT"], handler, backoff=binance_ws.Backoff(0.01, 0.02))
        task = asyncio.create_task(md.run())
        for _ in range(300):
            if connects >= 3:
                break
            await asyncio.sleep(0.01)
        await md.stop()
        await asyncio.wait_for(task, 5)
    finally:
        await runner.cleanup()
    assert connects >= 3  # each failure ended one session; the stream went on


@pytest.mark.asyncio
async def test_a_connect_that_never_completes_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that accepts TCP but never answers the upgrade: the attempt ends at the connect bound
    (not picows' 10 s handshake timeout, nor the OS's two minutes) and counts as a failed connect."""
    monkeypatch.setattr(binance_ws, "CONNECT_TIMEOUT_S", 0.3)
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        md = MarketDataClient(f"ws://127.0.0.1:{port}", ["BTCUSDT"], lambda raw: None)
        reason = await asyncio.wait_for(md._session_once(f"ws://127.0.0.1:{port}/stream"), 5)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert reason == "connect_failed:TimeoutError"
    assert accepted
