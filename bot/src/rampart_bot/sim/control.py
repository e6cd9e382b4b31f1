"""`POST /sim/control`: the simulator's out-of-process fault switch, authenticated.

Only for the simulator, which is never deployed where a real venue is reachable; still, anyone who
can reach it could halt or skew the bot's venue, so it needs a bearer token.

Token: `rampart-exchange-sim --control-token-file PATH`, or the systemd credential
`sim_control_token` (`$CREDENTIALS_DIRECTORY/sim_control_token`), or `SimServer(control_token=...)`
in tests. Without a token the endpoint is disabled (403). The token is compared in constant time
(digests of equal length) and never logged.

Request::

    POST /sim/control
    Authorization: Bearer <token>          (scheme case-insensitive, RFC 7235)
    Content-Type: application/json

    {"faults": {"rate_limit_next": 2, "hold_fills": true},   # any Faults field, typed as declared
     "action": "step", "symbol": "BTCUSDT"}                   # optional

Actions: `drop` (abort every WebSocket), `rotate` (serverShutdown, then close), `release_fills`
(show fills held by `hold_fills`), `step` (advance the price one step, optional `symbol`),
`expire_listen_keys` (listenKeyExpired to user-data subscribers), and the account's API keys (an
account holds several, as on Binance; orders and listen keys are the account's, so they stay usable
with any active key, and live user-data streams are not ended by a retirement):

* `add_api_key` with `"api_key"` and `"api_secret"` (1 to 512 visible ASCII characters each):
  accept another key pair. Result `{"added": true, "active_keys": n}`; the same pair again is
  `"added": false` (a re-run changes nothing); an active key with another secret is a 400.
* `retire_api_key` with `"api_key"`: stop accepting it; requests with it then get the venue's 401
  `{"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}`. Result
  `{"active_keys": n}`. An unknown (or already retired) key is a 400, and so is the last active key.

Keys and secrets are compared as digests in constant time, never logged and never in a reply.

Replies (JSON): 200 `{"ok": true, "result": ..., "faults": {...}}`; 400 `{"error": "..."}` for a bad
body (nothing is changed: faults are checked all together before any is set); 401 with
`WWW-Authenticate: Bearer` for a missing or wrong token; 403 when no token is configured.
`GET /sim/state` (read-only counters, among them `api_keys`: how many are active) needs no token.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from .server import SimServer

ACTIONS = ("drop", "rotate", "release_fills", "step", "expire_listen_keys", "add_api_key", "retire_api_key")
KEY_FIELDS = {"add_api_key": ("api_key", "api_secret"), "retire_api_key": ("api_key",)}
MAX_KEY_LEN = 512


def _visible_ascii(value: Any) -> bool:
    # What an HTTP header (X-MBX-APIKEY) carries unchanged: no spaces, no control characters.
    return isinstance(value, str) and 0 < len(value) <= MAX_KEY_LEN and all("!" <= c <= "~" for c in value)


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _reply(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


class ControlEndpoint:
    def __init__(self, sim: SimServer, token: str | None) -> None:
        self._sim = sim
        self._token_digest = digest(token) if token else None

    def authorized(self, request: web.Request) -> web.Response | None:
        if self._token_digest is None:
            return _reply(403, {"error": "control endpoint disabled: the simulator has no control token"})
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        # Compare digests, so the comparison takes the same time whatever the length of the guess.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            digest(credentials.strip()), self._token_digest
        ):
            return _reply(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
        return None

    async def handle(self, request: web.Request) -> web.Response:
        refused = self.authorized(request)
        if refused is not None:
            return refused
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _reply(400, {"error": "body is not JSON"})
        if not isinstance(body, dict):
            return _reply(400, {"error": "body must be a JSON object"})
        unknown = set(body) - {"faults", "action", "symbol", "api_key", "api_secret"}
        if unknown:
            return _reply(400, {"error": f"unknown field(s): {', '.join(sorted(unknown))}"})
        faults = body.get("faults", {})
        action = body.get("action")
        symbol = body.get("symbol")
        sim = self._sim
        if not isinstance(faults, dict):
            return _reply(400, {"error": "'faults' must be an object"})
        if action is not None and action not in ACTIONS:
            return _reply(400, {"error": f"unknown action {action!r}; one of {', '.join(ACTIONS)}"})
        if symbol is not None and (action != "step" or symbol not in sim.exchange.symbols):
            return _reply(400, {"error": f"'symbol' {symbol!r} is not a simulated symbol for action 'step'"})
        wanted = KEY_FIELDS.get(action, ())
        for name in ("api_key", "api_secret"):
            # Messages name the field, never its value: the value may be a credential.
            if name in body and name not in wanted:
                return _reply(400, {"error": f"{name!r} is only for action(s) {_needing(name)}"})
            if name in wanted and not _visible_ascii(body.get(name)):
                need = f"1 to {MAX_KEY_LEN} visible ASCII characters"
                return _reply(400, {"error": f"action {action!r} needs {name!r}: {need}"})
        # Everything is checked before anything changes: a refused request changes nothing.
        try:
            checked = sim.check_faults(**faults)
            if wanted:
                sim.check_api_key_change(body["api_key"], body.get("api_secret"))
        except ValueError as exc:
            return _reply(400, {"error": str(exc)})
        sim.set_faults(**checked)
        result: Any = None
        if action == "drop":
            result = sim.drop_sockets()
        elif action == "rotate":
            result = await sim.rotate()
        elif action == "release_fills":
            sim.release_fills()
        elif action == "step":
            await sim.step(symbol)
        elif action == "expire_listen_keys":
            result = sim.expire_listen_keys()
        elif action == "add_api_key":
            added = sim.add_api_key(body["api_key"], body["api_secret"])
            result = {"added": added, "active_keys": sim.active_api_keys}
        elif action == "retire_api_key":
            sim.retire_api_key(body["api_key"])
            result = {"active_keys": sim.active_api_keys}
        return _reply(200, {"ok": True, "result": result, "faults": asdict(sim.faults)})


def _needing(field: str) -> str:
    return ", ".join(repr(a) for a, names in KEY_FIELDS.items() if field in names)
