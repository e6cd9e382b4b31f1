"""Binance-Spot market data: a defensive message parser and a self-healing WebSocket client."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, Union

import msgspec
import orjson
import picows
from picows import WSCloseCode, WSError, WSListener, WSMsgType

from ..core.model import ZERO, BookTicker, Trade

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
# A frame handler returns this after it started work that should not wait for the frames already
# buffered behind this one (an order's send task): the receive loop yields to the event loop once.
YIELD_TO_LOOP = object()


_DROP_LOG_INTERVAL_S = 10.0  # at most one log line per reason per interval (a flood must not flood logs)
_SAMPLE_CHARS = 160


class ParseStats:
    """Plain counters: incrementing an int is far cheaper than a Prometheus counter on the hot path.

    Every drop is counted; the first drop of each reason per interval is also logged with a truncated
    sample of the frame, and the next line says how many were suppressed in between.
    """

    __slots__ = ("messages", "trades", "books", "dropped", "_last_log", "_suppressed", "clock")

    # One process, one log: the rate limit is shared by every ParseStats (class-level state).
    _shared_last_log: dict[str, float] = {}
    _shared_suppressed: dict[str, int] = {}

    def __init__(self, clock: Callable[[], float] = time.monotonic, shared_log_limit: bool = True) -> None:
        self.messages = 0
        self.trades = 0
        self.books = 0
        self.dropped: dict[str, int] = {}
        self._last_log = ParseStats._shared_last_log if shared_log_limit else {}
        self._suppressed = ParseStats._shared_suppressed if shared_log_limit else {}
        self.clock = clock

    def drop(self, reason: str, sample: object = None) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        now = self.clock()
        last = self._last_log.get(reason)
        if last is not None and now - last < _DROP_LOG_INTERVAL_S:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last_log[reason] = now
        log.warning(
            "market data frame dropped",
            extra={
                "reason": reason,
                "sample": _sample(sample),
                "suppressed_since_last": self._suppressed.pop(reason, 0),
            },
        )


def _sample(raw: object) -> str:
    if raw is None:
        return ""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        text = bytes(raw[: _SAMPLE_CHARS + 1]).decode("utf-8", errors="replace")
    elif isinstance(raw, str):
        text = raw[: _SAMPLE_CHARS + 1]
    else:
        text = repr(raw)[: _SAMPLE_CHARS + 1]
    return text if len(text) <= _SAMPLE_CHARS else text[:_SAMPLE_CHARS] + "..."


# Venue decimals are plain "123.45" strings. Requiring exactly that rejects NaN, Infinity,
# negatives, exponents (1e999999) and JSON numbers before Decimal() sees them.
# The quantifiers are possessive (`{1,20}+`, `?+`): a digit run is always followed by "." or a space or
# the end, so giving digits back could never lead to a match. Not backtracking is the same language,
# ~15-25 % cheaper per call.
_DECIMAL_PATTERN = r"[0-9]{1,20}+(?:\.[0-9]{1,20}+)?+"
_PLAIN_DECIMAL = re.compile(_DECIMAL_PATTERN).fullmatch
# Two plain decimals joined by one space: one regex call checks a bookTicker's two sizes (a call costs
# more than the matching). Equivalent to checking each: neither may contain a space, so the joined
# string has exactly one, and the split is unique.
_PLAIN_DECIMAL_PAIR = re.compile(f"{_DECIMAL_PATTERN} {_DECIMAL_PATTERN}").fullmatch
_SYMBOL = re.compile(r"[A-Z0-9]{1,20}").fullmatch

# Prices and sizes repeat a lot from tick to tick: converting each distinct string once is the
# single biggest saving on the hot path. Only validated strings are ever cached.
_DEC_CACHE: dict[str, Decimal] = {}
_DEC_CACHE_MAX = 8192


def _dec(value: str) -> Decimal:
    if _PLAIN_DECIMAL(value) is None:
        raise ValueError("decimal field must be a short plain decimal string")
    if len(_DEC_CACHE) >= _DEC_CACHE_MAX:
        _DEC_CACHE.clear()
    d = _DEC_CACHE[value] = Decimal(value)
    return d


_SYMBOLS_SEEN: set[str] = set()


def _symbol(value: str) -> str:
    if _SYMBOL(value) is None:
        raise ValueError("bad symbol")
    if len(_SYMBOLS_SEEN) < 10_000:
        _SYMBOLS_SEEN.add(value)
    return value


# Binance ids are signed 64-bit; anything else is not an id.
SeqId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class _Frame(msgspec.Struct, gc=False):
    """Every field a market-data frame may carry, strictly typed (msgspec refuses "m":"true",
    a float id, a number where a decimal string belongs). Absent fields keep their sentinel
    default, which the dispatcher reads as "missing"."""

    e: str = ""
    s: str = ""
    t: SeqId = -1  # type: ignore[assignment]
    p: str = ""
    q: str = ""
    T: int = -1
    m: bool | None = None
    u: SeqId = -1  # type: ignore[assignment]
    b: str = ""
    B: str = ""
    a: str = ""
    A: str = ""
    # subscription acknowledgements and errors
    id: Any = msgspec.UNSET
    result: Any = msgspec.UNSET
    error: Any = msgspec.UNSET
    # combined-stream envelope
    stream: str = ""
    data: _Frame | None = None


_decode_frame = msgspec.json.Decoder(_Frame).decode


# The fast path: a combined-stream frame of a stream we subscribed to decodes straight into the
# struct of its kind, chosen by msgspec from the envelope's "stream" name (a tagged union), with
# the fields of that kind required. That spares the Python-level dispatch and presence checks; any
# frame it refuses takes the generic path, which names the reason. The other kind's fields are
# typed as in _Frame, so both paths refuse the same frames. Each registered stream gets its own
# subclass whose "s" must be that stream's symbol (see register_streams).
class _TradeData(msgspec.Struct, gc=False):
    e: Literal["trade"]
    s: str
    t: SeqId
    p: str
    q: str
    T: Annotated[int, msgspec.Meta(ge=0)]
    m: bool
    u: SeqId = -1  # type: ignore[assignment]
    b: str = ""
    B: str = ""
    a: str = ""
    A: str = ""
    stream: str = ""
    data: _Frame | None = None


class _BookData(msgspec.Struct, gc=False):
    u: SeqId
    s: str
    b: str
    B: str
    a: str
    A: str
    e: Literal[""] = ""  # a bookTicker carries no event type; one with an "e" is not a bookTicker
    t: SeqId = -1  # type: ignore[assignment]
    p: str = ""
    q: str = ""
    T: int = -1
    m: bool | None = None
    stream: str = ""
    data: _Frame | None = None


class _TradeEnvelope(msgspec.Struct, gc=False, tag_field="stream"):
    data: _TradeData


class _BookEnvelope(msgspec.Struct, gc=False, tag_field="stream"):
    data: _BookData


# A stream name never contains NUL: this member only makes the union have two members, so that
# msgspec insists on the tag (a lone tagged struct would also accept a frame without "stream").
_Unmatched = msgspec.defstruct("_Unmatched", [], bases=(_BookEnvelope,), tag="\x00")
# A registered stream's name -> its envelope struct, whose `symbol_kind` is (its symbol, "trade" or
# "bookTicker").
_STREAM_TYPES: dict[str, Any] = {}
_MAX_FAST_STREAMS = 2048
_decode_fast: Callable[[str | bytes], Any] | None = None


def register_streams(streams: Sequence[str]) -> None:
    """Let frames of these streams ("btcusdt@trade", "btcusdt@bookTicker") take the fast path.

    A frame of a registered stream must carry that stream's symbol and kind: anything else is a
    feed fault (dropped as "stream_mismatch" by the generic path). On the fast path msgspec checks
    the symbol as a Literal and hands back the registered string object itself, so the symbol needs
    no check of ours and its hash is already known to every later dict lookup.
    """
    global _decode_fast
    added = False
    for name in streams:
        if name in _STREAM_TYPES or len(_STREAM_TYPES) >= _MAX_FAST_STREAMS:
            continue
        prefix, _, kind = name.partition("@")
        symbol = prefix.upper()
        if kind not in ("trade", "bookTicker") or _SYMBOL(symbol) is None:
            continue
        is_book = kind == "bookTicker"
        data_base, envelope_base = (_BookData, _BookEnvelope) if is_book else (_TradeData, _TradeEnvelope)
        data = msgspec.defstruct(data_base.__name__, [("s", Literal[symbol])], bases=(data_base,))
        _STREAM_TYPES[name] = msgspec.defstruct(
            "_Envelope", [("data", data)], bases=(envelope_base,), tag=name,
            namespace={"symbol_kind": (symbol, kind)},
        )  # fmt: skip
        added = True
    if added:
        union = Union[(_Unmatched, *_STREAM_TYPES.values())]  # type: ignore[valid-type]  # noqa: UP007
        _decode_fast = msgspec.json.Decoder(union).decode


def parse_market_message(
    raw: str | bytes, stats: ParseStats
) -> Trade | BookTicker | ServerShutdown | SubscribeAck | None:
    """Parse one frame. Anything malformed is counted (and logged, rate-limited) and returns None.

    Never raises. The values are range-checked here (positive prices, bid < ask, 64-bit ids); the
    market-relative checks (price band, sequence jumps) belong to the per-symbol book and tape.
    """
    stats.messages += 1
    if len(raw) > MAX_MESSAGE_BYTES:
        stats.drop("too_large", raw)
        return None
    fast = _decode_fast
    if fast is None:
        return _parse_generic(raw, stats)
    try:
        data = fast(raw).data
    except msgspec.MsgspecError:
        return _parse_generic(raw, stats)
    # Inline checks (helper calls cost more than the checks). A frame that fails one is parsed
    # again by the generic path, which drops it with the precise reason.
    dec_get = _DEC_CACHE.get
    try:
        sym = data.s  # the stream's own symbol (a Literal): nothing to check
        if not data.e:  # a bookTicker has no event type; a trade's is "trade" (a slot read, no type lookup)
            b = data.b
            a = data.a
            bq = data.B
            aq = data.A
            bid = dec_get(b) or _dec(b)
            ask = dec_get(a) or _dec(a)
            if ZERO < bid < ask and _PLAIN_DECIMAL_PAIR(f"{bq} {aq}") is not None:
                stats.books += 1
                return BookTicker(sym, data.u, bid, bq, ask, aq)
        else:
            p = data.p
            q = data.q
            price = dec_get(p) or _dec(p)
            if price and _PLAIN_DECIMAL(q) is not None and q.strip("0."):
                stats.trades += 1
                return Trade(sym, data.t, price, q, data.T, data.m)
    except (TypeError, ValueError, InvalidOperation):
        pass
    return _parse_generic(raw, stats)


def _parse_generic(
    raw: str | bytes, stats: ParseStats
) -> Trade | BookTicker | ServerShutdown | SubscribeAck | None:
    """Any frame, dispatched on its fields; a refused frame is dropped with the precise reason."""
    try:
        msg = _decode_frame(raw)
    except msgspec.ValidationError as exc:
        # Wrong type or out-of-range value, or not an object at all.
        stats.drop("not_an_object" if str(exc).endswith("got `array`") or "- at" not in str(exc)
                   else "bad_field", raw)  # fmt: skip
        return None
    except msgspec.DecodeError:
        stats.drop("invalid_json", raw)
        return None
    if msg.data is not None:
        if not msg.stream:
            stats.drop("bad_envelope", raw)
            return None
        registered = _STREAM_TYPES.get(msg.stream)
        msg = msg.data
        kind = "trade" if msg.e == "trade" else "bookTicker"
        if registered is not None and (msg.s, kind) != registered.symbol_kind:
            stats.drop("stream_mismatch", raw)  # e.g. a trade, or another symbol, on btcusdt@bookTicker
            return None
    dec_get = _DEC_CACHE.get
    try:
        event = msg.e
        if event == "trade":
            t = msg.t
            ts = msg.T
            sym = msg.s
            q = msg.q
            m = msg.m
            if t < 0 or ts < 0 or m is None or not q:
                stats.drop("missing_field", raw)
                return None
            if sym not in _SYMBOLS_SEEN:
                _symbol(sym)
            p = msg.p
            price = dec_get(p) or _dec(p)
            if _PLAIN_DECIMAL(q) is None:
                raise ValueError("bad size")
            if not price or not q.strip("0."):
                stats.drop("non_positive", raw)
                return None
            trade = Trade(sym, t, price, q, ts, m)
            stats.trades += 1
            return trade
        if not event and msg.u >= 0:
            sym = msg.s
            b = msg.b
            a = msg.a
            bq = msg.B
            aq = msg.A
            if not (b and a and bq and aq):
                stats.drop("missing_field", raw)
                return None
            if sym not in _SYMBOLS_SEEN:
                _symbol(sym)
            bid = dec_get(b) or _dec(b)
            ask = dec_get(a) or _dec(a)
            if _PLAIN_DECIMAL(bq) is None or _PLAIN_DECIMAL(aq) is None:
                raise ValueError("bad size")
            if not bid or not ask:
                stats.drop("non_positive", raw)
                return None
            if bid >= ask:
                stats.drop("crossed_book", raw)
                return None
            book = BookTicker(sym, msg.u, bid, bq, ask, aq)
            stats.books += 1
            return book
        if event == "serverShutdown":
            return SERVER_SHUTDOWN
        if msg.id is not msgspec.UNSET and (
            msg.result is not msgspec.UNSET or msg.error is not msgspec.UNSET
        ):
            ack = SubscribeAck(msg.id, None if msg.error is msgspec.UNSET else msg.error)
            if ack.error is not None:
                log.error("subscription refused by the venue", extra={"error": _sample(ack.error)})
            return ack
        if not event and not msg.s and msg.u < 0:
            stats.drop("missing_field" if msg.b or msg.a else "unknown_event", raw)
            return None
        stats.drop("missing_field" if not event and msg.s else "unknown_event", raw)
        return None
    except (TypeError, ValueError, InvalidOperation):
        # InvalidOperation subclasses ArithmeticError, not ValueError: list it explicitly.
        stats.drop("bad_field", raw)
    return None


class Backoff:
    """Capped exponential backoff with jitter (spreads reconnect storms).

    The attempt count is only forgotten through `reset()`, which the clients call once a connection
    has stayed healthy for a while: a server that accepts, acknowledges and closes again must not
    reset it (that was a reconnect storm of ~6 connections per second).
    """

    def __init__(self, base_s: float = 0.1, cap_s: float = 30.0, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 60)))
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class ConnectLimiter:
    """At most `limit` connection attempts per `window_s` (Binance: 300 per 5 minutes per IP).

    `wait_s()` says how long to wait before the next attempt is allowed; `note()` records one.
    """

    def __init__(self, limit: int = 60, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._attempts: deque[float] = deque()

    def wait_s(self) -> float:
        now = self.clock()
        attempts = self._attempts
        while attempts and attempts[0] <= now - self.window_s:
            attempts.popleft()
        if len(attempts) < self.limit:
            return 0.0
        return attempts[0] + self.window_s - now

    def note(self) -> None:
        self._attempts.append(self.clock())


# Frames that wait (see StreamSession) pause reading from the socket beyond this many bytes; TCP then
# pushes back on the venue until they are handled.
HELD_PAUSE_BYTES = 1024 * 1024
# A message split into fragments is reassembled up to this size; beyond it only the first
# MAX_MESSAGE_BYTES + 1 bytes are kept, which the parser then drops as too large.
MAX_FRAME_BYTES = MAX_MESSAGE_BYTES * 4
# The socket's receive buffer. picows doubles its read buffer whenever a read fills it, so under a
# steady flood one read grew to megabytes (77k frames, +40 MB RSS in the bench); this caps a read
# at a few hundred KB. It is also the TCP window: 256 KB over 100 ms is 2.5 MB/s, far above a
# Binance market-data connection's peak.
SOCKET_RCVBUF_BYTES = 256 * 1024
CONNECT_TIMEOUT_S = 15.0  # TCP connect, TLS and the WebSocket handshake of one attempt


class StreamSession(WSListener):
    """One connection of a ReconnectingStream. picows parses the WebSocket framing in C and calls
    `on_ws_frame` for each frame as its bytes arrive; the payload goes straight to the stream's handler.
    (aiohttp's awaited `receive()` per frame cost the bot ~0.6 µs of a ~4.5 µs frame.)

    Frames wait, in order, while the session is *held*: before `start()` (the subscription and the
    REST catch-up run first), and after a frame whose handler returned YIELD_TO_LOOP (it placed an
    order) until the next turn of the event loop, so the order's send task runs before the rest of
    the same socket read. A close frame or a dropped connection ends the session once the frames
    before it are handled; `ended` then holds the reason.

    Pings are answered by picows (auto-pong); the venue's close frame is answered, then the
    connection dropped. A handler that raises ends the session (logged), like a broken connection.
    """

    # No instance __dict__: picows looks up `on_ws_frame` on every frame to find this override, and
    # an instance dict is one more place it must search.
    __slots__ = (
        "stream", "handler", "end_token", "ended", "transport", "proven", "_healthy_at", "_held",
        "_release_due", "_waiting", "_waiting_bytes", "_paused", "_closing", "_fragments",
    )  # fmt: skip

    def __init__(self, stream: ReconnectingStream) -> None:
        super().__init__()
        self.stream = stream
        self.handler = stream.on_message
        self.end_token = stream.end_token
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.transport: picows.WSTransport | None = None
        self.proven = False  # stayed up and streaming for the stream's healthy_after_s
        self._healthy_at = float("inf")
        self._held = True
        self._release_due = False
        self._waiting: deque[bytes] = deque()
        self._waiting_bytes = 0
        self._paused = False
        self._closing = ""  # why the connection is ending, once known; applied after the waiting frames
        self._fragments: bytearray | None = None

    # -- picows callbacks ------------------------------------------------------------------------
    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.fin and not self._held and self._fragments is None:
            payload = frame.get_payload_as_bytes()
            # The hot path: a whole JSON object, taken as data without reading `frame.msg_type`
            # (picows makes a Python enum of it on every read: ~0.14 µs of a ~4 µs frame). Only a data
            # frame can hold one here: a close frame starts with its 2-byte code (< 0x14), pings are
            # answered inside picows, and a stray pong or continuation carrying an object is no more
            # than the venue could send as text. Anything else takes the typed path below.
            if payload[:1] == b"{":
                # _handle(), inlined: a call per frame costs ~0.1 µs.
                stream = self.stream
                n = stream.frames = stream.frames + 1
                try:
                    result = self.handler(payload)
                except Exception as exc:  # noqa: BLE001 - see _handle
                    self._failed(exc)
                    return
                if result is YIELD_TO_LOOP:
                    self._hold()
                elif result is self.end_token:
                    self._end_by_token()
                if (n & 63) == 0 and not self.proven:
                    self._check_healthy()
                return
        kind = frame.msg_type
        if kind is _TEXT or kind is _BINARY:
            if not frame.fin or self._fragments is not None:
                self._fragments = bytearray()  # a new message also ends an unfinished one
                self._add_fragment(frame)
            else:
                self._deliver(frame.get_payload_as_bytes())
        elif kind is _CONTINUATION:
            if self._fragments is not None:
                self._add_fragment(frame)
        elif kind is _CLOSE:
            transport.send_close(WSCloseCode.OK)  # the closing handshake's answer, then drop
            transport.disconnect()
            self._close("closed_by_server")

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self._close("connection_lost")  # unless a close frame came first

    # -- delivery --------------------------------------------------------------------------------
    def start(self, healthy_at: float) -> None:
        """Begin handing frames to the stream (those that arrived during set-up first)."""
        self._healthy_at = healthy_at
        self._release()

    def _deliver(self, payload: bytes) -> None:
        if self._held:
            self._wait(payload)
        else:
            self._handle(payload)

    def _handle(self, payload: bytes) -> None:
        stream = self.stream
        n = stream.frames = stream.frames + 1  # the market-data watchdog turns frame counts into staleness
        try:
            result = self.handler(payload)
        except Exception as exc:  # noqa: BLE001 - a handler bug must end this session, not the stream
            self._failed(exc)
            return
        if result is YIELD_TO_LOOP:
            self._hold()
        elif result is self.end_token:
            self._end_by_token()
        if (n & 63) == 0 and not self.proven:
            self._check_healthy()

    def _failed(self, exc: Exception) -> None:
        log.error("%s frame handler failed", self.stream.label, exc_info=exc)
        self._end(f"handler_error:{type(exc).__name__}")

    def _end_by_token(self) -> None:
        self.stream._reconnect_now = True
        self._end(self.stream.end_reason)

    def _check_healthy(self) -> None:
        if time.monotonic() >= self._healthy_at:
            self.proven = True  # stayed up and streaming long enough: forget past failures
            self.stream.backoff.reset()

    def _hold(self) -> None:
        self._held = True
        if not self._release_due:
            self._release_due = True
            # Queued behind the order's send task, which create_task() has just scheduled.
            asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        self._release_due = False
        if self.ended.done():
            return
        self._held = False
        waiting = self._waiting
        while waiting and not self._held:
            payload = waiting.popleft()
            self._waiting_bytes -= len(payload)
            self._handle(payload)
        if self._held:
            return
        if self._closing:
            self._end(self._closing)
        elif self._paused and self.transport is not None:
            self._paused = False
            self.transport.underlying_transport.resume_reading()

    def _wait(self, payload: bytes) -> None:
        if self._closing or self.ended.done():
            return  # nothing after a close is data
        self._waiting.append(payload)
        self._waiting_bytes += len(payload)
        if self._waiting_bytes >= HELD_PAUSE_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.underlying_transport.pause_reading()

    def _add_fragment(self, frame: picows.WSFrame) -> None:
        parts = self._fragments
        assert parts is not None
        room = MAX_MESSAGE_BYTES + 1 - len(parts)
        if room > 0:
            parts += frame.get_payload_as_memoryview()[:room]
        if frame.fin:
            self._fragments = None
            self._deliver(bytes(parts))

    def _close(self, reason: str) -> None:
        if not self._closing:
            self._closing = reason
        if not self._held:
            self._end(self._closing)

    def _end(self, reason: str) -> None:
        self._held = True  # nothing more is handled
        if not self.ended.done():
            self.ended.set_result(reason)


_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE


def cap_receive_buffer(transport: picows.WSTransport) -> None:
    """Set the connection's socket receive buffer to SOCKET_RCVBUF_BYTES (see there)."""
    sock = transport.underlying_transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF_BYTES)


async def close_bounded(transport: picows.WSTransport, timeout_s: float) -> None:
    """Send our close frame and drop the connection, waiting at most `timeout_s` for the socket.

    The peer's answering close frame is not awaited (a peer that keeps streaming and never answers
    must not hold the loop); a peer that does not even read is cut off after the timeout.
    Safe to call more than once, from several tasks.
    """
    transport.send_close(WSCloseCode.OK)  # a no-op once a close was sent
    transport.disconnect()  # flushes what we queued (our close frame), then closes the socket
    try:
        await asyncio.wait_for(transport.wait_disconnected(), timeout_s)
    except TimeoutError:
        transport.disconnect(graceful=False)
    except Exception:  # noqa: BLE001 - picows re-raises here what ended the connection; it has ended
        pass


class ReconnectingStream:
    """One venue WebSocket kept up forever: the connect / stream / back off loop that the market-data
    and user-data clients share.

    Every attempt, prompt or not, passes the connection limiter. The backoff resets only once a
    connection has stayed open `healthy_after_s` (checked every 64 frames while streaming, and at
    the end): a server that accepts, acknowledges and closes again must not reset it. A session ends
    promptly (no backoff) only for a healthy connection whose end was announced or forced
    (`_reconnect_now`). Subclasses give the URL (`_target`) and what happens on open and close; a
    frame whose handler returns `end_token` ends the session; one that returns `YIELD_TO_LOOP` lets the
    tasks it started run before the next frame.

    `ssl_context`: the TLS trust for wss:// URLs (None: the system store); hostnames are checked.
    """

    label = "websocket"  # names the stream in log lines
    end_token: object = SERVER_SHUTDOWN
    end_reason = "server_shutdown"

    def __init__(
        self,
        on_message: Callable[[bytes], object],
        backoff: Backoff | None,
        limiter: ConnectLimiter | None,
        healthy_after_s: float,
        close_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.on_message = on_message
        self.backoff = backoff or Backoff()
        self.limiter = limiter or ConnectLimiter()
        self.healthy_after_s = healthy_after_s
        self.close_timeout_s = close_timeout_s
        self.ssl_context = ssl_context
        self.connected = False
        self.connect_attempts = 0
        self.reconnects = 0
        self.frames = 0
        self.last_healthy = False
        self._ws: picows.WSTransport | None = None
        self._stopping = False
        self._reconnect_now = False
        self._opened_monotonic = 0.0

    async def _target(self) -> str | None:
        """The URL of the next connection, or None to skip this round (after waiting itself)."""
        raise NotImplementedError

    async def _on_open(self, transport: picows.WSTransport) -> None:
        self.connected = True

    def _on_session_end(self) -> None:
        """Cleanup after every opened session, however it ended (also on cancellation)."""

    def _after_session(self, reason: str) -> None:
        """Runs after every attempt, with the reason it ended (not on cancellation)."""

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await close_bounded(self._ws, self.close_timeout_s)

    async def run(self) -> None:
        while not self._stopping:
            wait = self.limiter.wait_s()
            if wait > 0:
                log.warning("%s connection limit reached", self.label, extra={"retry_in_s": round(wait, 1)})
                await asyncio.sleep(wait)
                continue
            url = await self._target()
            if url is None:
                continue
            self.limiter.note()
            self.connect_attempts += 1
            reason = await self._session_once(url)
            self.connected = False
            self._after_session(reason)
            if self._stopping:
                break
            self.reconnects += 1
            if self._reconnect_now:
                self._reconnect_now = False
                if self.last_healthy:
                    continue  # rotation of a healthy connection: reconnect promptly (still limited)
            delay = self.backoff.next_delay()
            extra = {"reason": reason, "retry_in_s": round(delay, 3)}
            log.warning("%s disconnected", self.label, extra=extra)
            await asyncio.sleep(delay)

    async def _connect(self, url: str) -> tuple[picows.WSTransport, StreamSession]:
        # picows bounds the WebSocket handshake; the bound on TCP connect + TLS is ours (the OS alone
        # would retry a blackholed SYN for about two minutes).
        transport, session = await asyncio.wait_for(self._ws_connect(url), CONNECT_TIMEOUT_S)
        cap_receive_buffer(transport)
        return transport, session

    async def _ws_connect(self, url: str) -> tuple[picows.WSTransport, StreamSession]:
        return await picows.ws_connect(  # type: ignore[return-value]
            lambda: StreamSession(self),
            url,
            ssl_context=self.ssl_context,
            websocket_handshake_timeout=10,
            max_frame_size=MAX_FRAME_BYTES,
            enable_auto_pong=True,
            max_redirects=0,
            logger_name=f"{__name__}.picows",
            # The standard library's asyncio transports and TLS: aiofastnet's own measured no faster
            # here, and the stdlib's TLS is the one reviewed everywhere else in the bot.
            use_aiofastnet=False,
        )

    async def _session_once(self, url: str) -> str:
        try:
            transport, session = await self._connect(url)
        except (TimeoutError, WSError, OSError) as exc:
            return f"connect_failed:{type(exc).__name__}"
        self._ws = transport
        self._opened_monotonic = time.monotonic()
        healthy_at = self._opened_monotonic + self.healthy_after_s
        try:
            await self._on_open(transport)
            session.start(healthy_at)
            return await session.ended
        except (TimeoutError, WSError, OSError) as exc:
            return f"error:{type(exc).__name__}"
        finally:
            session._end("stopped")  # a cancelled session hands nothing more to the handler
            self.connected = False
            self._ws = None
            self.last_healthy = time.monotonic() >= healthy_at
            if not session.proven and self.last_healthy:
                self.backoff.reset()  # a quiet but long-lived connection was healthy too
            self._on_session_end()
            await close_bounded(transport, self.close_timeout_s)


class MarketDataClient(ReconnectingStream):
    """Connects to `<ws_url>/stream`, SUBSCRIBEs, feeds every frame to `on_message`.

    Reconnects forever (see ReconnectingStream); a watchdog closes silent (stalled) sockets;
    `serverShutdown` and connection age trigger a prompt reconnect. `on_connected` runs after each
    subscription (the engine uses it for REST catch-up and reconciliation).
    """

    label = "market data"

    def __init__(
        self,
        ws_url: str,
        symbols: Sequence[str],
        on_message: Callable[[bytes], object],
        on_connected: Callable[[], Awaitable[None]] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        stale_after_s: float = 5.0,
        max_age_s: float = 23 * 3600,
        backoff: Backoff | None = None,
        path: str = "/stream",
        healthy_after_s: float = 30.0,
        limiter: ConnectLimiter | None = None,
        close_timeout_s: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(on_message, backoff, limiter, healthy_after_s, close_timeout_s, ssl_context)
        self.ws_url = ws_url.rstrip("/")
        self.path = path
        self.streams = [f"{s.lower()}@{kind}" for s in symbols for kind in ("trade", "bookTicker")]
        register_streams(self.streams)
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.stale_after_s = stale_after_s
        self.max_age_s = max_age_s
        self.last_message_monotonic = 0.0
        self.stale_reconnects = 0
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

    async def run(self) -> None:
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await super().run()
        finally:
            watchdog.cancel()

    async def _target(self) -> str:
        return f"{self.ws_url}{self.path}"

    async def _on_open(self, transport: picows.WSTransport) -> None:
        transport.send(_TEXT, orjson.dumps({"method": "SUBSCRIBE", "params": self.streams, "id": 1}))
        self.connected = True
        self.last_message_monotonic = time.monotonic()
        if self.on_connected is not None:
            await self.on_connected()

    def _after_session(self, reason: str) -> None:
        if self.on_disconnected is not None:
            self.on_disconnected(reason)

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
                await close_bounded(ws, self.close_timeout_s)
            elif time.monotonic() - self._opened_monotonic > self.max_age_s:
                self._reconnect_now = True
                await close_bounded(ws, self.close_timeout_s)
