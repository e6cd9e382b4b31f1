"""postgres_hba: the role's pg_hba entries from the host view, checked first (a bad entry is a one-line error
naming the key), so nothing is rendered from input that would not mean what it says."""

from __future__ import annotations

import ipaddress
import re

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # unit tests import this file without Ansible
    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        pass

IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _ident(value, where: str) -> str:
    if not isinstance(value, str) or not IDENT.match(value):
        raise AnsibleFilterError(f"{where}: {value!r} is not a plain lower-case SQL identifier")
    return value


def _address(value, where: str) -> str:
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        raise AnsibleFilterError(f"{where}: {value!r} is not an IP address") from None
    if ip.is_unspecified:
        raise AnsibleFilterError(f"{where}: {value} would match every host")
    return f"{ip}/{ip.max_prefixlen}"


def postgres_hba(host: dict, database: str, user: str, local_logins: list | None = None,
                 source: str = "rampart_host") -> list[dict]:
    """pg_hba entries: the superuser over the socket by peer, `local_logins` ({database, user}) over the socket
    by password, and one hostssl line per client of the postgres service (its address only, scram-sha-256)."""
    if not isinstance(host, dict):
        raise AnsibleFilterError(f"{source}: expected the host view mapping")
    name = host.get("name", "?")
    listens = (host.get("listens") or {}).get("postgres")
    if not isinstance(listens, dict):
        raise AnsibleFilterError(f"{source}.listens.postgres: missing on {name} (is it in the postgres group?)")
    _address(listens.get("address"), f"{source}.listens.postgres.address")
    clients = (host.get("clients") or {}).get("postgres", [])
    if not isinstance(clients, list):
        raise AnsibleFilterError(f"{source}.clients.postgres: expected a list on {name}")
    rules = [{"type": "local", "database": "all", "user": "postgres", "address": "", "method": "peer"}]
    for i, login in enumerate(local_logins or []):
        where = f"postgres local_logins[{i}]"
        rules.append({"type": "local", "database": _ident(login.get("database"), f"{where}.database"),
                      "user": _ident(login.get("user"), f"{where}.user"), "address": "",
                      "method": "scram-sha-256"})
    seen = set()
    for i, client in enumerate(clients):
        where = f"{source}.clients.postgres[{i}]"
        if not isinstance(client, dict):
            raise AnsibleFilterError(f"{where}: expected {{source, address}}")
        cidr = _address(client.get("address"), f"{where}.address")
        if cidr in seen:
            continue
        seen.add(cidr)
        rules.append({"type": "hostssl", "database": _ident(database, "postgres_bot_database"),
                      "user": _ident(user, "postgres_bot_user"), "address": cidr, "method": "scram-sha-256",
                      "source": str(client.get("source", "?"))})
    return rules


class FilterModule:
    def filters(self):
        return {"postgres_hba": postgres_hba}
