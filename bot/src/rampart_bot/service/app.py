"""HTTP surface: health, readiness, metrics and the authenticated operator API."""

from __future__ import annotations

import hmac

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..adapters.secrets import Secret
from .engine import Engine

ENGINE = web.AppKey("engine", Engine)
TOKEN = web.AppKey("operator_token", Secret)


def build_app(engine: Engine, operator_token: Secret) -> web.Application:
    app = web.Application(middlewares=[_operator_auth])
    app[ENGINE] = engine
    app[TOKEN] = operator_token
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/api/v1/state", state),
            web.post("/api/v1/kill", kill),
            web.post("/api/v1/resume", resume),
            web.post("/api/v1/reducing", reducing),
        ]
    )
    return app


@web.middleware
async def _operator_auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.path.startswith("/api/"):
        expected = request.app[TOKEN].reveal().encode()
        header = request.headers.get("Authorization", "")
        given = header[7:].encode() if header.startswith("Bearer ") else b""
        if not given or not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    # Answering at all proves the event loop is alive.
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    checks = engine.readiness_checks()
    ready = all(checks.values())
    return web.json_response(
        {"ready": ready, "checks": checks, "state": engine.risk.state.name}, status=200 if ready else 503
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[ENGINE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def state(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENGINE].status())


async def kill(request: web.Request) -> web.Response:
    reason = "operator"
    if request.can_read_body:
        try:
            body = await request.json()
            reason = f"operator:{str(body.get('reason', ''))[:100]}"
        except ValueError:
            pass
    return web.json_response(await request.app[ENGINE].kill(reason))


async def resume(request: web.Request) -> web.Response:
    result = request.app[ENGINE].resume()
    return web.json_response(result, status=200 if result["ok"] else 409)


async def reducing(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENGINE].set_reducing())
