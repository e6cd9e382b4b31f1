"""systemd notify protocol (Type=notify, WatchdogSec=): READY, WATCHDOG pings, STOPPING.

A datagram per state change to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an abstract
name written with a leading '@'). The watchdog pings come from an asyncio task, so they stop when the
event loop hangs, and systemd restarts the service. Without $NOTIFY_SOCKET everything is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("rampart_bot.sdnotify")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_interval(env) if self.address else None
        self._sock: socket.socket | None = None
        self._warned = False
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one datagram; failures are logged once and never raised (notify is best effort)."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self.address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify failed", extra={"error": exc.strerror or str(exc)})
            return False

    def ready(self) -> None:
        self.notify("READY=1")
        if self.watchdog_s is not None and self._task is None:
            self._task = asyncio.create_task(self._watchdog(self.watchdog_s), name="sd-watchdog")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    async def _watchdog(self, interval_s: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | None:
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    if value:
        log.warning("NOTIFY_SOCKET ignored: neither an absolute path nor an @abstract name")
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC, in seconds, as systemd recommends; None when the watchdog is off or the
    variables are meant for another process (WATCHDOG_PID)."""
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        usec = 0
    if usec <= 0:
        log.warning("WATCHDOG_USEC ignored: not a positive integer", extra={"value": raw[:40]})
        return None
    return usec / 2 / 1_000_000
