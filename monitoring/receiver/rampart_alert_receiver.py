#!/usr/bin/env python3
"""Offline Alertmanager webhook receiver: appends every notification it gets to a JSON-lines file.

The lab runs it on the controller so alert delivery can be tested without mail or chat; production uses a
real receiver (docs/monitoring.md). Standard library only, so it runs wherever python3 does.

    rampart_alert_receiver.py --listen 10.77.10.1:9095 --out /var/log/rampart/alerts.jsonl

Each line: {"received_at": <unix seconds>, "remote": "<ip>", "payload": <Alertmanager's webhook JSON>}.
GET /healthz answers 200; POST to any other path records the body.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BODY = 1 << 20  # Alertmanager batches are small; refuse anything larger than 1 MiB.


class Recorder:
    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self.lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()


def make_handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "rampart-alert-receiver"

        def _answer(self, code: int, text: str) -> None:
            body = (text + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/healthz":
                self._answer(200, "ok")
            else:
                self._answer(404, "not found")

        def do_POST(self) -> None:  # noqa: N802
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._answer(411, "Content-Length required")
                return
            if length < 0 or length > MAX_BODY:
                self._answer(413, f"body over {MAX_BODY} bytes")
                return
            raw = self.rfile.read(length)
            try:
                payload = json.loads(raw)
            except ValueError:
                self._answer(400, "body is not JSON")
                return
            if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
                self._answer(400, "not an Alertmanager webhook payload (no alerts list)")
                return
            recorder.write({"received_at": time.time(), "remote": self.client_address[0], "payload": payload})
            self._answer(200, "recorded")

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep stderr quiet
            pass

    return Handler


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    try:
        if not sep:
            raise ValueError
        ipaddress.ip_address(host)
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"--listen: expected IP:PORT, got {value!r}") from None
    return host, number


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Record Alertmanager webhook notifications as JSON lines.")
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 9095), help="IP:PORT (default 127.0.0.1:9095)")
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file to append to")
    args = p.parse_args(argv)
    if not args.out.parent.is_dir():
        print(f"rampart-alert-receiver: --out: directory {args.out.parent} does not exist", file=sys.stderr)
        return 2
    try:
        server = ThreadingHTTPServer(args.listen, make_handler(Recorder(args.out)))
    except OSError as exc:
        print(f"rampart-alert-receiver: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc.strerror}",
              file=sys.stderr)
        return 2
    print(f"rampart-alert-receiver: listening on {args.listen[0]}:{server.server_address[1]}, recording to "
          f"{args.out}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
