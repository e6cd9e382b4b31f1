"""systemd notify protocol against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from rampart_bot.service.sdnotify import Notifier


class Listener:
    """Receives notify datagrams in a thread, with their arrival time."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, message: str) -> list[float]:
        return [t for t, m in self.messages if m == message]

    def wait_for(self, message: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.times(message)
            if found:
                return found[0]
            time.sleep(0.01)
        raise AssertionError(f"{message!r} not received within {timeout} s; got {self.messages[:5]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify_path() -> Iterator[str]:
    # Short directory: AF_UNIX paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="rb-sd-", dir="/tmp") as d:
        yield os.path.join(d, "notify")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.asyncio
async def test_bot_sends_ready_watchdog_and_stopping(notify_path: str, tmp_path: Path) -> None:
    listener = Listener(notify_path)
    port = _free_port()
    cfg = tmp_path / "bot.toml"
    cfg.write_text(f'[http]\nport = {port}\n[database]\nurl = "sqlite:///{tmp_path}/paper.sqlite3"\n')
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"}  # ping every 0.1 s
    env.pop("WATCHDOG_PID", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rampart_bot.service.main",
        "--paper-with-sim",
        "--config",
        str(cfg),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        ready_at = await asyncio.to_thread(listener.wait_for, "READY=1", 60)
        assert listener.messages[0][1] == "READY=1", "nothing may precede READY"
        # READY means the listener serves: it answers right away.
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
        await asyncio.sleep(1.2)
        pings = [t for t in listener.times("WATCHDOG=1") if t >= ready_at]
        assert 6 <= len(pings) <= 16, len(pings)
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert 0.07 <= statistics.median(gaps) <= 0.15, gaps
        proc.send_signal(signal.SIGTERM)
        stopping_at = await asyncio.to_thread(listener.wait_for, "STOPPING=1", 30)
        assert stopping_at > ready_at
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        listener.close()
    assert [m for _, m in listener.messages if m not in ("WATCHDOG=1",)] == ["READY=1", "STOPPING=1"]


@pytest.mark.asyncio
async def test_hung_event_loop_stops_the_watchdog_pings(notify_path: str) -> None:
    listener = Listener(notify_path)
    notifier = Notifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_s == pytest.approx(0.05)
    try:
        notifier.ready()
        await asyncio.sleep(0.3)
        hung_from = time.monotonic()
        time.sleep(0.6)  # deliberately block the event loop, as a hang would
        hung_to = time.monotonic()
        await asyncio.sleep(0.3)
    finally:
        await notifier.close()
    await asyncio.sleep(0.1)
    listener.close()
    pings = listener.times("WATCHDOG=1")
    before = [t for t in pings if t < hung_from]
    during = [t for t in pings if hung_from + 0.05 < t < hung_to - 0.01]
    after = [t for t in pings if t >= hung_to]
    assert len(before) >= 4 and len(after) >= 3, (len(before), len(after))
    assert during == [], "a blocked event loop must not ping"
    assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) >= 0.5
    count = len(pings)
    await asyncio.sleep(0.2)
    assert len(listener.times("WATCHDOG=1")) == count, "close() stops the pings"


def test_abstract_socket_name() -> None:
    name = f"rampart-sd-test-{os.getpid()}-{secrets.token_hex(4)}"
    listener = Listener("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.notify("READY=1")
        listener.wait_for("READY=1", 5)
    finally:
        listener.close()


def test_environment_handling(notify_path: str) -> None:
    assert not Notifier({}).enabled and Notifier({}).notify("READY=1") is False
    assert Notifier({"NOTIFY_SOCKET": "relative/sock"}).enabled is False
    assert Notifier({"NOTIFY_SOCKET": notify_path}).watchdog_s is None  # no WATCHDOG_USEC: no pings
    other_pid = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert Notifier(other_pid).watchdog_s is None  # meant for another process
    mine = {**other_pid, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_s == pytest.approx(0.5)
    for bad in ("soon", "0", "-5"):
        assert Notifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": bad}).watchdog_s is None
    # Nobody listening: best effort, no exception.
    assert Notifier({"NOTIFY_SOCKET": notify_path}).notify("READY=1") is False
