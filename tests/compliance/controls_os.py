"""Operating system controls (ids from dev-sec linux-baseline `os-*` and `package-*`, plus rampart's own)."""

import re

from compliance_core import Facts, control, describe, mode_at_most


def _owned(facts: Facts, path: str, user: str, group: str, max_mode: int, *, kind: str = "file") -> None:
    st = facts.stat(path)
    assert st is not None, f"{path} missing"
    assert st[kind], f"{path} is not a {kind}"
    assert (st["user"], st["group"]) == (user, group), f"{path} is {describe(st)}, want {user}:{group}"
    assert mode_at_most(st, max_mode), f"{path} is {describe(st)}, want at most {max_mode:04o}"


def _login_defs(facts: Facts) -> dict[str, str]:
    text = facts.file("/etc/login.defs") or ""
    return dict(line.split(None, 1) for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#") and len(line.split(None, 1)) == 2)


@control("os-01", "No trusted-host login files (.rhosts, hosts.equiv)")
def trusted_hosts(facts: Facts) -> None:
    found = [p for p in facts.data["trust_files"] if p.endswith((".rhosts", "hosts.equiv", ".shosts"))]
    assert not found, f"found {found}"


@control("os-02", "/etc/shadow is root:shadow and not world-readable", stat=["/etc/shadow"])
def shadow(facts: Facts) -> None:
    _owned(facts, "/etc/shadow", "root", "shadow", 0o640)


@control("os-03", "/etc/passwd is root:root 0644", stat=["/etc/passwd"])
def passwd(facts: Facts) -> None:
    _owned(facts, "/etc/passwd", "root", "root", 0o644)


@control("os-03b", "No password hashes in /etc/passwd", read=["/etc/passwd"])
def passwd_hashes(facts: Facts) -> None:
    bad = [line.split(":")[0] for line in (facts.file("/etc/passwd") or "").splitlines()
           if line.count(":") >= 6 and line.split(":")[1] not in ("x", "*", "!")]
    assert not bad, f"accounts with a password field in /etc/passwd: {bad}"


@control("os-04", "No empty or '.' entry in root's PATH")
def dot_in_path(facts: Facts) -> None:
    parts = facts.data["path"].split(":")
    assert "" not in parts and "." not in parts, f"PATH={facts.data['path']}"


@control("os-05", "login.defs: owner, umask, password ageing, retries", read=["/etc/login.defs"],
         stat=["/etc/login.defs"])
def login_defs(facts: Facts) -> None:
    _owned(facts, "/etc/login.defs", "root", "root", 0o644)
    defs = _login_defs(facts)
    want = {"UMASK": "027", "PASS_MAX_DAYS": "60", "PASS_MIN_DAYS": "7", "PASS_WARN_AGE": "7",
            "LOGIN_RETRIES": "5", "LOGIN_TIMEOUT": "60", "UID_MIN": "1000", "GID_MIN": "1000"}
    wrong = {k: defs.get(k) for k, v in want.items() if defs.get(k) != v}
    assert not wrong, f"login.defs differs: {wrong} (want {want})"


# Set-id programs with no business on a server (an idea from the NSA/dev-sec list, our own selection).
SUID_DENY = {"/usr/bin/rcp", "/usr/bin/rlogin", "/usr/bin/rsh", "/usr/lib/openssh/ssh-keysign",
             "/usr/sbin/pppd", "/usr/bin/lockfile", "/usr/bin/dotlockfile", "/usr/bin/mail-lock",
             "/usr/bin/mail-unlock", "/usr/bin/mail-touchlock", "/usr/bin/arping", "/usr/sbin/arping",
             "/usr/sbin/uuidd", "/usr/bin/mtr", "/usr/lib/pt_chown", "/usr/lib/eject/dmcrypt-get-device",
             "/usr/lib/mc/cons.saver", "/usr/bin/at", "/usr/bin/procmail"}


@control("os-06", "No set-id program from the deny list")
def suid_blacklist(facts: Facts) -> None:
    bad = sorted(set(facts.data["suid"]) & SUID_DENY)
    assert not bad, f"set-id programs that should not be: {bad}"


@control("os-07", "UIDs and GIDs are unique", read=["/etc/group"])
def unique_ids(facts: Facts) -> None:
    uids = [u["uid"] for u in facts.data["users"]]
    dup = sorted({u for u in uids if uids.count(u) > 1})
    assert not dup, f"duplicate uids {dup}"
    groups = (facts.file("/etc/group") or "").splitlines()
    gids = [line.split(":")[2] for line in groups if line.count(":") >= 3]
    dupg = sorted({g for g in gids if gids.count(g) > 1})
    assert not dupg, f"duplicate gids {dupg}"


@control("os-09", "No .rhosts or .netrc files")
def netrc(facts: Facts) -> None:
    found = [p for p in facts.data["trust_files"] if p.endswith((".rhosts", ".netrc"))]
    assert not found, f"found {found}"


DISABLED_MODULES = ["cramfs", "freevxfs", "jffs2", "hfs", "hfsplus", "squashfs", "udf"]


def _modprobe_disabled(facts: Facts, modules: list[str]) -> None:
    conf = "\n".join(facts.files("/etc/modprobe.d/").values())
    missing = [m for m in modules
               if not re.search(rf"^install\s+{re.escape(m)}\s+/bin/(false|true)\s*$", conf, re.M)
               or not re.search(rf"^blacklist\s+{re.escape(m)}\s*$", conf, re.M)]
    assert not missing, f"not disabled in /etc/modprobe.d: {missing}"


@control("os-10", "Unused filesystems cannot be loaded")
def unused_filesystems(facts: Facts) -> None:
    _modprobe_disabled(facts, DISABLED_MODULES)


@control("os-11", "Log directory protected", stat=["/var/log"])
def log_dir(facts: Facts) -> None:
    st = facts.stat("/var/log")
    assert st and st["user"] == "root" and mode_at_most(st, 0o775), f"/var/log is {describe(st)}"


@control("os-13", "Cron files and directories only for root",
         stat=["/etc/crontab", "/etc/cron.d", "/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly",
               "/etc/cron.monthly"])
def cron(facts: Facts) -> None:
    bad = []
    for path in ("/etc/crontab", "/etc/cron.d", "/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly",
                 "/etc/cron.monthly"):
        st = facts.stat(path)
        limit = 0o700 if path != "/etc/crontab" else 0o600
        if st is not None and not (st["user"] == "root" and mode_at_most(st, limit)):
            bad.append(f"{path} {describe(st)}")
    assert not bad, f"want root-only: {bad}"


@control("package-01", "No inetd or xinetd")
def no_inetd(facts: Facts) -> None:
    bad = facts.packages & {"inetd", "openbsd-inetd", "inetutils-inetd", "xinetd", "rlinetd"}
    assert not bad, f"installed: {sorted(bad)}"


@control("package-02", "No telnet server")
def no_telnetd(facts: Facts) -> None:
    bad = facts.packages & {"telnetd", "inetutils-telnetd", "telnetd-ssl"}
    assert not bad, f"installed: {sorted(bad)}"


@control("package-03", "No rsh server")
def no_rsh(facts: Facts) -> None:
    bad = facts.packages & {"rsh-server", "rsh-redone-server"}
    assert not bad, f"installed: {sorted(bad)}"


@control("package-05", "No NIS server")
def no_nis(facts: Facts) -> None:
    bad = facts.packages & {"ypserv", "nis"}
    assert not bad, f"installed: {sorted(bad)}"


@control("package-06", "No TFTP server")
def no_tftp(facts: Facts) -> None:
    bad = facts.packages & {"tftpd", "tftpd-hpa", "atftpd", "tftp-server"}
    assert not bad, f"installed: {sorted(bad)}"


@control("package-08", "auditd installed and configured to rotate and suspend on a full disk",
         read=["/etc/audit/auditd.conf"])
def auditd_installed(facts: Facts) -> None:
    assert facts.installed("auditd"), "auditd not installed"
    conf = dict(line.replace(" ", "").split("=", 1) for line in (facts.file("/etc/audit/auditd.conf") or "")
                .splitlines() if "=" in line and not line.startswith("#"))
    want = {"max_log_file_action": "ROTATE", "space_left_action": "SYSLOG", "admin_space_left_action": "SUSPEND",
            "disk_full_action": "SUSPEND", "disk_error_action": "SUSPEND"}
    wrong = {k: conf.get(k) for k, v in want.items() if conf.get(k) != v}
    assert not wrong, f"auditd.conf differs: {wrong}"


@control("package-10", "prelink not installed")
def no_prelink(facts: Facts) -> None:
    assert not facts.installed("prelink")


# --- rampart's own OS controls -------------------------------------------------------------------------------

@control("rampart-os-01", "No telnet, rsh or talk clients")
def no_legacy_clients(facts: Facts) -> None:
    bad = facts.packages & {"telnet", "rsh-client", "rsh-redone-client", "talk", "talkd"}
    assert not bad, f"installed: {sorted(bad)}"


@control("rampart-os-02", "/etc/gshadow is root:shadow 0640", stat=["/etc/gshadow"])
def gshadow(facts: Facts) -> None:
    _owned(facts, "/etc/gshadow", "root", "shadow", 0o640)


@control("rampart-os-03", "/etc/group is root:root 0644", stat=["/etc/group"])
def group_file(facts: Facts) -> None:
    _owned(facts, "/etc/group", "root", "root", 0o644)


@control("rampart-os-04", "Backup copies of the identity files are as protected as the originals",
         stat=["/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-"])
def identity_backups(facts: Facts) -> None:
    bad = []
    for path, group, limit in (("/etc/passwd-", "root", 0o644), ("/etc/group-", "root", 0o644),
                               ("/etc/shadow-", "shadow", 0o640), ("/etc/gshadow-", "shadow", 0o640)):
        st = facts.stat(path)
        if st is not None and not (st["user"] == "root" and st["group"] == group and mode_at_most(st, limit)):
            bad.append(f"{path} {describe(st)}")
    assert not bad, str(bad)


@control("rampart-os-05", "No account with an empty password")
def empty_passwords(facts: Facts) -> None:
    assert not facts.data["shadow_empty"], f"empty password: {facts.data['shadow_empty']}"


@control("rampart-os-06", "Only root has UID 0")
def uid0(facts: Facts) -> None:
    zero = [u["name"] for u in facts.data["users"] if u["uid"] == 0]
    assert zero == ["root"], f"uid 0 accounts: {zero}"


@control("rampart-os-07", "No world-writable files in /etc")
def world_writable(facts: Facts) -> None:
    assert not facts.data["world_writable_etc"], str(facts.data["world_writable_etc"])


@control("rampart-os-08", "No files without an owner or group")
def unowned(facts: Facts) -> None:
    assert not facts.data["unowned"], f"unowned: {facts.data['unowned']}"


@control("rampart-os-09", "Unused network protocols and USB storage cannot be loaded")
def unused_protocols(facts: Facts) -> None:
    _modprobe_disabled(facts, ["dccp", "sctp", "rds", "tipc", "usb-storage"])


@control("rampart-os-10", "login.defs: strong password hashing", read=["/etc/login.defs"])
def login_hashing(facts: Facts) -> None:
    defs = _login_defs(facts)
    assert defs.get("ENCRYPT_METHOD") in ("SHA512", "YESCRYPT"), f"ENCRYPT_METHOD={defs.get('ENCRYPT_METHOD')}"


@control("rampart-os-11", "No core dumps: PAM hard limit 0, systemd default 0, coredumps not stored",
         read=["/etc/systemd/system.conf.d/10-rampart-no-core.conf", "/etc/systemd/coredump.conf.d/10-rampart.conf",
               "/etc/security/limits.conf"])
def no_core_dumps(facts: Facts) -> None:
    limits = "\n".join(list(facts.files("/etc/security/limits.d/").values())
                       + [facts.file("/etc/security/limits.conf") or ""])
    assert re.search(r"^\*\s+hard\s+core\s+0\s*$", limits, re.M), "no `* hard core 0` PAM limit"
    assert "DefaultLimitCORE=0" in (facts.file("/etc/systemd/system.conf.d/10-rampart-no-core.conf") or ""), \
        "systemd DefaultLimitCORE=0 missing"
    assert "Storage=none" in (facts.file("/etc/systemd/coredump.conf.d/10-rampart.conf") or ""), \
        "systemd-coredump Storage=none missing"


@control("rampart-os-12", "Home directories of login users not group/world writable; ~/.ssh private")
def homes(facts: Facts) -> None:
    bad = []
    for user, h in facts.data["homes"].items():
        if h["home"] and not mode_at_most(h["home"], 0o755):
            bad.append(f"~{user} {describe(h['home'])}")
        if h["ssh"] and not mode_at_most(h["ssh"], 0o700):
            bad.append(f"~{user}/.ssh {describe(h['ssh'])}")
        if h["ak"] and not mode_at_most(h["ak"], 0o600):
            bad.append(f"~{user}/.ssh/authorized_keys {describe(h['ak'])}")
    assert not bad, str(bad)


# --- audit rules: the files, and what the kernel really has loaded ----------------------------------------

_AUDIT_FIELD = re.compile(r"^([a-z_0-9]+)(!=|>=|<=|&=|=|>|<|&)(.*)$")
_AUID_UNSET = {"unset", "-1", "4294967295"}


def audit_rule(line: str) -> tuple | None:
    """A rule line (from a rules file or from `auditctl -l`) in one canonical form, or None for control lines
    (-D, -b, -f, -e, --backlog_wait_time) and comments. auditctl prints `-k x` as `-F key=x`, `auid!=unset`
    as `auid!=-1`, a directory watch without its trailing slash and system calls in its own order."""
    tokens = line.split()
    if not tokens or tokens[0] not in ("-w", "-a"):
        return None
    path = perm = key = action = arch = ""
    syscalls: set[str] = set()
    fields: set[str] = set()
    for flag, value in zip(tokens[::2], tokens[1::2], strict=False):
        if flag == "-w":
            path = value.rstrip("/") or "/"
        elif flag == "-p":
            perm = "".join(sorted(value))
        elif flag == "-k":
            key = value
        elif flag == "-a":
            action = ",".join(sorted(value.split(",")))
        elif flag == "-S":
            syscalls.update(value.split(","))
        elif flag == "-F" and (m := _AUDIT_FIELD.match(value)):
            name, op, val = m.groups()
            if name == "arch":
                arch = val
            elif name == "key":
                key = val
            else:
                fields.add(f"{name}{op}{'unset' if name.endswith('uid') and val in _AUID_UNSET else val}")
    if tokens[0] == "-w":
        return ("watch", path, perm, key)
    return ("syscall", action, arch, frozenset(syscalls - {"all"}), frozenset(fields), key)


def audit_rules(text: str) -> list[tuple]:
    return [r for r in (audit_rule(line) for line in text.splitlines()) if r is not None]


def _rules_d(facts: Facts) -> str:
    return "\n".join(facts.files("/etc/audit/rules.d/").values())


def _locks(text: str) -> bool:
    """Whether the rules end with `-e 2` (augenrules keeps the last -e line and puts it last)."""
    locks = [line.split()[1] for line in text.splitlines() if line.split()[:1] == ["-e"] and len(line.split()) > 1]
    return bool(locks) and locks[-1] == "2"


@control("rampart-audit-05", "Every system-call audit rule is written for the 64-bit and the 32-bit ABI")
def audit_both_arches(facts: Facts) -> None:
    rules = [r for r in audit_rules(_rules_d(facts)) if r[0] == "syscall"]
    assert rules, "no system-call rules in /etc/audit/rules.d"
    have = set(rules)
    missing = []
    for rule in rules:
        for mine, other in (("b64", "b32"), ("b32", "b64")):
            if rule[2] == mine and (rule[0], rule[1], other, *rule[3:]) not in have:
                missing.append(f"{rule[5] or '?'}: {','.join(sorted(rule[3]))} has no arch={other} twin")
    unarched = [r for r in rules if not r[2] and r[3]]  # -S without arch: the ABI is whatever auditctl runs as
    assert not missing, "; ".join(sorted(set(missing)))
    assert not unarched, f"system-call rules without -F arch: {[r[5] for r in unarched]}"


@control("rampart-audit-06", "The kernel has every rule of /etc/audit/rules.d loaded (auditctl -l), locked "
         "if the files say -e 2")
def audit_loaded_rules(facts: Facts) -> None:
    listing, status = facts.data["auditctl"]["rules"], facts.data["auditctl"]["status"]
    assert listing["rc"] == 0, f"auditctl -l failed: {(listing['err'] or listing['out']).strip()[-200:]}"
    files = _rules_d(facts)
    wanted = audit_rules(files)
    assert wanted, "no rules in /etc/audit/rules.d"
    loaded = set(audit_rules(listing["out"]))
    missing = [r for r in wanted if r not in loaded]
    assert not missing, (f"{len(missing)} of {len(wanted)} rules not loaded (a rule the kernel refused stops "
                         f"augenrules; immutable rules load at reboot), e.g. {missing[:3]}")
    enabled = next((line.split()[1] for line in status["out"].splitlines() if line.startswith("enabled ")), "?")
    if _locks(files):
        assert enabled == "2", f"rules files say -e 2 but the kernel reports enabled {enabled}"
    else:
        assert enabled in ("1", "2"), f"auditing is off (enabled {enabled})"


@control("rampart-audit-07", "Audit rules are locked until reboot (-e 2 last)")
def audit_immutable(facts: Facts) -> None:
    assert _locks(_rules_d(facts)), "no `-e 2` in /etc/audit/rules.d: root can change or stop auditing"


# --- mount flags on world-writable directories (dev-sec os-14/-15/-16; here the directories must be mount
# points: dev-sec checks only those that happen to be) --------------------------------------------------------

WORLD_WRITABLE_MOUNTS = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 - mount points checked, no temp files


def mount_options(facts: Facts) -> dict[str, set[str]]:
    """Mount point -> its per-mount options, from /proc/self/mountinfo (the last mount on a path is visible)."""
    result: dict[str, set[str]] = {}
    for line in (facts.file("/proc/self/mountinfo") or "").splitlines():
        fields = line.split()
        if len(fields) > 5:
            result[fields[4].replace("\\040", " ")] = set(fields[5].split(","))
    return result


def _mount_flag(facts: Facts, flag: str) -> None:
    mounts = mount_options(facts)
    assert mounts, "/proc/self/mountinfo unreadable"
    bad = [f"{p} is not a mount point" if p not in mounts else f"{p} lacks {flag} ({','.join(sorted(mounts[p]))})"
           for p in WORLD_WRITABLE_MOUNTS if p not in mounts or flag not in mounts[p]]
    assert not bad, "; ".join(bad)


@control("os-14", "/tmp, /var/tmp and /dev/shm are mounted noexec",  # noqa: S108
         read=["/proc/self/mountinfo"])
def mounts_noexec(facts: Facts) -> None:
    _mount_flag(facts, "noexec")


@control("os-15", "/tmp, /var/tmp and /dev/shm are mounted nosuid",  # noqa: S108
         read=["/proc/self/mountinfo"])
def mounts_nosuid(facts: Facts) -> None:
    _mount_flag(facts, "nosuid")


@control("os-16", "/tmp, /var/tmp and /dev/shm are mounted nodev",  # noqa: S108
         read=["/proc/self/mountinfo"])
def mounts_nodev(facts: Facts) -> None:
    _mount_flag(facts, "nodev")


@control("rampart-mount-01", "The mount flags come back at every boot (rampart-mount-options.service enabled)",
         units=["rampart-mount-options.service"])
def mounts_at_boot(facts: Facts) -> None:
    unit = facts.unit("rampart-mount-options")
    assert unit.get("UnitFileState") == "enabled", f"rampart-mount-options.service is {unit.get('UnitFileState')}"
    assert unit.get("ActiveState") == "active", \
        f"rampart-mount-options.service is {unit.get('ActiveState')}/{unit.get('SubState')}"


# --- file integrity (AIDE) -------------------------------------------------------------------------------------

AIDE_CONF = "/etc/aide/rampart-aide.conf"
AIDE_PROM = "/var/lib/prometheus/node-exporter/rampart_aide.prom"
AIDE_CRITICAL = ["/etc/ssh", r"/etc/sudoers$", r"/etc/passwd$", r"/etc/shadow$", r"/etc/nftables\.conf$",
                 "/usr/local/sbin", "/etc/systemd/system", "/usr/bin", "/usr/sbin"]


@control("rampart-aide-01", "AIDE installed and watching the critical files with content hashes",
         read=[AIDE_CONF])
def aide_config(facts: Facts) -> None:
    assert facts.installed("aide"), "aide not installed"
    conf = facts.file(AIDE_CONF)
    assert conf, f"{AIDE_CONF} missing"
    missing = [p for p in AIDE_CRITICAL if not re.search(rf"^{re.escape(p)}\s+Critical\s*$", conf, re.M)]
    assert not missing, f"not watched: {missing}"
    assert re.search(r"^Critical\s*=.*\bsha(256|512)\b", conf, re.M), "the Critical group hashes no content"


@control("rampart-aide-02", "The AIDE baseline database exists and only root can read it",
         stat=["/var/lib/aide/rampart-aide.db.gz", "/var/lib/aide"])
def aide_database(facts: Facts) -> None:
    st = facts.stat("/var/lib/aide/rampart-aide.db.gz")
    assert st and st["file"] and st["size"] > 0, "no AIDE database: run rampart-aide init"
    assert st["user"] == "root" and mode_at_most(st, 0o600), f"database is {describe(st)}"
    assert mode_at_most(facts.stat("/var/lib/aide"), 0o700), f"/var/lib/aide is {describe(facts.stat('/var/lib/aide'))}"


@control("rampart-aide-03", "The AIDE check is scheduled (timer enabled and waiting) and has not failed",
         units=["rampart-aide-check.timer", "rampart-aide-check.service"])
def aide_timer(facts: Facts) -> None:
    timer, service = facts.unit("rampart-aide-check.timer"), facts.unit("rampart-aide-check.service")
    assert timer.get("UnitFileState") == "enabled", f"timer is {timer.get('UnitFileState')}"
    assert timer.get("ActiveState") == "active", f"timer is {timer.get('ActiveState')}"
    assert service.get("ActiveState") != "failed", "the last check failed (journalctl -u rampart-aide-check)"


@control("rampart-aide-04", "The last AIDE check succeeded within two days and published its metrics",
         read=[AIDE_PROM])
def aide_metrics(facts: Facts) -> None:
    text = facts.file(AIDE_PROM)
    assert text, f"{AIDE_PROM} missing: no check has run"
    values = {line.split()[0]: line.split()[1] for line in text.splitlines()
              if line and not line.startswith("#") and len(line.split()) == 2}
    assert values.get("rampart_aide_check_success") == "1", "the last check failed"
    age = facts.data["time"] - float(values.get("rampart_aide_last_check_timestamp_seconds", 0))
    assert age < 2 * 86400, f"last successful check {age / 3600:.0f} h ago"
    assert any(k.startswith("rampart_aide_changed_files{") for k in values), "no rampart_aide_changed_files"


@control("rampart-os-13", "Unused network protocols (dccp, sctp, rds, tipc) are not loaded in the kernel",
         read=["/proc/modules", "/proc/net/protocols"])
def protocols_not_loaded(facts: Facts) -> None:
    text = facts.file("/proc/modules")
    if text is None:  # a kernel without loadable modules (or a container that hides the list): ask the
        # kernel which protocols it has registered instead, built in or not
        protocols = facts.file("/proc/net/protocols")
        assert protocols is not None, "neither /proc/modules nor /proc/net/protocols is readable"
        have = {line.split()[0].upper() for line in protocols.splitlines()[1:] if line.strip()}
        bad = sorted(have & {"DCCP", "DCCPV6", "SCTP", "SCTPV6", "RDS", "TIPC"})
        assert not bad, f"registered protocols: {bad}"
        return
    loaded = {line.split()[0] for line in text.splitlines() if line.strip()}
    bad = sorted(loaded & {"dccp", "dccp_ipv4", "dccp_ipv6", "sctp", "rds", "rds_tcp", "tipc"})
    assert not bad, f"loaded: {bad} (blacklisted now, gone after a reboot or `modprobe -r`)"
