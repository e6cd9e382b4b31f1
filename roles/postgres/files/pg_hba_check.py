"""Refuse a pg_hba.conf that is not rampart's policy (run by the role's `validate:` before it is installed):
only `local` and `hostssl` lines, only peer (socket) and scram-sha-256, never trust/md5/password, every host
address a single host. Usage: pg_hba_check.py FILE. Prints one line per problem, exits 1 if any."""

import ipaddress
import sys

ALLOWED = {"local": {"peer", "scram-sha-256", "reject"}, "hostssl": {"scram-sha-256", "reject"}}


def problems(text: str) -> list[str]:
    found = []
    rules = 0
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        rules += 1
        fields = line.split()
        kind = fields[0]
        if kind not in ALLOWED:
            found.append(f"line {no}: connection type {kind!r} (only local and hostssl)")
            continue
        need = 4 if kind == "local" else 5
        if len(fields) < need:
            found.append(f"line {no}: expected {need} fields, got {len(fields)}")
            continue
        method = fields[need - 1]
        if method not in ALLOWED[kind]:
            found.append(f"line {no}: method {method!r} not allowed for {kind} ({sorted(ALLOWED[kind])})")
        if kind == "local" and method == "peer" and fields[2] != "postgres":
            found.append(f"line {no}: peer login only for the postgres superuser")
        if kind == "hostssl":
            try:
                net = ipaddress.ip_network(fields[3], strict=True)
            except ValueError:
                found.append(f"line {no}: address {fields[3]!r} is not a CIDR")
                continue
            if net.num_addresses != 1:
                found.append(f"line {no}: address {fields[3]} covers {net.num_addresses} addresses (one host only)")
            if "all" in (fields[1], fields[2]) or fields[2] == "postgres":
                found.append(f"line {no}: network logins name one database and one non-superuser role")
    if not rules:
        found.append("no rules at all")
    return found


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        bad = problems(f.read())
    for p in bad:
        print(f"{sys.argv[1]}: {p}", file=sys.stderr)
    sys.exit(1 if bad else 0)
