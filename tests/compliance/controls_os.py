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
