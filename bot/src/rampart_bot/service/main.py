"""`rampart-bot` console script.

Start-up time matters (systemd restarts, `--check-config` in deploy checks): modules are imported
where they are first needed, so checking a config never loads the engine, the database layer or
the HTTP server, and nothing runs at import time.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from .config import BotConfig, ConfigError, load_config, parse_config, provider_for
from .logs import setup_logging

if TYPE_CHECKING:
    from ..adapters.secrets import SecretsProvider

log = logging.getLogger("rampart_bot")

# Demo credentials shared by `--paper-with-sim` and the simulator's defaults. They only ever
# authenticate against the local simulator.
DEMO_SECRETS = {
    "api_key": "rampart-demo-key",
    "api_secret": "rampart-demo-secret-not-for-production",
    "operator_token": "rampart-demo-operator-token",
}


def _fail(message: str, code: int) -> int:
    print(f"rampart-bot: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rampart-bot", description="rampart trading bot")
    parser.add_argument("--config", "-c", help="TOML config file (default: embedded paper-mode defaults)")
    parser.add_argument(
        "--paper-with-sim",
        action="store_true",
        help="run in paper mode against an in-process exchange simulator with demo secrets",
    )
    parser.add_argument("--check-config", action="store_true", help="validate config and secrets, then exit")
    args = parser.parse_args(argv)

    try:
        cfg = load_config(args.config) if args.config else parse_config({}, "<defaults>")
    except ConfigError as exc:
        return _fail(f"config error: {exc}", 2)
    setup_logging(cfg.log_level)
    import asyncio

    from ..adapters.secrets import SecretsError, StaticProvider

    if args.paper_with_sim:
        if cfg.mode != "paper":
            return _fail("config error: --paper-with-sim requires mode = 'paper'", 2)
        provider: SecretsProvider = StaticProvider(DEMO_SECRETS)
    else:
        provider = provider_for(cfg)
    try:
        asyncio.run(_serve(cfg, provider, args.paper_with_sim, args.check_config))
    except SecretsError as exc:
        return _fail(f"secrets error: {exc}", 3)
    except _StartupError as exc:
        return _fail(str(exc), 4)
    except KeyboardInterrupt:
        pass
    return 0


class _StartupError(Exception):
    pass


async def _serve(cfg: BotConfig, provider: SecretsProvider, with_sim: bool, check_only: bool) -> None:
    from ..adapters.secrets import REQUIRED_SECRETS, SecretsError

    # Secrets load inside the serving loop so Vault token renewal keeps running with the service.
    try:
        secrets = await provider.load(REQUIRED_SECRETS)
    except SecretsError:
        await provider.close()
        raise
    if check_only:
        await provider.close()
        print(f"rampart-bot: config OK ({cfg.mode} mode), secrets OK from {provider.description}")
        return
    import asyncio
    import signal

    from .runtime import BotRuntime
    from .sdnotify import Notifier

    sim = None
    if with_sim:
        import tempfile
        from pathlib import Path

        from ..sim.server import SimServer

        sim = SimServer(DEMO_SECRETS["api_key"], DEMO_SECRETS["api_secret"], tick_interval_s=0.05)
        port = await sim.start("127.0.0.1", 0)
        cfg.venue.rest_url = f"http://127.0.0.1:{port}"
        cfg.venue.ws_url = f"ws://127.0.0.1:{port}"
        if cfg.database_url == BotConfig().database_url:
            cfg.database_url = f"sqlite:///{Path(tempfile.gettempdir()) / 'rampart-bot-paper.sqlite3'}"
        log.info("paper mode against in-process simulator", extra={"sim_port": port, "db": cfg.database_url})
    try:
        runtime = await BotRuntime.start(cfg, secrets, provider=provider)
    except OSError as exc:
        raise _StartupError(f"cannot start: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. database unreachable: one line, no traceback
        raise _StartupError(f"cannot start: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The HTTP listener(s) are bound and serving now: tell systemd (Type=notify) and start the
    # watchdog pings. READY means "serving", not "ready to trade" (that is /readyz).
    notifier = Notifier()
    notifier.ready()
    if notifier.enabled:
        log.info("sd_notify READY sent", extra={"watchdog_interval_s": notifier.watchdog_s})
    await stop.wait()
    log.info("shutting down")
    notifier.stopping()
    try:
        await runtime.stop()
        if sim is not None:
            await sim.stop()
    finally:
        await notifier.close()


if __name__ == "__main__":
    raise SystemExit(main())
