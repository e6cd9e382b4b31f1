"""Assembles config + secrets + adapters + engine + HTTP server; used by the CLI and by tests."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from ..adapters.binance_rest import BinanceRest
from ..adapters.persistence import Store
from ..adapters.secrets import (
    REQUIRED_SECRETS,
    Secret,
    SecretsProvider,
    VaultProvider,
)
from .app import build_app
from .config import BotConfig, venue_ssl_context
from .engine import Engine

log = logging.getLogger("rampart_bot")


async def _bind(site: web.TCPSite, what: str) -> None:
    try:
        await site.start()
    except OSError as exc:
        # Name the listener: with two of them "address already in use" alone is ambiguous.
        raise OSError(exc.errno, f"{what} listener {site.name}: {exc.strerror or exc}") from None


@dataclass
class BotRuntime:
    cfg: BotConfig
    secrets: dict[str, Secret]
    session: aiohttp.ClientSession
    store: Store
    engine: Engine
    runner: web.AppRunner
    port: int
    provider: SecretsProvider | None = None
    operator_runner: web.AppRunner | None = None
    operator_port: int | None = None  # bound port of the separate operator listener, if configured

    @classmethod
    async def start(
        cls,
        cfg: BotConfig,
        secrets: dict[str, Secret],
        http_port: int | None = None,
        provider: SecretsProvider | None = None,
        operator_port: int | None = None,
    ) -> BotRuntime:
        missing = [n for n in REQUIRED_SECRETS if n not in secrets]
        if missing:
            raise ValueError(f"missing secrets: {missing}")
        store = Store(cfg.database_url)
        store.migrate()
        # One connection per host is plenty; keep-alive is what makes order round trips fast.
        # One TLS trust for all venue traffic: the session's REST calls and the engine's WebSockets.
        tls = venue_ssl_context(cfg.venue)
        connector = aiohttp.TCPConnector(limit=32, ttl_dns_cache=300, ssl=tls)
        session = aiohttp.ClientSession(connector=connector)
        rest = BinanceRest(
            session,
            cfg.venue.rest_url,
            secrets["api_key"],
            secrets["api_secret"],
            recv_window_ms=cfg.venue.recv_window_ms,
            timeout_s=cfg.venue.timeout_s,
        )
        rest.resp_type = cfg.venue.order_resp_type
        engine = Engine(cfg, store, rest)
        engine.secrets_loaded = True
        if isinstance(provider, VaultProvider):
            provider.on_success = engine.breakers["vault"].success
            provider.on_failure = engine.breakers["vault"].failure
        token = secrets["operator_token"]
        separate = cfg.operator_port is not None
        # With an [operator] listener the API leaves the metrics port entirely (and vice versa), so each
        # port can be firewalled for its own audience (monitoring vs. management plane).
        runner = web.AppRunner(
            build_app(engine, token, operator=not separate), access_log=None, handle_signals=False
        )
        await runner.setup()
        site = web.TCPSite(runner, cfg.http_host, cfg.http_port if http_port is None else http_port)
        op_runner: web.AppRunner | None = None
        op_port: int | None = None
        try:
            await _bind(site, "http")
            port = runner.addresses[0][1]
            if separate:
                op_runner = web.AppRunner(
                    build_app(engine, token, public=False), access_log=None, handle_signals=False
                )
                await op_runner.setup()
                wanted = cfg.operator_port if operator_port is None else operator_port
                await _bind(web.TCPSite(op_runner, cfg.operator_host, wanted), "operator")
                op_port = op_runner.addresses[0][1]
        except BaseException:
            await runner.cleanup()
            if op_runner is not None:
                await op_runner.cleanup()
            await session.close()
            store.close()
            raise
        await engine.start(tls)
        log.info(
            "rampart-bot started",
            extra={"http_port": port, "operator_port": op_port, "mode": cfg.mode, "db": store.dialect},
        )
        return cls(cfg, secrets, session, store, engine, runner, port, provider, op_runner, op_port)

    async def stop(self) -> None:
        await self.engine.shutdown()
        await self.runner.cleanup()
        if self.operator_runner is not None:
            await self.operator_runner.cleanup()
        await self.session.close()
        if self.provider is not None:
            await self.provider.close()
        self.store.close()
        log.info("rampart-bot stopped")
