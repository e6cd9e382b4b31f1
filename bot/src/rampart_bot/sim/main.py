"""`rampart-exchange-sim` console script: the simulator as a standalone service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
import time
from pathlib import Path

from ..service.logs import setup_logging
from .server import SimServer

log = logging.getLogger("rampart_bot.sim")

DEMO_KEY = "rampart-demo-key"
DEMO_SECRET = "rampart-demo-secret-not-for-production"


def _read_secret(path: str | None, cred_name: str) -> str | None:
    if path:
        return Path(path).read_text().strip()
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / cred_name).is_file():
        return (Path(cred_dir) / cred_name).read_text().strip()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rampart-exchange-sim", description="Binance-Spot-format exchange simulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument(
        "--tick-interval", type=float, default=0.1, help="seconds between price steps (0: off)"
    )
    parser.add_argument("--api-key-file", help="file holding the accepted API key (default: demo key)")
    parser.add_argument("--api-secret-file", help="file holding the HMAC secret (default: demo secret)")
    parser.add_argument("--seed", type=int, default=7, help="price process seed")
    parser.add_argument(
        "--control-token-file",
        help="file holding the bearer token for POST /sim/control (default: the credential "
        "sim_control_token; without either, /sim/control is disabled)",
    )
    parser.add_argument(
        "--weight-limit", type=int, default=6000, help="REQUEST_WEIGHT per minute before 429 (Binance: 6000)"
    )
    parser.add_argument("--tls-cert", help="PEM server certificate (chain); with --tls-key serves https/wss")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    args = parser.parse_args(argv)
    try:
        tls = _tls_context(args.tls_cert, args.tls_key)
    except ValueError as exc:
        print(f"rampart-exchange-sim: {exc}", file=sys.stderr)
        return 2
    setup_logging("INFO")
    try:
        key = _read_secret(args.api_key_file, "sim_api_key")
        secret = _read_secret(args.api_secret_file, "sim_api_secret")
        control_token = _read_secret(args.control_token_file, "sim_control_token")
    except OSError as exc:
        print(f"rampart-exchange-sim: cannot read key file: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 3
    if key is None or secret is None:
        log.warning("using the built-in demo API key and secret")
        key, secret = DEMO_KEY, DEMO_SECRET
    if args.weight_limit < 1:
        print(
            f"rampart-exchange-sim: --weight-limit must be at least 1, got {args.weight_limit}",
            file=sys.stderr,
        )
        return 2
    if control_token == "":
        print("rampart-exchange-sim: the control token file is empty", file=sys.stderr)
        return 3
    if control_token is None:
        log.warning("no control token: POST /sim/control is disabled")
    try:
        asyncio.run(_serve(args, key, secret, control_token, tls))
    except OSError as exc:
        print(f"rampart-exchange-sim: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 4
    return 0


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """Server TLS context from --tls-cert/--tls-key (both or neither); ValueError with one line."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key must be given together")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"{flag} {path}: cannot read: {exc.strerror}") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc).splitlines()[0]
        msg = f"--tls-cert {cert} / --tls-key {key}: not a matching PEM cert and key: {reason}"
        raise ValueError(msg) from None
    return ctx


async def _serve(
    args: argparse.Namespace, key: str, secret: str, control_token: str | None, tls: ssl.SSLContext | None
) -> None:
    from .server import default_exchange

    sim = SimServer(
        key,
        secret,
        # ids start at microseconds since the epoch: above an earlier run's, so a restart reuses none
        exchange=default_exchange(args.seed, id_base=time.time_ns() // 1_000),
        tick_interval_s=args.tick_interval,
        control_token=control_token,
        weight_limit=args.weight_limit,
    )
    port = await sim.start(args.host, args.port, ssl_context=tls)
    log.info("exchange simulator listening", extra={"host": args.host, "port": port, "tls": tls is not None})
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


if __name__ == "__main__":
    raise SystemExit(main())
