"""[operator] listener: the operator API and the metrics/health endpoints on separate ports."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from rampart_bot.service.config import ConfigError, parse_config
from rampart_bot.service.runtime import BotRuntime
from rampart_bot.sim.server import SimServer

from .conftest import OPERATOR_TOKEN, SECRETS, bot_config

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
PUBLIC = ("/healthz", "/readyz", "/metrics")


@pytest.mark.asyncio
async def test_operator_api_only_on_operator_port_metrics_only_on_http_port(
    sim: SimServer, bot_db_url: str
) -> None:
    cfg = bot_config(sim, bot_db_url)
    cfg.operator_host, cfg.operator_port = "127.0.0.1", 1  # port overridden below (0 = any free port)
    runtime = await BotRuntime.start(cfg, SECRETS, http_port=0, operator_port=0)
    try:
        await runtime.engine.wait_for(runtime.engine.ready, timeout=10)
        assert runtime.operator_port and runtime.operator_port != runtime.port
        main = f"http://127.0.0.1:{runtime.port}"
        op = f"http://127.0.0.1:{runtime.operator_port}"
        async with aiohttp.ClientSession() as http:
            for path in PUBLIC:
                async with http.get(main + path) as resp:
                    assert resp.status == 200, path
                async with http.get(op + path) as resp:
                    assert resp.status == 404, path
            # The API, even with a valid token, is not on the metrics port.
            async with http.get(f"{main}/api/v1/state", headers=AUTH) as resp:
                assert resp.status == 404
            async with http.post(f"{main}/api/v1/kill", headers=AUTH) as resp:
                assert resp.status == 404
            assert runtime.engine.risk.state.name == "ACTIVE"
            async with http.get(f"{op}/api/v1/state", headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
            async with http.get(f"{op}/api/v1/state", headers=AUTH) as resp:
                assert resp.status == 200 and (await resp.json())["state"] == "ACTIVE"
            async with http.post(f"{op}/api/v1/kill", headers=AUTH, json={"reason": "drill"}) as resp:
                assert resp.status == 200
            assert runtime.engine.risk.state.name == "HALTED"
            async with http.post(f"{op}/api/v1/resume", headers=AUTH) as resp:
                assert resp.status == 200
            assert runtime.engine.risk.state.name == "ACTIVE"
    finally:
        await runtime.stop()
    with socket.socket() as s:  # the operator listener is closed with the bot
        assert s.connect_ex(("127.0.0.1", runtime.operator_port)) != 0


@pytest.mark.asyncio
async def test_without_operator_table_one_listener_serves_both(bot: BotRuntime) -> None:
    assert bot.operator_port is None and bot.operator_runner is None
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{bot.port}/metrics") as resp:
            assert resp.status == 200
        async with http.get(f"http://127.0.0.1:{bot.port}/api/v1/state", headers=AUTH) as resp:
            assert resp.status == 200


def test_operator_config_keys() -> None:
    cfg = parse_config({"operator": {"host": "10.0.9.5", "port": 9109}}, "bot.toml")
    assert (cfg.operator_host, cfg.operator_port) == ("10.0.9.5", 9109)
    assert parse_config({}, "bot.toml").operator_port is None
    for data, fragment in [
        ({"operator": {"host": "127.0.0.1"}}, "operator.port: missing"),
        ({"operator": {"port": "9109"}}, "operator.port: expected int"),
        ({"operator": {"port": 70000}}, "operator.port: must be in 1..65535"),
        ({"operator": {"port": 9109, "tls": True}}, "operator.tls: unknown key"),
        ({"operator": {"port": 9108}}, "operator: 127.0.0.1:9108 is the http listener itself"),
        ({"operator": 9109}, "operator: expected a table"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(data, "bot.toml")
        assert str(err.value).startswith("bot.toml: ") and fragment in str(err.value), str(err.value)


@pytest.mark.asyncio
async def test_operator_port_in_use_is_named(sim: SimServer, bot_db_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = bot_config(sim, bot_db_url)
        cfg.operator_port = busy.getsockname()[1]
        with pytest.raises(OSError) as err:
            await BotRuntime.start(cfg, SECRETS, http_port=0)
        assert "operator listener" in str(err.value.strerror)
