"""The bot's and the simulator's systemd units and the bot's config: rendered with the role defaults, checked by
the same validation the roles run before installing them (systemd-analyze verify + an exposure threshold), the
exposure measured, the config parsed by the bot's own loader, and deploy.yml syntax-checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="needs systemd-analyze")

VIEW = {  # the lab's bot01 and exchange as the host view shows them
    "bot_http_listen": {"address": "10.77.10.80", "port": 9108},
    "bot_operator_listen": {"address": "10.77.10.80", "port": 9108},
    "bot_venue_rest_url": "https://10.77.0.178:9443",
    "bot_venue_ws_url": "wss://10.77.0.178:9443",
    "bot_database_url": "sqlite:////var/lib/rampart-bot/bot.sqlite3",
    "bot_credential_names": ["api_key", "api_secret", "operator_token"],
    "_bot_credential_files_all": {n: f"/etc/rampart-bot/credentials/{n}" for n in ("api_key", "api_secret",
                                                                                    "operator_token")},
    "_bot_ip_allow": ["10.77.0.178", "10.77.10.136", "10.77.10.80", "10.77.20.80", "10.77.30.88"],
    "exchange_sim_listen": {"address": "10.77.0.178", "port": 9443},
    "exchange_sim_credential_names": ["sim_api_key", "sim_api_secret", "sim_control_token"],
    "exchange_sim_config_dir": "/etc/rampart-exchange-sim",
}


def _env(role: str) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "roles" / role / "templates"),  # noqa: S701
                             undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    env.filters["basename"] = lambda p: Path(p).name
    env.filters["dirname"] = lambda p: str(Path(p).parent)
    return env


def _vars(role: str, **overrides) -> dict:
    values = yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text())
    values.update(VIEW)
    values.update(overrides)
    for key, value in list(values.items()):  # defaults that refer to other defaults
        if isinstance(value, str) and "{{" in value and key.startswith(("exchange_sim_tls_",)):
            values[key] = jinja2.Template(value).render(**values)
    return values


def render(role: str, template: str, **overrides) -> str:
    return _env(role).get_template(template).render(ansible_managed="test", **_vars(role, **overrides))


def _validator(role: str, task_file: str, template: str, release: Path, **overrides) -> str:
    tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / task_file).read_text())
    task = next(t for t in tasks if t.get("ansible.builtin.template", {}).get("src") == template)
    values = {**_vars(role, **overrides), "py_release_path": str(release)}
    return jinja2.Template(task["ansible.builtin.template"]["validate"]).render(**values)


def _check(command: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", command.replace("%s", str(path))], capture_output=True, text=True,
                          check=False)


@pytest.fixture()
def release(tmp_path) -> Path:
    """A stand-in release with the two entry points (verify checks that ExecStart is executable)."""
    bin_dir = tmp_path / "releases/0.1.0-abc/venv/bin"
    bin_dir.mkdir(parents=True)
    for name in ("rampart-bot", "rampart-exchange-sim"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    return tmp_path / "releases/0.1.0-abc"


def test_the_bot_unit_has_the_hardening_and_no_secret():
    unit = render("bot", "rampart-bot.service.j2")
    lines = set(unit.splitlines())
    for line in ("User=rampart-bot", "ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "CapabilityBoundingSet=", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                 "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service", "Restart=on-failure",
                 "StartLimitBurst=5", "StartLimitIntervalSec=300", "StateDirectory=rampart-bot",
                 "LoadCredential=api_key:/etc/rampart-bot/credentials/api_key",
                 "LoadCredential=operator_token:/etc/rampart-bot/credentials/operator_token",
                 "ExecStart=/opt/rampart-bot/current/venv/bin/rampart-bot --config /etc/rampart-bot/bot.toml",
                 "IPAddressDeny=any"):
        assert line in lines, line
    assert not re.search(r"^(Environment|EnvironmentFile|PassEnvironment|ReadWritePaths)=", unit, re.M)
    # The bot tells systemd when it serves and feeds the watchdog from its event loop (a hung loop is restarted).
    assert {"Type=notify", "WatchdogSec=30", "NotifyAccess=main"} <= set(lines)
    plain = render("bot", "rampart-bot.service.j2", bot_sd_notify=False)
    assert "Type=exec" in plain.splitlines() and "WatchdogSec" not in plain


def test_vault_provider_hands_over_only_the_approle_from_where_vault_config_delivers_it():
    # The role's derived vars, evaluated by Ansible's own templating (the filters are Ansible's).
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    values = _vars("bot", bot_secrets_provider="vault", bot_extra_credential_names=["pgpass"])
    derived = yaml.safe_load((ROOT / "roles/bot/vars/main.yml").read_text())
    values.update({key: trust_as_template(value) for key, value in derived.items()})
    files = Templar(loader=DataLoader(), variables=values).template(values["_bot_credential_files_all"])
    unit = render("bot", "rampart-bot.service.j2", _bot_credential_files_all=files)
    assert re.findall(r"^LoadCredential=(\S+)$", unit, re.M) == [
        "pgpass:/etc/rampart-bot/credentials/pgpass",
        "vault_role_id:/etc/credstore/rampart-bot.vault-role-id",
        "vault_secret_id:/etc/credstore/rampart-bot.vault-secret-id"]


@needs_analyze
@pytest.mark.parametrize("role, template, task_file", [
    ("bot", "rampart-bot.service.j2", "configure.yml"),
    ("exchange_sim", "rampart-exchange-sim.service.j2", "main.yml"),
])
def test_the_units_pass_the_roles_validation_and_bad_ones_do_not(tmp_path, release, role, template, task_file):
    root = release.parent.parent
    root_key = "bot_root" if role == "bot" else "exchange_sim_root"
    unit = render(role, template, **{root_key: str(root)})
    command = _validator(role, task_file, template, release, **{root_key: str(root)})
    good = tmp_path / "good.service"
    good.write_text(unit)
    result = _check(command, good)
    assert result.returncode == 0, result.stdout + result.stderr

    typo = tmp_path / "typo.service"
    typo.write_text(unit.replace("NoNewPrivileges=yes", "NoNewPrivilegs=yes"))
    assert _check(command, typo).returncode != 0

    # Without the sandbox the exposure is far above the target: refused.
    loose = tmp_path / "loose.service"
    loose.write_text(unit.split("UMask=0077")[0] + "\n[Install]\nWantedBy=multi-user.target\n")
    refused = _check(command, loose)
    assert refused.returncode != 0 and "exposure level" in refused.stdout


def _exposure(unit: str, tmp_path: Path) -> float:
    path = tmp_path / "rampart-bot.service"
    path.write_text(unit)
    out = subprocess.run([ANALYZE, "security", "--offline=yes", str(path)], capture_output=True, text=True,
                         check=False).stdout
    return float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out).group(1))


@needs_analyze
def test_the_bot_unit_exposure_is_at_most_2(tmp_path, capsys):
    filtered = _exposure(render("bot", "rampart-bot.service.j2"), tmp_path)
    unfiltered = _exposure(render("bot", "rampart-bot.service.j2", bot_ip_filter=False), tmp_path)
    with capsys.disabled():
        print(f"\nsystemd-analyze security --offline: rampart-bot.service exposure {filtered} "
              f"(IP filter on), {unfiltered} (off)")
    assert filtered <= 2.0 and unfiltered <= 2.0


def test_the_sim_unit_takes_tls_and_tokens_as_credentials():
    unit = render("exchange_sim", "rampart-exchange-sim.service.j2")
    assert "--host 10.77.0.178 --port 9443" in unit and "--tls-cert %d/tls_cert --tls-key %d/tls_key" in unit
    assert re.findall(r"^LoadCredential=(\w+):", unit, re.M) == [
        "sim_api_key", "sim_api_secret", "sim_control_token", "tls_cert", "tls_key"]
    plain = render("exchange_sim", "rampart-exchange-sim.service.j2", exchange_sim_tls_enabled=False)
    assert "--tls" not in plain and "tls_key" not in plain


def test_the_config_is_accepted_by_the_bot(tmp_path):
    config = pytest.importorskip("rampart_bot.service.config")
    # All four limits: a partial [risk] table trips a bot bug (defaults are Decimals that _dec refuses).
    risk = {"max_position": "0.02", "max_exposure": "4000", "daily_loss_limit": "150", "max_orders_per_second": 5}
    text = render("bot", "bot.toml.j2", bot_risk=risk,
                  bot_strategy_params={"qty": "0.001"}, bot_runtime={"client_id_prefix": "rb1"},
                  bot_symbols=[{"symbol": "BTCUSDT", "base": "BTC", "quote": "USDT", "tick_size": "0.01",
                                "step_size": "0.00001", "min_qty": "0.00001", "max_qty": "9000",
                                "min_notional": "5"}])
    path = tmp_path / "bot.toml"
    path.write_text(text)
    cfg = config.load_config(path)
    assert (cfg.http_host, cfg.http_port, cfg.venue.rest_url) == ("10.77.10.80", 9108, "https://10.77.0.178:9443")
    assert cfg.limits.max_orders_per_second == 5 and cfg.runtime.client_id_prefix == "rb1"
    assert str(cfg.symbols[0].min_notional) == "5" and cfg.secrets.provider == "credentials"
    data = tomllib.loads(text)
    assert "api_key" not in text and set(data) >= {"venue", "database", "http", "secrets"}

    vault = render("bot", "bot.toml.j2", bot_secrets_provider="vault", bot_vault_addr="https://10.77.40.5:8200")
    path.write_text(vault)
    cfg = config.load_config(path)
    assert cfg.secrets.vault.role_id_file == "/run/credentials/rampart-bot.service/vault_role_id"


def test_deploy_playbook_syntax():
    playbook = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))
    if playbook is None:
        pytest.skip("needs ansible-playbook")
    result = subprocess.run([playbook, "-i", "localhost,", "--syntax-check", "playbooks/deploy.yml"], cwd=ROOT,
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles")})
    assert result.returncode == 0, result.stdout + result.stderr
