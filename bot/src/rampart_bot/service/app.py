"""HTTP surface: health, readiness, metrics and the authenticated operator API."""

from __future__ import annotations

import hmac

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..adapters.secrets import Secret
from .engine import Engine

ENGINE = web.AppKey("engine", Engine)
TOKEN = web.AppKey("operator_token", Secret)


def build_app(
    engine: Engine, operator_token: Secret, *, public: bool = True, operator: bool = True
) -> web.Application:
    """public: /healthz, /readyz, /metrics; operator: the authenticated /api/v1/* routes. One app
    with both by default; with an [operator] listener each listener serves only its own half."""
    app = web.Application(middlewares=[_operator_auth])
    app[ENGINE] = engine
    app[TOKEN] = operator_token
    if public:
        app.add_routes(
            [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]
        )
    if operator:
        app.add_routes(
            [
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
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        # RFC 7235: the auth scheme is case-insensitive ("bearer" is as good as "Bearer").
        given = credentials.strip().encode() if scheme.lower() == "bearer" else b""
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


KILL_BODY_MAX = 4096  # a reason string; anything bigger is refused (after halting)


async def kill(request: web.Request) -> web.Response:
    """Fail-safe: an authenticated kill request halts first, whatever its body; only then is the
    body looked at, and a bad one gets a 4xx that still reports the halt."""
    engine = request.app[ENGINE]
    reason, error, status = await _kill_reason(request)
    result = await engine.kill(reason)
    if error:
        return web.json_response({**result, "error": error}, status=status)
    return web.json_response(result)


async def _kill_reason(request: web.Request) -> tuple[str, str, int]:
    if not request.can_read_body:
        return "operator", "", 200
    if request.content_length is not None and request.content_length > KILL_BODY_MAX:
        return "operator:body_too_large", f"body larger than {KILL_BODY_MAX} bytes ignored", 413
    try:
        raw = await request.content.read(KILL_BODY_MAX + 1)
    except Exception:  # noqa: BLE001 - a broken upload must not stop the halt
        return "operator:unreadable_body", "request body could not be read", 400
    if len(raw) > KILL_BODY_MAX:
        return "operator:body_too_large", f"body larger than {KILL_BODY_MAX} bytes ignored", 413
    if not raw.strip():
        return "operator", "", 200
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "operator:bad_body", 'body is not JSON; expected {"reason": "..."}', 400
    if not isinstance(body, dict):
        return "operator:bad_body", f'body is a JSON {type(body).__name__}; expected {{"reason": "..."}}', 400
    given = body.get("reason", "")
    if not isinstance(given, str):
        return "operator:bad_body", "reason must be a string", 400
    return f"operator:{given[:100]}", "", 200


async def resume(request: web.Request) -> web.Response:
    result = request.app[ENGINE].resume()
    return web.json_response(result, status=200 if result["ok"] else 409)


async def reducing(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENGINE].set_reducing())
