"""Loopback helpers for the tests that run a real server on this machine."""

from __future__ import annotations

import socket


def free_port(address: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel picks it; the server binds it next)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]
