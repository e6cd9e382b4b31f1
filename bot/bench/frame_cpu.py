"""CPU time per frame of the bot's per-frame path in a tight loop (no sockets, no event loop turns).

Run: python bot/bench/frame_cpu.py [frames]   (default 100000; ~20 s)

The frames are the simulator's load-mode feed (the bench's throughput phase: trades and book tickers
alternating, prices wandering, sizes distinct). Five rounds each of: orjson.loads alone (the floor's
parse), the parser alone, and the engine's full per-frame path (`Engine.on_raw`: parse, book or tape,
strategy, an order every 20 book ticks). Prints min and median microseconds per frame, and whether the
hot-path modules are compiled extension modules or plain Python.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import orjson
from run import bench_engine

from rampart_bot.adapters import binance_ws
from rampart_bot.adapters.binance_ws import ParseStats, parse_market_message, register_streams
from rampart_bot.sim.server import build_load_frames

ROUNDS = 5


def payloads(count: int) -> list[bytes]:
    """The simulator's load feed, its WebSocket framing (server frames: never masked) taken off."""
    wire = build_load_frames("BTCUSDT", count, "mixed", True)
    out: list[bytes] = []
    at = 0
    while at < len(wire):
        n = wire[at + 1]
        at += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", wire, at)
            at += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", wire, at)
            at += 8
        out.append(wire[at : at + n])
        at += n
    return out


async def main(count: int) -> None:
    frames = payloads(count)
    register_streams(["btcusdt@trade", "btcusdt@bookTicker"])
    compiled = (binance_ws.__file__ or "").endswith(".so")
    kind = "compiled" if compiled else "interpreted"
    print(f"{count} frames; binance_ws is {kind} ({binance_ws.__file__})")
    tmp = Path(tempfile.mkdtemp(prefix="rampart-frame-cpu-"))
    times: dict[str, list[float]] = {"orjson.loads": [], "parse_market_message": [], "Engine.on_raw": []}
    loads = orjson.loads
    for i in range(ROUNDS):
        gc.collect()
        t0 = time.process_time()
        for frame in frames:
            loads(frame)
        times["orjson.loads"].append(time.process_time() - t0)
        stats = ParseStats()
        t0 = time.process_time()
        for frame in frames:
            parse_market_message(frame, stats)
        times["parse_market_message"].append(time.process_time() - t0)
        engine = bench_engine(f"sqlite:///{tmp / f'r{i}.sqlite3'}")
        on_raw = engine.on_raw
        t0 = time.process_time()
        for frame in frames:
            on_raw(frame)
        times["Engine.on_raw"].append(time.process_time() - t0)
        while engine._tasks:  # the orders' send tasks (the bench engine's venue acks at once)
            await asyncio.sleep(0.001)
    for name, seconds in times.items():
        per = [s / count * 1e6 for s in seconds]
        print(f"  {name:22s} min {min(per):6.3f} µs   median {statistics.median(per):6.3f} µs per frame")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
