"""Configuration: TOML file over embedded defaults, validated up front with one-line errors."""

from __future__ import annotations

import ssl
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..core.risk import RiskLimits, SymbolRules

if TYPE_CHECKING:
    from ..adapters.secrets import SecretsProvider


class ConfigError(Exception):
    """Raised with a single line that names the file, the key and the problem."""


@dataclass
class VenueConfig:
    rest_url: str = "http://127.0.0.1:9100"
    ws_url: str = "ws://127.0.0.1:9100"
    recv_window_ms: int = 5000
    timeout_s: float = 5.0
    # FULL answers carry the fills (fewer requests); RESULT/ACK leave them to the stream and myTrades.
    order_resp_type: str = "FULL"
    user_stream: bool = True  # fills and balances from the user-data stream (listen key)
    rules_refresh_s: float = 3600.0  # exchangeInfo re-read interval (symbol filters, rate limits)
    # PEM CA bundle that https/wss venue certificates must chain to; "" = the system trust store.
    ca_file: str = ""


@dataclass
class VaultConfig:
    addr: str = ""
    role_id_file: str = ""
    secret_id_file: str = ""
    kv_mount: str = "secret"
    kv_path: str = "rampart/bot"
    approle_mount: str = "approle"
    ca_file: str = ""


@dataclass
class SecretsConfig:
    provider: str = "credentials"  # credentials | vault | dotenv
    credentials_dir: str = ""  # defaults to $CREDENTIALS_DIRECTORY
    dotenv_path: str = ".env"
    vault: VaultConfig = field(default_factory=VaultConfig)


@dataclass
class RuntimeConfig:
    client_id_prefix: str = "rb"
    fill_poll_interval_s: float = 0.5
    stale_after_s: float = 5.0
    reconnect_base_s: float = 0.2
    reconnect_cap_s: float = 30.0
    cancel_on_shutdown: bool = True
    # Cancel a resting order of ours after this many seconds (0: never). A strategy that keeps one order per
    # symbol stops trading while that order rests away from the market; this re-opens it.
    order_max_age_s: float = 0.0
    max_submit_attempts: int = 3
    breaker_failures: int = 5
    breaker_reset_s: float = 10.0
    # Market-data plausibility (feed faults are dropped, counted and logged, never applied).
    price_band: float = 0.25  # refuse prices more than this fraction away from the last good one
    max_price: float = 10_000_000.0  # absolute ceiling (exchangeInfo's PRICE_FILTER maxPrice if lower)
    max_seq_jump: int = 1_000_000_000  # largest plausible step of an update id / trade id
    # Reconnects: backoff resets only after a connection stayed healthy this long; connection attempts
    # are capped per 5 minutes (Binance allows 300 per IP; stay well below, other clients share it).
    healthy_after_s: float = 30.0
    max_connects_per_5min: int = 60
    # Every this many ms, run the tick-to-order path on scratch data so its caches are warm at the next tick
    # (service/keep_warm.py): ~10 % of a core at 1 ms here; tick-to-order p50 ~390 -> ~240 µs. 0: off.
    keep_warm_ms: float = 1.0


@dataclass
class BotConfig:
    mode: str = "paper"
    venue: VenueConfig = field(default_factory=VenueConfig)
    symbols: list[SymbolRules] = field(default_factory=list)
    limits: RiskLimits = field(
        default_factory=lambda: RiskLimits(Decimal("0.05"), Decimal("5000"), Decimal("200"), 10)
    )
    start_halted: bool = False
    strategy: str = "mean_reversion"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    database_url: str = "sqlite:///rampart-bot.sqlite3"
    http_host: str = "127.0.0.1"
    http_port: int = 9108
    # Separate listener for the operator API (/api/*); None = the API shares the http listener.
    operator_host: str = "127.0.0.1"
    operator_port: int | None = None
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    log_level: str = "INFO"
    # Per symbol, the rule keys the config file set explicitly (they override exchangeInfo).
    symbol_overrides: dict[str, dict[str, Decimal]] = field(default_factory=dict)


DEFAULT_SYMBOLS = [
    SymbolRules(
        "BTCUSDT",
        "BTC",
        "USDT",
        tick_size=Decimal("0.01"),
        step_size=Decimal("0.00001"),
        min_qty=Decimal("0.00001"),
        max_qty=Decimal("9000"),
        min_notional=Decimal("5"),
        max_notional=Decimal("100000"),
    )
]

# Production venue hosts: paper mode refuses to send orders there.
_LIVE_HOST_SUFFIXES = ("binance.com", "binance.us")


def _dec(where: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: expected a decimal number, got {type(value).__name__}")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{where}: {value!r} is not a decimal number") from None
    if not d.is_finite() or d < 0:
        raise ConfigError(f"{where}: must be a finite non-negative number")
    return d


def _typed(where: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got bool")
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{where}: expected {name}, got {type(value).__name__}")
    return value


def _apply_section(where: str, target: Any, data: Any, nested: dict[str, Any] | None = None) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    nested = nested or {}
    known = {k for k in vars(target)}
    for key, value in data.items():
        path = f"{where}.{key}"
        if key in nested:
            _apply_section(path, getattr(target, key), value)
            continue
        if key not in known:
            raise ConfigError(f"{path}: unknown key")
        current = getattr(target, key)
        setattr(target, key, _typed(path, value, type(current)))


_RULE_KEYS = ("tick_size", "step_size", "min_qty", "max_qty", "min_notional", "max_notional")


def _symbol(where: str, data: Any, overrides: dict[str, dict[str, Decimal]]) -> SymbolRules:
    """A [[symbols]] entry. The trading rules come from the venue's exchangeInfo; any rule key given
    here overrides the venue's value (and, if all are given, the bot can trade without exchangeInfo)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    required = ("symbol", "base", "quote")
    for key in required:
        if key not in data:
            raise ConfigError(f"{where}.{key}: missing")
    unknown = set(data) - set(required) - set(_RULE_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
    sym = _typed(f"{where}.symbol", data["symbol"], str)
    if not sym.isalnum() or not sym.isupper():
        raise ConfigError(f"{where}.symbol: {sym!r} must be upper-case letters and digits")
    given = {k: _dec(f"{where}.{k}", data[k]) for k in _RULE_KEYS if k in data}
    if given.get("tick_size") == 0 or given.get("step_size") == 0:
        raise ConfigError(f"{where}: tick_size and step_size must be positive")
    overrides[sym] = given
    # Placeholders until exchangeInfo arrives (the engine does not trade before it has rules).
    base = DEFAULT_SYMBOLS[0]
    return SymbolRules(
        symbol=sym,
        base_asset=_typed(f"{where}.base", data["base"], str),
        quote_asset=_typed(f"{where}.quote", data["quote"], str),
        tick_size=given.get("tick_size", base.tick_size),
        step_size=given.get("step_size", base.step_size),
        min_qty=given.get("min_qty", base.min_qty),
        max_qty=given.get("max_qty", base.max_qty),
        min_notional=given.get("min_notional", base.min_notional),
        max_notional=given.get("max_notional", Decimal("1000000000")),
    )


def parse_config(data: dict[str, Any], source: str = "<config>") -> BotConfig:
    cfg = BotConfig()
    try:
        for key, value in data.items():
            where = f"{source}: {key}"
            if key == "mode":
                cfg.mode = _typed(where, value, str)
            elif key == "log_level":
                cfg.log_level = _typed(where, value, str).upper()
            elif key == "venue":
                _apply_section(where, cfg.venue, value)
            elif key == "secrets":
                _apply_section(where, cfg.secrets, value, nested={"vault": True})
            elif key == "runtime":
                _apply_section(where, cfg.runtime, value)
            elif key == "symbols":
                if not isinstance(value, list) or not value:
                    raise ConfigError(f"{where}: expected a non-empty array of tables ([[symbols]])")
                cfg.symbols = [
                    _symbol(f"{where}[{i}]", item, cfg.symbol_overrides) for i, item in enumerate(value)
                ]
            elif key == "risk":
                cfg.limits, cfg.start_halted = _risk(where, value, cfg.limits)
            elif key == "strategy":
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: expected a table")
                cfg.strategy = _typed(f"{where}.name", value.get("name", cfg.strategy), str)
                cfg.strategy_params = dict(_typed(f"{where}.params", value.get("params", {}), dict))
            elif key == "database":
                if not isinstance(value, dict) or "url" not in value:
                    raise ConfigError(f"{where}.url: missing")
                cfg.database_url = _typed(f"{where}.url", value["url"], str)
            elif key == "http":
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: expected a table")
                cfg.http_host = _typed(f"{where}.host", value.get("host", cfg.http_host), str)
                cfg.http_port = _typed(f"{where}.port", value.get("port", cfg.http_port), int)
            elif key == "operator":
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: expected a table")
                unknown = set(value) - {"host", "port"}
                if unknown:
                    raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
                if "port" not in value:
                    raise ConfigError(f"{where}.port: missing (an [operator] table needs a port)")
                cfg.operator_host = _typed(f"{where}.host", value.get("host", cfg.operator_host), str)
                cfg.operator_port = _typed(f"{where}.port", value["port"], int)
            else:
                raise ConfigError(f"{where}: unknown key")
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    if not cfg.symbols:
        cfg.symbols = list(DEFAULT_SYMBOLS)
    validate(cfg, source)
    return cfg


def _risk(where: str, value: Any, base: RiskLimits) -> tuple[RiskLimits, bool]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table")
    known = {"max_position", "max_exposure", "daily_loss_limit", "max_orders_per_second", "start_halted"}
    unknown = set(value) - known
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")

    # Keys not given keep the base limits (already Decimals); only given values are parsed.
    def dec(key: str) -> Decimal:
        return _dec(f"{where}.{key}", value[key]) if key in value else getattr(base, key)

    limits = RiskLimits(
        max_position=dec("max_position"),
        max_exposure=dec("max_exposure"),
        daily_loss_limit=dec("daily_loss_limit"),
        max_orders_per_second=_typed(
            f"{where}.max_orders_per_second",
            value.get("max_orders_per_second", base.max_orders_per_second),
            int,
        ),
    )
    return limits, bool(_typed(f"{where}.start_halted", value.get("start_halted", False), bool))


def validate(cfg: BotConfig, source: str) -> None:
    if cfg.mode not in ("paper", "live"):
        raise ConfigError(f"{source}: mode: must be 'paper' or 'live', got {cfg.mode!r}")
    for key in ("rest_url", "ws_url"):
        url = getattr(cfg.venue, key)
        parsed = urlparse(url)
        allowed = ("http", "https") if key == "rest_url" else ("ws", "wss")
        if parsed.scheme not in allowed or not parsed.hostname:
            raise ConfigError(f"{source}: venue.{key}: {url!r} is not a valid {'/'.join(allowed)} URL")
        if cfg.mode == "paper" and parsed.hostname.endswith(_LIVE_HOST_SUFFIXES):
            raise ConfigError(f"{source}: venue.{key}: paper mode refuses a production venue host")
    if not 0 < cfg.venue.recv_window_ms <= 60000:
        raise ConfigError(f"{source}: venue.recv_window_ms: must be in 1..60000")
    if cfg.venue.order_resp_type not in ("ACK", "RESULT", "FULL"):
        raise ConfigError(f"{source}: venue.order_resp_type: must be ACK, RESULT or FULL")
    if cfg.venue.rules_refresh_s <= 0:
        raise ConfigError(f"{source}: venue.rules_refresh_s: must be positive")
    if cfg.venue.ca_file:
        try:
            venue_ssl_context(cfg.venue)
        except (OSError, ssl.SSLError) as exc:
            why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "not a PEM CA bundle"
            raise ConfigError(f"{source}: venue.ca_file: {cfg.venue.ca_file}: cannot load: {why}") from None
    if cfg.secrets.provider not in ("credentials", "vault", "dotenv"):
        raise ConfigError(f"{source}: secrets.provider: must be credentials, vault or dotenv")
    if cfg.secrets.provider == "vault":
        for key in ("addr", "role_id_file", "secret_id_file"):
            if not getattr(cfg.secrets.vault, key):
                raise ConfigError(f"{source}: secrets.vault.{key}: missing (required for provider 'vault')")
    if not (cfg.database_url.startswith("sqlite") or cfg.database_url.startswith("postgresql")):
        raise ConfigError(f"{source}: database.url: only sqlite:// and postgresql+psycopg:// are supported")
    if not 0 < cfg.http_port < 65536:
        raise ConfigError(f"{source}: http.port: must be in 1..65535")
    if cfg.operator_port is not None:
        if not 0 < cfg.operator_port < 65536:
            raise ConfigError(f"{source}: operator.port: must be in 1..65535")
        if not cfg.operator_host:
            raise ConfigError(f"{source}: operator.host: must not be empty")
        if (cfg.operator_host, cfg.operator_port) == (cfg.http_host, cfg.http_port):
            raise ConfigError(
                f"{source}: operator: {cfg.operator_host}:{cfg.operator_port} is the http listener itself"
            )
    if cfg.limits.max_orders_per_second <= 0:
        raise ConfigError(f"{source}: risk.max_orders_per_second: must be positive")
    prefix = cfg.runtime.client_id_prefix
    if not prefix.isalnum() or len(prefix) > 8:
        raise ConfigError(f"{source}: runtime.client_id_prefix: 1-8 letters or digits")
    rt = cfg.runtime
    if rt.order_max_age_s < 0:
        raise ConfigError(f"{source}: runtime.order_max_age_s: must be 0 (never) or positive")
    if not 0 < rt.price_band < 1:
        raise ConfigError(f"{source}: runtime.price_band: must be between 0 and 1 (exclusive)")
    if rt.max_price <= 0 or rt.max_seq_jump <= 0 or rt.healthy_after_s < 0:
        raise ConfigError(f"{source}: runtime.max_price/max_seq_jump/healthy_after_s: must be positive")
    if rt.keep_warm_ms != 0 and not 0.2 <= rt.keep_warm_ms <= 1000:
        raise ConfigError(f"{source}: runtime.keep_warm_ms: must be 0 (off) or between 0.2 and 1000")
    if not 1 <= rt.max_connects_per_5min <= 300:
        raise ConfigError(f"{source}: runtime.max_connects_per_5min: must be in 1..300")
    if cfg.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{source}: log_level: must be DEBUG, INFO, WARNING or ERROR")


def venue_ssl_context(venue: VenueConfig) -> ssl.SSLContext:
    """TLS verification for venue REST (aiohttp) and WebSockets (picows): the configured CA bundle
    only, or the system trust store. Hostname checking stays on either way."""
    return ssl.create_default_context(cafile=venue.ca_file or None)


def provider_for(cfg: BotConfig) -> SecretsProvider:
    """The secrets provider the config names. Imported on use: the providers pull in aiohttp, and
    `--check-config` should not pay for more than it checks."""
    from ..adapters.secrets import CredentialsDirProvider, DotEnvProvider, VaultProvider

    s = cfg.secrets
    if s.provider == "dotenv":
        return DotEnvProvider(s.dotenv_path)
    if s.provider == "vault":
        v = s.vault
        return VaultProvider(
            v.addr,
            v.role_id_file,
            v.secret_id_file,
            v.kv_mount,
            v.kv_path,
            v.approle_mount,
            v.ca_file or None,
        )
    return CredentialsDirProvider(s.credentials_dir or None)


def load_config(path: str | Path) -> BotConfig:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    return parse_config(data, str(p))
