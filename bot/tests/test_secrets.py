from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest
from aiohttp import web

from rampart_bot.adapters.secrets import (
    REQUIRED_SECRETS,
    CredentialsDirProvider,
    DotEnvProvider,
    Secret,
    SecretsError,
    VaultProvider,
)
from rampart_bot.service.logs import JsonFormatter


def test_secret_is_redacted_everywhere() -> None:
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert "hunter2" not in repr({"k": s})
    with pytest.raises(TypeError):
        pickle.dumps(s)
    record = logging.makeLogRecord({"msg": "loaded %s", "args": (s,), "token": s})
    line = JsonFormatter().format(record)
    assert "hunter2" not in line and "***" in line
    assert s.reveal() == "hunter2"


@pytest.mark.asyncio
async def test_dotenv_does_not_touch_environment(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("API_KEY=key\nAPI_SECRET=sec\nOPERATOR_TOKEN=tok\n")
    before = dict(os.environ)
    secrets = await DotEnvProvider(env).load(REQUIRED_SECRETS)
    assert secrets["api_secret"].reveal() == "sec"
    assert dict(os.environ) == before


@pytest.mark.asyncio
async def test_credentials_directory(tmp_path: Path) -> None:
    for name in REQUIRED_SECRETS:
        (tmp_path / name).write_text(f"{name}-value\n")
    secrets = await CredentialsDirProvider(tmp_path).load(REQUIRED_SECRETS)
    assert secrets["operator_token"].reveal() == "operator_token-value"
    (tmp_path / "api_secret").unlink()
    with pytest.raises(SecretsError, match="missing secret\\(s\\) api_secret"):
        await CredentialsDirProvider(tmp_path).load(REQUIRED_SECRETS)


@pytest.mark.asyncio
async def test_vault_approle_kv2_and_token_renewal(tmp_path: Path, aiohttp_unused_port=None) -> None:  # noqa: ANN001
    calls: list[str] = []

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        calls.append("login")
        if body != {"role_id": "rid", "secret_id": "sid"}:
            return web.json_response({"errors": ["invalid role or secret ID"]}, status=400)
        return web.json_response({"auth": {"client_token": "tok-1", "lease_duration": 3600}})

    async def kv(request: web.Request) -> web.Response:
        calls.append("kv")
        if request.headers.get("X-Vault-Token") != "tok-1":
            return web.json_response({"errors": ["permission denied"]}, status=403)
        data = {"api_key": "k", "api_secret": "s", "operator_token": "t"}
        return web.json_response({"data": {"data": data, "metadata": {"version": 3}}})

    async def renew(request: web.Request) -> web.Response:
        calls.append("renew")
        return web.json_response({"auth": {"client_token": "tok-1", "lease_duration": 3600}})

    app = web.Application()
    app.add_routes(
        [
            web.post("/v1/auth/approle/login", login),
            web.get("/v1/secret/data/rampart/bot", kv),
            web.post("/v1/auth/token/renew-self", renew),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    (tmp_path / "role_id").write_text("rid")
    (tmp_path / "secret_id").write_text("sid")
    provider = VaultProvider(f"http://127.0.0.1:{port}", tmp_path / "role_id", tmp_path / "secret_id")
    try:
        secrets = await provider.load(REQUIRED_SECRETS)
        assert secrets["api_secret"].reveal() == "s"
        await provider.renew_once()
        assert provider.renewals == 1
        assert calls == ["login", "kv", "renew"]
        (tmp_path / "secret_id").write_text("wrong")
        with pytest.raises(SecretsError, match="HTTP 400"):
            await provider.login()
    finally:
        await provider.close()
        await runner.cleanup()


@pytest.mark.asyncio
async def test_vault_unreachable_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "role_id").write_text("rid")
    (tmp_path / "secret_id").write_text("sid")
    provider = VaultProvider("http://127.0.0.1:1", tmp_path / "role_id", tmp_path / "secret_id")
    try:
        with pytest.raises(SecretsError, match="Vault unreachable"):
            await provider.load(REQUIRED_SECRETS)
    finally:
        await provider.close()
