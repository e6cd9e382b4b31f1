"""Secrets behind one interface: systemd credentials, Vault AppRole (KV v2), or a .env file for dev.

Secrets are held in `Secret` objects whose repr/str are redacted, are never written to os.environ by
this code, and are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp

log = logging.getLogger(__name__)

REQUIRED_SECRETS = ("api_key", "api_secret", "operator_token")


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("secrets are not picklable")


class SecretsError(Exception):
    """A one-line, operator-readable reason (never contains a secret value)."""


class SecretsProvider(Protocol):
    description: str

    async def load(self, names: Sequence[str]) -> dict[str, Secret]: ...

    async def close(self) -> None: ...


def _require(found: Mapping[str, str | None], names: Sequence[str], where: str) -> dict[str, Secret]:
    missing = [n for n in names if not found.get(n)]
    if missing:
        raise SecretsError(f"missing secret(s) {', '.join(missing)} in {where}")
    return {n: Secret(str(found[n]).strip()) for n in names}


class DotEnvProvider:
    """Reads a .env file *without* touching os.environ (dotenv_values, not load_dotenv)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.description = f".env file {self.path}"

    async def load(self, names: Sequence[str]) -> dict[str, Secret]:
        from dotenv import dotenv_values

        if not self.path.is_file():
            raise SecretsError(f"secrets file not found: {self.path}")
        values = {k.lower(): v for k, v in dotenv_values(self.path).items()}
        return _require(values, names, self.description)

    async def close(self) -> None:
        return None


class CredentialsDirProvider:
    """systemd LoadCredential=: one file per secret in $CREDENTIALS_DIRECTORY."""

    def __init__(self, directory: str | Path | None = None) -> None:
        raw = directory or os.environ.get("CREDENTIALS_DIRECTORY")
        self.directory = Path(raw) if raw else None
        self.description = f"credentials directory {self.directory}"

    async def load(self, names: Sequence[str]) -> dict[str, Secret]:
        if self.directory is None:
            raise SecretsError("CREDENTIALS_DIRECTORY is not set (is the unit using LoadCredential=?)")
        if not self.directory.is_dir():
            raise SecretsError(f"credentials directory not found: {self.directory}")
        found: dict[str, str | None] = {}
        for name in names:
            path = self.directory / name
            found[name] = path.read_text() if path.is_file() else None
        return _require(found, names, self.description)

    async def close(self) -> None:
        return None


class VaultProvider:
    """Vault AppRole login, KV v2 read, and a background task that renews the token.

    role_id and secret_id come from files (normally systemd credentials), never from the environment.
    """

    def __init__(
        self,
        addr: str,
        role_id_file: str | Path,
        secret_id_file: str | Path,
        kv_mount: str = "secret",
        kv_path: str = "rampart/bot",
        approle_mount: str = "approle",
        ca_file: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.addr = addr.rstrip("/")
        self.role_id_file = Path(role_id_file)
        self.secret_id_file = Path(secret_id_file)
        self.kv_mount = kv_mount
        self.kv_path = kv_path
        self.approle_mount = approle_mount
        self.ca_file = ca_file
        self.description = f"Vault {self.addr} {kv_mount}/data/{kv_path}"
        self._session = session
        self._own_session = session is None
        self._token: Secret | None = None
        self._lease_s = 0
        self._renewer: asyncio.Task[None] | None = None
        self.renewals = 0
        self.renew_failures = 0
        # Hooks for the service's Vault circuit breaker (set by the runtime).
        self.on_success: Any = None
        self.on_failure: Any = None

    def _read_file(self, path: Path, what: str) -> str:
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise SecretsError(f"cannot read Vault {what} from {path}: {exc.strerror}") from None
        if not value:
            raise SecretsError(f"Vault {what} file {path} is empty")
        return value

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = None
            if self.ca_file:
                import ssl

                connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=self.ca_file))
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        session = await self._http()
        headers = {"X-Vault-Token": self._token.reveal()} if self._token else {}
        try:
            async with session.request(
                method,
                f"{self.addr}/v1/{path}",
                json=payload,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=5),
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 400:
                    errors = body.get("errors") if isinstance(body, dict) else None
                    raise SecretsError(f"Vault {method} {path} failed: HTTP {resp.status} {errors}")
                return body
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise SecretsError(f"Vault unreachable at {self.addr}: {type(exc).__name__}") from None

    async def login(self) -> None:
        role_id = self._read_file(self.role_id_file, "role_id")
        secret_id = self._read_file(self.secret_id_file, "secret_id")
        self._token = None
        body = await self._call(
            "POST", f"auth/{self.approle_mount}/login", {"role_id": role_id, "secret_id": secret_id}
        )
        auth = body["auth"]
        self._token = Secret(auth["client_token"])
        self._lease_s = int(auth.get("lease_duration", 0))

    async def load(self, names: Sequence[str]) -> dict[str, Secret]:
        await self.login()
        body = await self._call("GET", f"{self.kv_mount}/data/{self.kv_path}")
        data = body.get("data", {}).get("data", {})
        secrets = _require(data, names, self.description)
        if self._lease_s and self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_loop())
        return secrets

    async def renew_once(self) -> None:
        body = await self._call("POST", "auth/token/renew-self", {})
        self._lease_s = int(body.get("auth", {}).get("lease_duration", self._lease_s))
        self.renewals += 1

    async def _renew_loop(self) -> None:
        while True:
            # Renew at two thirds of the lease; on failure log in again (the AppRole is still valid).
            await asyncio.sleep(max(1.0, self._lease_s * 2 / 3))
            try:
                await self.renew_once()
                if self.on_success:
                    self.on_success()
            except SecretsError as exc:
                self.renew_failures += 1
                if self.on_failure:
                    self.on_failure()
                log.warning("vault token renewal failed", extra={"error": str(exc)})
                try:
                    await self.login()
                    if self.on_success:
                        self.on_success()
                except SecretsError as exc2:
                    # Secrets already loaded stay valid; the breaker and metrics show the problem.
                    log.error("vault re-login failed", extra={"error": str(exc2)})

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self._own_session and self._session is not None:
            await self._session.close()


class StaticProvider:
    """Secrets supplied in code (tests and the embedded paper-with-sim demo)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.description = "embedded demo secrets"

    async def load(self, names: Sequence[str]) -> dict[str, Secret]:
        return _require(self._values, names, self.description)

    async def close(self) -> None:
        return None
