"""The compliance framework: a registry of controls, one batched fact collection per host, and waivers.

Controls live in `controls_*.py` modules next to this file (every such module is imported). A control is a
function decorated with `@control(id, title)` that receives a `Facts` object and raises AssertionError
with a readable message when the host is not compliant. Controls never talk to the host themselves: all
data comes from one remote collection per host (see COLLECTOR), so a full run costs one SSH round trip per
host.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
WAIVERS = HERE / "waivers.yml"
ID_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")  # os-01, sysctl-31a, sshd-27, rampart-net-01 …


# --- registry ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Control:
    id: str
    title: str
    check: Callable[[Facts], None]
    applies: Callable[[Facts], bool] | None = None  # None = every host
    module: str = ""


CONTROLS: dict[str, Control] = {}
# What controls need collected on every host (filled in as control modules register).
NEEDS: dict[str, set[str]] = {"sysctl": set(), "stat": set(), "read": set(), "units": set()}


def control(cid: str, title: str, *, applies: Callable[[Facts], bool] | None = None,
            sysctl: Iterable[str] = (), stat: Iterable[str] = (), read: Iterable[str] = (),
            units: Iterable[str] = ()):
    """Register a control. `sysctl`, `stat`, `read` and `units` name what the collector must fetch."""
    if not ID_RE.match(cid):
        raise ValueError(f"control id {cid!r} does not look like family-number (os-01, rampart-net-01)")

    def register(fn: Callable[[Facts], None]) -> Callable[[Facts], None]:
        if cid in CONTROLS:
            raise ValueError(f"control {cid} registered twice ({CONTROLS[cid].module}, {fn.__module__})")
        CONTROLS[cid] = Control(cid, title, fn, applies, fn.__module__)
        NEEDS["sysctl"].update(sysctl)
        NEEDS["stat"].update(stat)
        NEEDS["read"].update(read)
        NEEDS["units"].update(units)
        return fn
    return register


def load_controls() -> dict[str, Control]:
    """Import every controls_*.py beside this file (the firewall/VPN suite adds its own modules)."""
    for path in sorted(HERE.glob("controls_*.py")):
        importlib.import_module(path.stem)
    return CONTROLS


# --- facts ---------------------------------------------------------------------------------------------------

# Runs on the host as root (python3 is there for Ansible). Prints one JSON document. It never returns
# secrets: for shadow it reports only which accounts have an empty password field.
COLLECTOR = r'''
import glob, grp, json, os, pwd, stat, subprocess, sys, time
need = json.loads(sys.argv[1])
def run(cmd):
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None
def st(path):
    try:
        s = os.lstat(path)
    except OSError:
        return None
    def name(get, i):
        try:
            return get(i)[0]
        except KeyError:
            return str(i)
    return {"mode": stat.S_IMODE(s.st_mode), "uid": s.st_uid, "gid": s.st_gid,
            "user": name(pwd.getpwuid, s.st_uid), "group": name(grp.getgrgid, s.st_gid),
            "dir": stat.S_ISDIR(s.st_mode), "file": stat.S_ISREG(s.st_mode), "size": s.st_size}
out = {"time": time.time()}
out["sysctl"] = {k: (read("/proc/sys/" + k.replace(".", "/")) or "").strip() or None for k in need["sysctl"]}
paths = set(need["stat"])
for pattern in ("/etc/ssh/ssh_host_*", "/etc/sudoers.d/*", "/etc/cron.*"):
    paths.update(glob.glob(pattern))
out["stat"] = {p: st(p) for p in sorted(paths)}
files = set(need["read"])
for pattern in ("/etc/modprobe.d/*.conf", "/etc/sudoers.d/*", "/etc/security/limits.d/*.conf",
                "/etc/audit/rules.d/*.rules", "/etc/sysctl.d/*.conf", "/etc/apt/apt.conf.d/*"):
    files.update(glob.glob(pattern))
out["files"] = {p: read(p) for p in sorted(files)}
out["sshd"] = run("/usr/sbin/sshd -T 2>&1")
out["packages"] = run("dpkg-query -W -f '${Package} ${db:Status-Status}\\n'")["out"]
out["listen"] = run("ss -Htuln")["out"]
out["nft"] = run("nft -j list ruleset")
# `wg show all dump` carries the interface's private key and every preshared key: they are redacted here, on
# the host, so no key ever reaches the controller (what is left says whether one is set).
def redact_wg(text):
    lines = []
    for line in text.splitlines():
        f = line.split("\t")
        if len(f) == 5:  # interface: name, private key, public key, port, fwmark
            f[1] = "(redacted)"
        elif len(f) == 9 and f[2] != "(none)":  # peer: name, public key, preshared key, ...
            f[2] = "(set)"
        lines.append("\t".join(f))
    return "\n".join(lines)
wg = run("wg show all dump 2>/dev/null")
out["wg"] = dict(wg, out=redact_wg(wg["out"]))
out["units"] = run("systemctl show --no-pager -p Id,LoadState,ActiveState,SubState,UnitFileState,ConditionResult "
                   + " ".join(need["units"]))["out"] if need["units"] else ""
v = run("systemd-detect-virt --container")
out["container"] = v["out"].strip() if v["rc"] == 0 else ""
out["capbnd"] = int([l for l in read("/proc/1/status").splitlines() if l.startswith("CapBnd:")][0].split()[1], 16)
out["shadow_empty"] = [l.split(":")[0] for l in (read("/etc/shadow") or "").splitlines()
                       if l.count(":") >= 2 and l.split(":")[1] == ""]
out["suid"] = run("find / -xdev \\( -perm -4000 -o -perm -2000 \\) -type f -print 2>/dev/null")["out"].split()
out["trust_files"] = run("find / -xdev \\( -name .rhosts -o -name hosts.equiv -o -name .netrc -o -name .shosts"
                         " -o -name shosts.equiv \\) -print 2>/dev/null")["out"].split()
out["world_writable_etc"] = run("find /etc -xdev -type f -perm -0002 -print 2>/dev/null")["out"].split()
# /var/lib/private holds systemd DynamicUser= state (journal-upload): its UIDs exist only while the unit runs.
out["unowned"] = run("find / -xdev -path /var/lib/private -prune -o \\( -nouser -o -nogroup \\) -print 2>/dev/null"
                     " | head -20")["out"].split()
out["path"] = os.environ.get("PATH", "")
out["cpu_flags"] = next((l.split(":", 1)[1].split() for l in (read("/proc/cpuinfo") or "").splitlines()
                         if l.startswith("flags")), [])
out["sudo_check"] = run("visudo -c 2>&1")
# The kernel's loaded audit rules and status (not the files): fails where there is no audit netlink socket.
out["auditctl"] = {"rules": run("auditctl -l"), "status": run("auditctl -s")}
# The SSH client's effective settings for an outbound connection (root's, as backups' sftp runs).
out["ssh_client"] = run("ssh -G rampart-compliance-probe.invalid </dev/null")
out["groups"] = {g.gr_name: list(g.gr_mem) for g in grp.getgrall()}
out["users"] = [{"name": p.pw_name, "uid": p.pw_uid, "gid": p.pw_gid, "home": p.pw_dir, "shell": p.pw_shell}
                for p in pwd.getpwall()]
homes = {}
for p in pwd.getpwall():
    if p.pw_uid >= 1000 and p.pw_uid < 65534 or p.pw_uid == 0:
        ak = os.path.join(p.pw_dir, ".ssh", "authorized_keys")
        homes[p.pw_name] = {"home": st(p.pw_dir), "ssh": st(os.path.join(p.pw_dir, ".ssh")), "ak": st(ak)}
out["homes"] = homes


def vault_health():
    """Vault's own health endpoint, over the TLS the host trusts (only where a Vault config exists)."""
    import re, ssl, urllib.request
    m = re.search(r'api_addr\s*=\s*"([^"]+)"', read("/etc/vault/config.hcl") or "")
    if not m:
        return None
    cas = glob.glob("/usr/local/share/ca-certificates/rampart-*-ca.crt")
    try:
        ctx = ssl.create_default_context(cafile=cas[0] if cas else None)
        url = m.group(1) + "/v1/sys/health?standbyok=true&sealedcode=200&uninitcode=200"
        with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
            return {"ok": True, "health": json.load(r)}
    except Exception as e:
        return {"ok": False, "error": str(e)}


out["vault_health"] = vault_health()
print(json.dumps(out))
'''


@dataclass
class Facts:
    """Everything known about one host: who it is (inventory/topology) and what it looks like (collected)."""

    name: str
    env: str
    data: dict[str, Any]
    addresses: dict[str, str] = field(default_factory=dict)  # zone -> address, from the topology
    roles: tuple[str, ...] = ()
    topology: Any = None  # the environment's rampart Topology (None for hosts it does not know)
    zone: str = ""
    access_address: str = ""  # the address the suite (and Ansible) reach the host on
    expected_listen: set[tuple[str, int, str]] = field(default_factory=set)  # (proto, port, address)
    router: bool = False

    # --- convenient views ---
    @property
    def container(self) -> bool:
        return bool(self.data.get("container"))

    def sysctl(self, key: str) -> str | None:
        return self.data["sysctl"].get(key)

    def stat(self, path: str) -> dict | None:
        return self.data["stat"].get(path)

    def file(self, path: str) -> str | None:
        return self.data["files"].get(path)

    def files(self, prefix: str) -> dict[str, str]:
        return {p: c for p, c in self.data["files"].items() if p.startswith(prefix) and c is not None}

    def installed(self, package: str) -> bool:
        return package in self.packages

    @property
    def packages(self) -> set[str]:
        if "_packages" not in self.data:
            self.data["_packages"] = {line.split()[0] for line in self.data["packages"].splitlines()
                                      if line.endswith(" installed")}
        return self.data["_packages"]

    @property
    def sshd(self) -> dict[str, list[str]]:
        """`sshd -T` as {lower-case keyword: [values, one per occurrence]}."""
        if "_sshd" not in self.data:
            parsed: dict[str, list[str]] = {}
            if self.data["sshd"]["rc"] == 0:
                for line in self.data["sshd"]["out"].splitlines():
                    key, _, value = line.partition(" ")
                    parsed.setdefault(key.lower(), []).append(value.strip())
            self.data["_sshd"] = parsed
        return self.data["_sshd"]

    def sshd_value(self, key: str) -> str | None:
        values = self.sshd.get(key.lower())
        return values[0] if values else None

    def unit(self, name: str) -> dict[str, str]:
        if "_units" not in self.data:
            units: dict[str, dict[str, str]] = {}
            for block in self.data["units"].strip().split("\n\n"):
                props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
                if "Id" in props:
                    units[props["Id"]] = props
            self.data["_units"] = units
        return self.data["_units"].get(name if "." in name else f"{name}.service", {})

    @property
    def listening(self) -> list[tuple[str, str, int]]:
        """(proto, address, port) of every listening TCP socket and bound UDP socket."""
        result = []
        for line in self.data["listen"].splitlines():
            parts = line.split()
            if len(parts) < 5:
                continue
            proto, local = parts[0], parts[4]
            address, _, port = local.rpartition(":")
            address = address.strip("[]").split("%")[0]
            result.append((proto, address, int(port)))
        return result


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def is_wildcard(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return address == "*"


def mode_at_most(st: dict | None, limit: int) -> bool:
    """True when no permission bit outside `limit` is set."""
    return st is not None and st["mode"] & ~limit == 0


def describe(st: dict | None) -> str:
    if st is None:
        return "missing"
    return f"{st['user']}:{st['group']} {st['mode']:04o}"


# --- waivers -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Waiver:
    controls: tuple[str, ...]
    reason: str
    env: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    container: bool | None = None  # True: only where the host is really a container

    def matches(self, cid: str, facts: Facts) -> bool:
        return (cid in self.controls
                and (not self.env or facts.env in self.env)
                and (not self.hosts or facts.name in self.hosts)
                and (self.container is None or self.container == facts.container))


class WaiverError(ValueError):
    pass


def load_waivers(path: Path, known: Iterable[str]) -> list[Waiver]:
    """Read and check the waivers file: every entry names exact, known controls and gives a reason."""
    known = set(known)
    raw = yaml.safe_load(path.read_text()) or {}
    entries = raw.get("waivers", []) if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise WaiverError(f"{path}: expected a mapping with a `waivers:` list")
    allowed = {"control", "reason", "env", "hosts", "container"}
    result = []
    for i, entry in enumerate(entries):
        where = f"{path}: waivers[{i}]"
        if not isinstance(entry, dict):
            raise WaiverError(f"{where}: expected a mapping")
        if extra := set(entry) - allowed:
            raise WaiverError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")
        reason = entry.get("reason")
        if not isinstance(reason, str) or len(reason.strip()) < 10:
            raise WaiverError(f"{where}: a waiver needs a `reason` that says why (got {reason!r})")
        ids = entry.get("control")
        ids = [ids] if isinstance(ids, str) else ids
        if not ids or not all(isinstance(c, str) for c in ids):
            raise WaiverError(f"{where}: `control` must be a control id or a list of them")
        for cid in ids:
            if any(ch in cid for ch in "*?[]"):
                raise WaiverError(f"{where}: {cid!r}: waivers name exact control ids, no patterns")
            if cid not in known:
                raise WaiverError(f"{where}: unknown control {cid!r} (stale waiver?)")
        as_tuple = lambda v: tuple([v] if isinstance(v, str) else (v or ()))  # noqa: E731
        container = entry.get("container")
        if container is not None and not isinstance(container, bool):
            raise WaiverError(f"{where}: `container` must be true or false")
        result.append(Waiver(tuple(ids), reason.strip(), as_tuple(entry.get("env")),
                             as_tuple(entry.get("hosts")), container))
    return result


def waiver_for(waivers: list[Waiver], cid: str, facts: Facts) -> Waiver | None:
    return next((w for w in waivers if w.matches(cid, facts)), None)


def collect(host, name: str) -> dict[str, Any]:
    """Run the collector on a testinfra host; return its JSON."""
    need = {k: sorted(v) for k, v in NEEDS.items()}
    result = host.run("python3 -c %s %s", COLLECTOR, json.dumps(need))
    if result.rc != 0:
        raise RuntimeError(f"{name}: fact collection failed (rc={result.rc}): {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout)
