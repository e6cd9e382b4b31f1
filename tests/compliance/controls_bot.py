"""The trading bot's unit on hosts with the `bot` role (roles/bot): its user, its credentials, no secret in the
unit or its environment, the sandbox, the release layout and the service state."""

import re

from compliance_core import Facts, control, describe, mode_at_most

UNIT = "/etc/systemd/system/rampart-bot.service"
CONFIG = "/etc/rampart-bot/bot.toml"
CREDENTIALS_DIR = "/etc/rampart-bot/credentials"
# Where vault_config delivers the AppRole's role-id and secret-id (the unit loads them from there).
CREDSTORE = "/etc/credstore"
CREDENTIAL_DIRS = (CREDENTIALS_DIR, CREDSTORE)
CREDENTIALS = [f"{CREDENTIALS_DIR}/{name}" for name in ("api_key", "api_secret", "operator_token", "pgpass")] + [
    f"{CREDSTORE}/rampart-bot.{name}" for name in ("vault-role-id", "vault-secret-id")]
RELEASE_DIRS = ["/opt/rampart-bot", "/opt/rampart-bot/releases"]
USER = "rampart-bot"
# Settings the unit must carry (key -> required value; None = present with an empty value).
SANDBOX = {
    "ProtectSystem": "strict", "PrivateTmp": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": None,
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "MemoryDenyWriteExecute": "yes",
    "SystemCallFilter": "@system-service", "ProtectHome": "yes", "PrivateDevices": "yes",
    "Restart": "on-failure", "StateDirectory": "rampart-bot",
}
SECRET_WORDS = re.compile(r"(api[_-]?key|api[_-]?secret|secret[_-]?id|token|password|passwd)", re.I)


def _bot(facts: Facts) -> bool:
    return "bot" in facts.roles


def _settings(facts: Facts) -> dict[str, list[str]]:
    """The unit file's `Key=value` lines, every occurrence kept in order."""
    settings: dict[str, list[str]] = {}
    for line in (facts.file(UNIT) or "").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@control("rampart-bot-01", "The bot runs as its own unprivileged system user", applies=_bot, read=[UNIT])
def bot_user(facts: Facts) -> None:
    users = {u["name"]: u for u in facts.data["users"]}
    user = users.get(USER)
    assert user is not None, f"no user {USER}"
    assert 0 < user["uid"] < 1000, f"{USER} has uid {user['uid']}, not a system uid"
    assert user["shell"] in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"), \
        f"{USER} has login shell {user['shell']}"
    groups = [g for g, members in facts.data["groups"].items() if USER in members and g in ("sudo", "sshusers")]
    assert not groups, f"{USER} is in {groups}"
    settings = _settings(facts)
    assert facts.file(UNIT) is not None, f"{UNIT} missing"
    assert settings.get("User") == [USER], f"the unit runs as {settings.get('User')}, not {USER}"
    assert "DynamicUser" not in settings or settings["DynamicUser"] == ["no"], "DynamicUser set"


@control("rampart-bot-02", "Credential files are root-only and handed over by LoadCredential=", applies=_bot,
         read=[UNIT], stat=[*CREDENTIAL_DIRS, *CREDENTIALS])
def bot_credentials(facts: Facts) -> None:
    bad = []
    sources = [v.partition(":")[2] for v in _settings(facts).get("LoadCredential", [])]
    assert sources, "the unit loads no credentials"
    for directory in sorted({d for d in CREDENTIAL_DIRS for path in sources if path.startswith(d + "/")}):
        st = facts.stat(directory)
        if st is None or st["user"] != "root" or not mode_at_most(st, 0o700):
            bad.append(f"{directory} is {describe(st)}, want root <= 0700")
    for path in sources:
        if not path.startswith(tuple(d + "/" for d in CREDENTIAL_DIRS)) or path not in CREDENTIALS:
            bad.append(f"credential {path} is not one of the known root-only files ({', '.join(CREDENTIAL_DIRS)})")
            continue
        st = facts.stat(path)
        if st is None or not st["file"] or st["user"] != "root" or not mode_at_most(st, 0o600):
            bad.append(f"{path} is {describe(st)}, want a root file <= 0600")
    assert not bad, "; ".join(bad)


@control("rampart-bot-03", "No secret in the unit file, its environment or its command line", applies=_bot,
         read=[UNIT], stat=[UNIT])
def bot_no_secret_in_unit(facts: Facts) -> None:
    settings = _settings(facts)
    env = {k: v for k, v in settings.items() if k in ("Environment", "EnvironmentFile", "PassEnvironment",
                                                      "SetCredential", "SetCredentialEncrypted")}
    assert not env, f"the unit sets {sorted(env)}: secrets must come through LoadCredential= only"
    for key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload"):
        for value in settings.get(key, []):
            words = [w for w in value.split() if "=" in w or w.startswith("--")]
            leaked = [w for w in words if SECRET_WORDS.search(w) and not w.startswith("%d/")]
            assert not leaked, f"{key} passes {leaked} on the command line"
    st = facts.stat(UNIT)
    assert st and st["user"] == "root" and mode_at_most(st, 0o644), f"{UNIT} is {describe(st)}"


@control("rampart-bot-04", "The unit is sandboxed (read-only system, no capabilities, syscall and socket filters)",
         applies=_bot, read=[UNIT])
def bot_sandbox(facts: Facts) -> None:
    settings = _settings(facts)
    wrong = []
    for key, want in SANDBOX.items():
        values = settings.get(key)
        if values is None:
            wrong.append(f"{key} missing")
        elif (want or "") not in values:
            wrong.append(f"{key}={values}")
    if settings.get("ReadWritePaths"):
        wrong.append(f"ReadWritePaths={settings['ReadWritePaths']} (only the state directory may be writable)")
    assert not wrong, "; ".join(wrong)


@control("rampart-bot-05", "Releases are root-owned; the config holds no secret and is not world-readable",
         applies=_bot, stat=[*RELEASE_DIRS, CONFIG], read=[CONFIG])
def bot_files(facts: Facts) -> None:
    bad = []
    for path in RELEASE_DIRS:
        st = facts.stat(path)
        if st is None or st["user"] != "root" or not mode_at_most(st, 0o755):
            bad.append(f"{path} is {describe(st)}, want root <= 0755")
    st = facts.stat(CONFIG)
    if st is None or st["user"] != "root" or st["group"] != USER or not mode_at_most(st, 0o640):
        bad.append(f"{CONFIG} is {describe(st)}, want root:{USER} <= 0640")
    keys = re.findall(r"^\s*([A-Za-z_]+)\s*=", facts.file(CONFIG) or "", re.M)
    secret_keys = [k for k in keys if SECRET_WORDS.search(k) and not k.endswith("_file")]
    if secret_keys:
        bad.append(f"{CONFIG} sets {secret_keys}")
    assert not bad, "; ".join(bad)


@control("rampart-bot-06", "The bot service is enabled and running", applies=_bot, units=["rampart-bot.service"])
def bot_running(facts: Facts) -> None:
    unit = facts.unit("rampart-bot.service")
    assert unit.get("UnitFileState") == "enabled", f"rampart-bot is {unit.get('UnitFileState')}"
    assert unit.get("ActiveState") == "active", f"rampart-bot is {unit.get('ActiveState')}/{unit.get('SubState')}"
