"""Bad input at start: one clear line naming what is wrong, non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from rampart_bot.service.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def test_example_config_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.mode == "paper"
    assert cfg.symbols[0].symbol == "BTCUSDT"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"mode": "yolo"}, "mode: must be 'paper' or 'live'"),
        ({"venue": {"rest_url": "ftp://x"}}, "venue.rest_url"),
        ({"venue": {"recv_window_ms": "5000"}}, "venue.recv_window_ms: expected int"),
        ({"venue": {"rest_url": "https://api.binance.com"}}, "paper mode refuses a production venue host"),
        ({"risk": {"max_position": "lots"}}, "risk.max_position: 'lots' is not a decimal"),
        ({"risk": {"max_leverage": 3}}, "risk.max_leverage: unknown key"),
        ({"symbols": [{"symbol": "BTCUSDT"}]}, "symbols[0].base: missing"),
        ({"secrets": {"provider": "vault"}}, "secrets.vault.addr: missing"),
        ({"database": {"url": "mysql://x"}}, "database.url"),
        ({"bogus": 1}, "bogus: unknown key"),
    ],
)
def test_bad_config_names_the_key(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "bot.toml")
    assert fragment in str(err.value)
    assert str(err.value).startswith("bot.toml: ")
    assert "\n" not in str(err.value)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rampart_bot.service.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_cli_malformed_config_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bot.toml"
    bad.write_text("mode = 'paper'\n[risk\n")
    proc = _run("--config", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "invalid TOML" in proc.stderr and str(bad) in proc.stderr


def test_cli_missing_secret_names_it(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_key").write_text("k")
    (creds / "operator_token").write_text("t")
    cfg = tmp_path / "bot.toml"
    cfg.write_text(f'[secrets]\nprovider = "credentials"\ncredentials_dir = "{creds}"\n')
    proc = _run("--config", str(cfg), "--check-config")
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    assert "missing secret(s) api_secret" in proc.stderr and str(creds) in proc.stderr


def test_cli_check_config_ok(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("API_KEY=k\nAPI_SECRET=s\nOPERATOR_TOKEN=t\n")
    cfg = tmp_path / "bot.toml"
    cfg.write_text(f'[secrets]\nprovider = "dotenv"\ndotenv_path = "{env_file}"\n')
    proc = _run("--config", str(cfg), "--check-config")
    assert proc.returncode == 0, proc.stderr
    assert "config OK" in proc.stdout and "s\n" not in proc.stdout


def test_partial_risk_table_keeps_defaults_for_the_rest() -> None:
    base = parse_config({}, "bot.toml").limits
    cfg = parse_config({"risk": {"max_position": "0.1"}}, "bot.toml")
    assert cfg.limits.max_position == Decimal("0.1")
    assert cfg.limits.max_exposure == base.max_exposure
    assert cfg.limits.daily_loss_limit == base.daily_loss_limit
    assert cfg.limits.max_orders_per_second == base.max_orders_per_second
    only_rate = parse_config({"risk": {"max_orders_per_second": 3, "start_halted": True}}, "bot.toml")
    assert only_rate.limits.max_position == base.max_position and only_rate.start_halted
    assert only_rate.limits.max_orders_per_second == 3
