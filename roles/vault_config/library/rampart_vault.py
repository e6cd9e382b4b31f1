#!/usr/bin/python3
"""Ansible module: talk to a Vault-API server (OpenBao or HashiCorp Vault) over its HTTP API, read before write.

Only the Python standard library, so it runs on any Debian host. Actions:

- health:         initialised / sealed / version (no token)
- init:           PUT sys/init with pgp_keys + root_token_pgp_key: every share and the root token come back
                  encrypted to operators' keys (refuses if already initialised: changed=false)
- unseal:         feed shares until unsealed (no-op when already unsealed)
- generate_root:  a new root token encrypted to one operator's key, from a quorum of shares
- configure:      KV v2 mounts, AppRole auth (and its TTLs), one policy + one AppRole per service and
                  (HashiCorp Vault) a file audit device; each read first and written only when
                  different, so a second run reports changed=false; undeclared rampart-* policies and roles go
- secrets:        KV v2 secrets from the spec, read first (call with no_log)
- secret_id:      a fresh secret-id for a service's AppRole unless the current one (by accessor) is still good
- ceremony_token:  an orphan token that may only start a root token generation (ttl in renew_before)
- destroy_accessor, revoke_self

Fails (before writing anything) when the server is sealed or not initialised, naming the server.
"""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
import time
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
TTL_RE = re.compile(r"^(\d+)([smhd]?)$")
KV_PATH_RE = re.compile(r"^[a-z0-9_-]+(/[a-z0-9_.-]+)*$")
POLICY_PREFIX = "rampart-"


class VaultError(Exception):
    pass


def ttl_seconds(value, where: str) -> int:
    m = TTL_RE.match(str(value).strip())
    if not m:
        raise VaultError(f"{where}: {value!r} is not a duration like 30s, 15m, 1h or 7d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


class Client:
    def __init__(self, url: str, ca_file: str | None, token: str | None = None, timeout: float = 10):
        if not url.startswith(("https://", "http://")):
            raise VaultError(f"url: {url!r} is not an http(s) address")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.ctx = ssl.create_default_context(cafile=ca_file) if url.startswith("https") else None

    def request(self, method: str, path: str, body=None, ok=(200, 204), headers=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/v1/{path}", data=data, method=method)  # noqa: S310 (https only)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("X-Vault-Token", self.token)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=self.timeout) as resp:  # noqa: S310
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise VaultError(f"{self.url}: cannot reach the server ({getattr(e, 'reason', e)})") from None
        payload = json.loads(raw) if raw.strip() else {}
        if status not in ok:
            errors = "; ".join(payload.get("errors", [])) or raw[:200].decode(errors="replace")
            raise VaultError(f"{method} {path}: HTTP {status}: {errors}")
        return status, payload

    def get(self, path: str):
        """GET, or None when the path does not exist."""
        status, payload = self.request("GET", path, ok=(200, 404))
        return None if status == 404 else payload

    def health(self) -> dict:
        _, payload = self.request("GET", "sys/health", ok=(200, 429, 472, 473, 501, 503))
        return payload

    def require_unsealed(self) -> dict:
        h = self.health()
        if not h.get("initialized"):
            raise VaultError(f"{self.url} is not initialised: run playbooks/secrets-server-init.yml first "
                             "(docs/vault.md, Init ceremony); nothing was changed")
        if h.get("sealed"):
            raise VaultError(f"{self.url} is SEALED: run playbooks/secrets-server-unseal.yml first (docs/vault.md, Unseal); "
                             "nothing was changed")
        return h


# --- configuration as code ----------------------------------------------------------------------------------

def policy_name(service: str) -> str:
    return f"{POLICY_PREFIX}{service}"


def policy_hcl(mount: str, service: str, paths: dict | None = None) -> str:
    # Read only: the service's own subtree of the KV v2 mount (no list, no metadata, no write), plus any system
    # path it is declared to need (the backup job: the raft snapshot), each with exactly its capabilities.
    hcl = (f"# rampart: {service} may read its own secrets and nothing else\n"
           f'path "{mount}/data/{service}/*" {{\n  capabilities = ["read"]\n}}\n')
    for path, caps in sorted((paths or {}).items()):
        hcl += f'path "{path}" {{\n  capabilities = {json.dumps(sorted(caps))}\n}}\n'
    return hcl


SERVICE_KEYS = {"name", "host", "token_ttl", "token_max_ttl", "secret_id_ttl", "cidrs", "paths"}
# What a declared extra path may be granted: reading system state, never writing policies or secrets.
PATH_RE = re.compile(r"^sys/[a-z0-9_/-]+$")
PATH_CAPABILITIES = {"read"}


def check_spec(spec: dict) -> None:
    """Reject bad input before anything is written; each message names the key at fault.

    Fills each service's TTLs from spec["service_defaults"] and its cidrs from the host view's clients.
    """
    defaults = spec.get("service_defaults") or {}
    services = []
    for i, svc in enumerate(spec.get("services") or []):
        if not isinstance(svc, dict):
            raise VaultError(f"vault_config_services[{i}]: expected a mapping, got {svc!r}")
        if extra := set(svc) - SERVICE_KEYS:
            raise VaultError(f"vault_config_services[{i}]: unknown key(s) {sorted(extra)}; "
                             f"allowed: {sorted(SERVICE_KEYS)}")
        services.append({**defaults, **svc})
    spec["services"] = services
    mount = spec["kv_mount"]
    if not NAME_RE.match(mount):
        raise VaultError(f"vault_config_kv_mount: {mount!r} is not a plain mount name")
    seen = set()
    for i, svc in enumerate(spec["services"]):
        where = f"vault_config_services[{i}]"
        name = svc.get("name", "")
        if not NAME_RE.match(name or ""):
            raise VaultError(f"{where}.name: {name!r} must match {NAME_RE.pattern}")
        if name in seen:
            raise VaultError(f"{where}.name: {name!r} is declared twice")
        seen.add(name)
        for key in ("token_ttl", "token_max_ttl", "secret_id_ttl"):
            if key not in svc:
                raise VaultError(f"{where}.{key}: missing (and no default given)")
            ttl_seconds(svc[key], f"{where}.{key}")
        if ttl_seconds(svc["token_ttl"], "") > ttl_seconds(svc["token_max_ttl"], ""):
            raise VaultError(f"{where}: token_ttl {svc['token_ttl']} is longer than token_max_ttl "
                             f"{svc['token_max_ttl']}")
        if not svc.get("cidrs"):
            found = [cl["address"] for cl in spec.get("clients") or [] if cl.get("source") == svc.get("host")]
            if not found:
                raise VaultError(f"{where}: host {svc.get('host')!r} has no flow to vault in the topology "
                                 "(rampart_host.clients.vault) and no cidrs are given; its secret-id would be "
                                 "bound to nothing")
            svc["cidrs"] = [f"{a}/128" if ":" in a else f"{a}/32" for a in found]
        for c in svc["cidrs"]:
            if not re.match(r"^[0-9a-fA-F:.]+/\d{1,3}$", c):
                raise VaultError(f"{where}.cidrs: {c!r} is not an address/prefix")
        paths = svc.get("paths") or {}
        if not isinstance(paths, dict):
            raise VaultError(f"{where}.paths: expected a mapping of path -> capabilities")
        for path, caps in paths.items():
            if not PATH_RE.match(str(path)):
                raise VaultError(f"{where}.paths: {path!r} is not a sys/ path (only system paths may be added)")
            if not isinstance(caps, list) or not caps or set(caps) - PATH_CAPABILITIES:
                raise VaultError(f"{where}.paths.{path}: capabilities must be a non-empty list from "
                                 f"{sorted(PATH_CAPABILITIES)}, got {caps!r}")
    for i, sec in enumerate(spec.get("secrets") or []):
        where = f"vault_config_secrets[{i}]"
        if not KV_PATH_RE.match(sec.get("path", "")):
            raise VaultError(f"{where}.path: {sec.get('path')!r} is not a KV path like bot/exchange")
        if sec["path"].split("/")[0] not in seen:
            raise VaultError(f"{where}.path: {sec['path']!r} is under no declared service "
                             f"({', '.join(sorted(seen)) or 'none'}); secrets live under <service>/")
        if not isinstance(sec.get("data"), dict) or not sec["data"]:
            raise VaultError(f"{where}.data: must be a non-empty mapping")


def role_body(svc: dict) -> dict:
    return {
        "token_policies": [policy_name(svc["name"])],
        "token_ttl": ttl_seconds(svc["token_ttl"], ""),
        "token_max_ttl": ttl_seconds(svc["token_max_ttl"], ""),
        "token_type": "service",
        "token_bound_cidrs": sorted(svc["cidrs"]),
        "secret_id_bound_cidrs": sorted(svc["cidrs"]),
        "secret_id_ttl": ttl_seconds(svc["secret_id_ttl"], ""),
        "secret_id_num_uses": 0,
        "bind_secret_id": True,
    }


def _cidrs(values) -> list[str]:
    """The server shows a /32 as a bare address: compare networks, not strings."""
    return sorted(str(ipaddress.ip_network(v, strict=False)) for v in values or [])


def _same_role(have: dict, want: dict) -> bool:
    for key, value in want.items():
        got = have.get(key)
        if key.endswith("bound_cidrs"):
            got, value = _cidrs(got), _cidrs(value)
        elif isinstance(value, list):
            got = sorted(got or [])
        if got != value:
            return False
    return True


def configure(c: Client, spec: dict, check: bool) -> list[str]:
    """Bring the server to the spec. Returns what changed (one line each); reads everything first."""
    check_spec(spec)
    c.require_unsealed()
    changes: list[str] = []

    def write(desc, method, path, body=None):
        changes.append(desc)
        if not check:
            c.request(method, path, body)

    mount = spec["kv_mount"]
    mounts = c.get("sys/mounts")["data"]
    have = mounts.get(f"{mount}/")
    if have is None:
        write(f"mount {mount}/ (kv v2)", "POST", f"sys/mounts/{mount}",
              {"type": "kv", "options": {"version": "2"}, "description": "rampart: service secrets"})
    elif have.get("type") != "kv" or (have.get("options") or {}).get("version") != "2":
        raise VaultError(f"vault_config_kv_mount: {mount}/ exists but is {have.get('type')} "
                         f"(options {have.get('options')}), not kv version 2; not touching it")

    auths = c.get("sys/auth")["data"]
    if "approle/" not in auths:
        write("auth approle/", "POST", "sys/auth/approle", {"type": "approle", "description": "rampart services"})
        tune = {}
    else:
        tune = c.get("sys/auth/approle/tune")["data"]
    want_default = ttl_seconds(spec["auth_default_ttl"], "vault_config_auth_default_ttl")
    want_max = ttl_seconds(spec["auth_max_ttl"], "vault_config_auth_max_ttl")
    if tune.get("default_lease_ttl") != want_default or tune.get("max_lease_ttl") != want_max:
        write(f"tune approle/ ttl={want_default}s max={want_max}s", "POST", "sys/auth/approle/tune",
              {"default_lease_ttl": f"{want_default}s", "max_lease_ttl": f"{want_max}s"})

    if spec.get("audit_file"):  # HashiCorp Vault only; OpenBao declares audit devices in its config file
        audits = c.get("sys/audit")["data"]
        if "file/" not in audits:
            write("audit file/", "PUT", "sys/audit/file",
                  {"type": "file", "options": {"file_path": spec["audit_file"], "mode": "0600"}})

    got = c.get(f"sys/policies/acl/{CEREMONY_POLICY}")
    if got is None or got["data"].get("policy") != CEREMONY_HCL:
        write(f"policy {CEREMONY_POLICY}", "PUT", f"sys/policies/acl/{CEREMONY_POLICY}", {"policy": CEREMONY_HCL})

    declared = {svc["name"] for svc in spec["services"]}
    for svc in spec["services"]:
        name = svc["name"]
        want = policy_hcl(mount, name, svc.get("paths"))
        got = c.get(f"sys/policies/acl/{policy_name(name)}")
        if got is None or got["data"].get("policy") != want:
            write(f"policy {policy_name(name)}", "PUT", f"sys/policies/acl/{policy_name(name)}", {"policy": want})
        body = role_body(svc)
        got = c.get(f"auth/approle/role/{name}") if "approle/" in auths else None
        if got is None or not _same_role(got["data"], body):
            write(f"approle {name}", "POST", f"auth/approle/role/{name}", body)

    if spec.get("prune", True):
        _, listed = c.request("GET", "sys/policies/acl?list=true", ok=(200,))
        for name in listed.get("data", {}).get("keys", []):
            if name.startswith(POLICY_PREFIX) and name[len(POLICY_PREFIX):] not in declared:
                write(f"remove policy {name}", "DELETE", f"sys/policies/acl/{name}")
        if "approle/" in auths:
            status, roles = c.request("LIST", "auth/approle/role", ok=(200, 404))
            for name in (roles.get("data", {}).get("keys", []) if status == 200 else []):
                if name not in declared:
                    write(f"remove approle {name}", "DELETE", f"auth/approle/role/{name}")
    return changes


def write_secrets(c: Client, spec: dict, check: bool) -> list[str]:
    """KV v2 secrets (run with no_log: the values pass through here). Returns the paths written."""
    check_spec(spec)
    c.require_unsealed()
    mount, written = spec["kv_mount"], []
    for sec in spec.get("secrets") or []:
        got = c.get(f"{mount}/data/{sec['path']}")
        if got is None or (got.get("data") or {}).get("data") != sec["data"]:
            written.append(f"{mount}/{sec['path']}")
            if not check:
                c.request("POST", f"{mount}/data/{sec['path']}", {"data": sec["data"]})
    return written


# --- ceremony --------------------------------------------------------------------------------------------

def init(c: Client, pgp_keys: list[str], root_key: str, shares: int, threshold: int, check: bool) -> dict:
    if not 1 <= threshold <= shares or (shares > 1 and threshold < 2):
        raise VaultError(f"vault_config_init_threshold {threshold} / vault_config_init_shares {shares}: "
                         "need 2 <= T <= N (or 1 of 1)")
    if len(pgp_keys) != shares:
        raise VaultError(f"vault_config_operators: {len(pgp_keys)} operator keys for {shares} shares; "
                         "one key per share")
    h = c.health()
    if h.get("initialized"):
        return {"changed": False, "initialized": True, "msg": f"{c.url} is already initialised; nothing done"}
    if check:
        return {"changed": True, "initialized": False}
    _, resp = c.request("PUT", "sys/init", {"secret_shares": shares, "secret_threshold": threshold,
                                              "pgp_keys": pgp_keys, "root_token_pgp_key": root_key})
    # keys_base64: each share PGP-encrypted to one operator (same order as pgp_keys); root_token: encrypted too.
    return {"changed": True, "initialized": True, "keys_base64": resp["keys_base64"],
            "root_token_encrypted": resp["root_token"]}


def unseal(c: Client, keys: list[str]) -> dict:
    h = c.health()
    if not h.get("initialized"):
        raise VaultError(f"{c.url} is not initialised: run playbooks/secrets-server-init.yml")
    if not h.get("sealed"):
        return {"changed": False, "sealed": False}
    status = {}
    for key in keys:
        _, status = c.request("PUT", "sys/unseal", {"key": key})
        if not status.get("sealed"):
            return {"changed": True, "sealed": False}
    raise VaultError(f"{c.url} is still sealed after {len(keys)} share(s): progress {status.get('progress')}"
                     f"/{status.get('t')} (a wrong share resets nothing; bring the missing ones)")


def generate_root(c: Client, pgp_key: str, keys: list[str]) -> dict:
    """OpenBao >= 2.6: the authenticated sys/generate-root-token endpoints (the unauthenticated sys/generate-root
    ones are off by default). The client's token is the ceremony token: it may start an attempt, nothing else;
    the new root token still needs a quorum of shares and comes back encrypted to pgp_key."""
    c.require_unsealed()
    _, got = c.request("GET", "sys/generate-root-token/attempt", ok=(200,))
    if (got.get("data") or got).get("started"):
        raise VaultError(f"{c.url}: a root token generation is already in progress; finish or cancel it "
                         "(docs/vault.md, New root token)")
    _, got = c.request("PUT", "sys/generate-root-token/attempt", {"pgp_key": pgp_key})
    attempt = got.get("data") or got
    nonce = attempt["nonce"]
    try:
        for key in keys:
            _, got = c.request("PUT", "sys/generate-root-token/update", {"key": key, "nonce": nonce})
            attempt = got.get("data") or got
            if attempt.get("complete"):
                return {"changed": True, "encoded_token": attempt["encoded_token"]}
    except VaultError:
        c.request("DELETE", "sys/generate-root-token/attempt")
        raise
    c.request("DELETE", "sys/generate-root-token/attempt")
    raise VaultError(f"{c.url}: root token generation needs {attempt.get('required')} shares, got {len(keys)}")


CEREMONY_POLICY = "ceremony-generate-root"
CEREMONY_HCL = ("# rampart: start and feed a root token generation (a quorum of shares is still required)\n"
                'path "sys/generate-root-token/*" {\n  capabilities = ["create", "read", "update", "delete"]\n}\n'
                'path "sys/generate-root-token/attempt" {\n'
                '  capabilities = ["create", "read", "update", "delete"]\n}\n')


def ceremony_token(c: Client, ttl: str) -> dict:
    """An orphan token that can only start a root token generation (operators still need T shares)."""
    c.require_unsealed()
    _, got = c.request("POST", "auth/token/create-orphan",
                       {"policies": [CEREMONY_POLICY], "no_default_policy": True, "ttl": ttl,
                        "display_name": "rampart-ceremony", "renewable": True})
    return {"changed": True, "token": got["auth"]["client_token"]}


def secret_id(c: Client, role: str, accessor: str, renew_before: int, metadata: dict, force: bool = False) -> dict:
    """Keep the delivered secret-id while it has more than renew_before seconds left; else make a new one.

    force: make a new one anyway (the delivered file is gone); the old accessor is returned for destruction.
    """
    c.require_unsealed()
    if accessor and not force:
        status, got = c.request("POST", f"auth/approle/role/{role}/secret-id-accessor/lookup",
                                {"secret_id_accessor": accessor}, ok=(200, 204, 400, 404, 500))
        data = got.get("data") if status == 200 else None
        if data:
            left = _seconds_left(data.get("expiration_time") or "")
            # The server may cap the lifetime below what was asked; renew at a third of the real one then.
            lifetime = int(data.get("secret_id_ttl") or 0)
            window = min(renew_before, lifetime // 3) if lifetime else renew_before
            if left is None or left > window:
                return {"changed": False, "accessor": accessor}
    _, role_id = c.request("GET", f"auth/approle/role/{role}/role-id", ok=(200,))
    _, made = c.request("POST", f"auth/approle/role/{role}/secret-id", {"metadata": json.dumps(metadata)})
    return {"changed": True, "role_id": role_id["data"]["role_id"], "secret_id": made["data"]["secret_id"],
            "accessor": made["data"]["secret_id_accessor"], "old_accessor": accessor or "",
            "ttl": made["data"].get("secret_id_ttl")}


def _seconds_left(expiration: str) -> float | None:
    """Seconds until an RFC 3339 time; None for 'never' (the zero time)."""
    if not expiration or expiration.startswith("0001-01-01"):
        return None
    from datetime import datetime

    stamp = re.sub(r"(\.\d{6})\d*", r"\1", expiration).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp() - time.time()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True,
                       "choices": ["health", "init", "unseal", "generate_root", "configure", "secrets", "secret_id",
                                   "destroy_accessor", "revoke_self", "role_id", "ceremony_token"]},
            "url": {"type": "str", "required": True},
            "ca_file": {"type": "path"},
            "token": {"type": "str", "no_log": True},
            "spec": {"type": "dict"},
            "pgp_keys": {"type": "list", "elements": "str", "default": []},
            "root_token_pgp_key": {"type": "str"},
            "shares": {"type": "int", "default": 0},
            "threshold": {"type": "int", "default": 0},
            "keys": {"type": "list", "elements": "str", "default": [], "no_log": True},
            "role": {"type": "str"},
            "accessor": {"type": "str", "default": "", "no_log": False},
            "renew_before": {"type": "str", "default": "0s"},
            "metadata": {"type": "dict", "default": {}},
            "force": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        c = Client(p["url"], p["ca_file"], p["token"])
        action = p["action"]
        if action == "health":
            module.exit_json(changed=False, health=c.health())
        elif action == "init":
            module.exit_json(**init(c, p["pgp_keys"], p["root_token_pgp_key"], p["shares"], p["threshold"],
                                    module.check_mode))
        elif action == "unseal":
            module.exit_json(**unseal(c, p["keys"]))
        elif action == "generate_root":
            module.exit_json(**generate_root(c, p["root_token_pgp_key"], p["keys"]))
        elif action == "configure":
            changes = configure(c, p["spec"], module.check_mode)
            module.exit_json(changed=bool(changes), changes=changes)
        elif action == "secrets":
            written = write_secrets(c, p["spec"], module.check_mode)
            module.exit_json(changed=bool(written), written=written)
        elif action == "secret_id":
            result = secret_id(c, p["role"], p["accessor"],
                               ttl_seconds(p["renew_before"], "vault_config_secret_id_renew_before"), p["metadata"],
                               p["force"])
            module.exit_json(**result)
        elif action == "role_id":
            c.require_unsealed()
            _, got = c.request("GET", f"auth/approle/role/{p['role']}/role-id", ok=(200,))
            module.exit_json(changed=False, role_id=got["data"]["role_id"])
        elif action == "destroy_accessor":
            gone = False
            if p["accessor"]:
                # An accessor this server never issued (a rebuilt or restored Vault) is already gone: OpenBao
                # answers 500 "failed to find accessor entry" for it, which is not an error here.
                status, body = c.request("POST", f"auth/approle/role/{p['role']}/secret-id-accessor/destroy",
                                         {"secret_id_accessor": p["accessor"]}, ok=(200, 204, 400, 404, 500))
                if status == 500 and "failed to find accessor entry" not in " ".join(body.get("errors", [])):
                    raise VaultError(f"destroy secret-id accessor of {p['role']}: HTTP 500: {body.get('errors')}")
                gone = status in (200, 204)
            module.exit_json(changed=gone)
        elif action == "ceremony_token":
            module.exit_json(**ceremony_token(c, p["renew_before"]))
        elif action == "revoke_self":
            c.request("POST", "auth/token/revoke-self", ok=(200, 204))
            module.exit_json(changed=True)
    except VaultError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
