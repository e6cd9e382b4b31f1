"""The typed fast path for subscribed combined streams decides exactly like the generic parser:
same result, same values, same drop reason, for well-formed and hostile frames alike."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from rampart_bot.adapters import binance_ws
from rampart_bot.adapters.binance_ws import ParseStats, parse_market_message, register_streams
from rampart_bot.core.model import BookTicker, Trade

TRADE = {"e": "trade", "E": 1, "s": "BNBUSDT", "t": 12345, "p": "25.35", "q": "0.5", "T": 7, "m": True}
BOOK = {"u": 400900217, "s": "BNBUSDT", "b": "25.35", "B": "31.2", "a": "25.36", "A": "40.66"}
STREAMS = {"trade": "bnbusdt@trade", "book": "bnbusdt@bookTicker"}

field_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["", "0", "0.000", "1e5", "NaN", "-1", "25.3500", "9999", "1.", ".5", "BNB", "trade"])
)


def _outcome(raw: bytes, fast: bool) -> tuple[object, ...]:
    saved = binance_ws._decode_fast
    if not fast:
        binance_ws._decode_fast = None  # the generic parser alone
    try:
        stats = ParseStats(shared_log_limit=False)
        result = parse_market_message(raw, stats)
    finally:
        binance_ws._decode_fast = saved
    if isinstance(result, Trade):
        fields: tuple[object, ...] = (result.symbol, result.trade_id, result.price, result.qty,
                                      result.trade_time_ms, result.buyer_is_maker)  # fmt: skip
    elif isinstance(result, BookTicker):
        fields = (result.symbol, result.update_id, result.bid, result.bid_qty, result.ask, result.ask_qty)
    else:
        fields = (result,)
    return type(result).__name__, fields, stats.dropped, stats.messages


def test_subscribed_streams_take_the_fast_path() -> None:
    register_streams(list(STREAMS.values()))
    decode = binance_ws._decode_fast
    assert decode is not None
    envelope = orjson.dumps({"stream": STREAMS["book"], "data": BOOK})
    assert type(decode(envelope).data).__name__ == "_BookData"  # its subclass for this stream
    assert _outcome(envelope, fast=True) == _outcome(envelope, fast=False)


@settings(max_examples=600)
@given(
    kind=st.sampled_from(["trade", "book"]),
    stream=st.sampled_from(["own", "other", "missing"]),
    key=st.sampled_from(["e", "s", "t", "p", "q", "T", "m", "u", "b", "B", "a", "A", "extra"]),
    value=field_values,
    drop=st.booleans(),
)
def test_fast_and_generic_paths_agree(kind: str, stream: str, key: str, value: object, drop: bool) -> None:
    register_streams(list(STREAMS.values()))
    data = dict(TRADE if kind == "trade" else BOOK)
    if drop:
        data.pop(key, None)
    else:
        data[key] = value
    frame: dict[str, object] = {"data": data}
    if stream == "own":
        frame["stream"] = STREAMS[kind]
    elif stream == "other":
        frame["stream"] = STREAMS["book" if kind == "trade" else "trade"]
    raw = orjson.dumps(frame)
    assert _outcome(raw, fast=True) == _outcome(raw, fast=False)


size_texts = st.text(alphabet="0123456789. \n-e", max_size=25) | st.sampled_from(
    ["1", "0.5", "1.", ".5", "1 2", "1.2 3", "9" * 20, "9" * 21, "1." + "9" * 20, "1." + "9" * 21]
)


@settings(max_examples=2000, deadline=None)
@given(size_texts, size_texts)
def test_size_pair_check_equals_two_single_checks(a: str, b: str) -> None:
    # The fast path checks a bookTicker's two sizes with one regex over "a b".
    single = binance_ws._PLAIN_DECIMAL(a) is not None and binance_ws._PLAIN_DECIMAL(b) is not None
    assert (binance_ws._PLAIN_DECIMAL_PAIR(f"{a} {b}") is not None) == single


def _plain_decimal_reference(text: str) -> bool:
    """The venue's decimal format, said without a regex: 1-20 ASCII digits, optionally a dot and 1-20 more."""
    whole, dot, fraction = text.partition(".")

    def digits(part: str) -> bool:
        return 1 <= len(part) <= 20 and all("0" <= c <= "9" for c in part)

    return digits(whole) and (not dot or digits(fraction))


@settings(max_examples=3000, deadline=None)
@given(size_texts | st.text(alphabet="0123456789.", max_size=45))
def test_plain_decimal_check_is_exactly_the_venue_format(text: str) -> None:
    # The regexes use possessive quantifiers (no backtracking): they must accept the same language.
    assert (binance_ws._PLAIN_DECIMAL(text) is not None) == _plain_decimal_reference(text)


def test_a_frame_must_carry_its_streams_symbol_and_kind() -> None:
    # Another symbol, or the other kind, inside a subscribed stream's envelope is a feed fault: it
    # must never reach that symbol's book or tape (both paths drop it with the same reason).
    register_streams(list(STREAMS.values()))
    hostile = [
        {"stream": STREAMS["book"], "data": {**BOOK, "s": "ETHUSDT"}},
        {"stream": STREAMS["trade"], "data": {**TRADE, "s": "ETHUSDT"}},
        {"stream": STREAMS["book"], "data": TRADE},
        {"stream": STREAMS["trade"], "data": BOOK},
    ]
    for frame in hostile:
        raw = orjson.dumps(frame)
        for fast in (True, False):
            assert _outcome(raw, fast) == ("NoneType", (None,), {"stream_mismatch": 1}, 1), frame
    # An unsubscribed stream's frames are judged by their fields alone (the engine then decides
    # whether the symbol is one it trades).
    other = orjson.dumps({"stream": "ethusdt@bookTicker", "data": {**BOOK, "s": "ETHUSDT"}})
    assert _outcome(other, fast=True)[0] == "BookTicker"
