"""rampart's own host controls: listeners derived from the topology, secrets, time, audit, sudo, updates."""

import re

from compliance_core import Facts, control, describe, is_loopback, is_wildcard, mode_at_most

# Key and secret files: path -> (owner, group, most permissive mode). Absent files are fine (a role that is
# not on this host has not created them); present ones must be this tight.
SECRET_FILES = {
    "/etc/shadow": ("root", "shadow", 0o640),
    "/etc/gshadow": ("root", "shadow", 0o640),
    "/etc/sudoers": ("root", "root", 0o440),
    "/etc/ssh/sshd_config": ("root", "root", 0o600),
    "/etc/audit/auditd.conf": ("root", "root", 0o640),
    "/etc/wireguard": ("root", "root", 0o700),
    "/etc/vault.d": ("vault", "vault", 0o750),
    "/etc/postgresql": ("postgres", "postgres", 0o755),
    "/etc/restic": ("root", "root", 0o700),
    "/etc/rampart": ("root", "root", 0o755),  # public material (certificates, peer names); keys below
    "/etc/rampart/pki/journal-upload.key": ("root", "root", 0o600),
    "/etc/rampart/pki/journal-remote.key": ("root", "root", 0o600),
}


@control("rampart-net-01", "Only declared services listen, each on its declared address (topology)")
def only_declared_listeners(facts: Facts) -> None:
    declared = {(proto, port, addr) for proto, port, addr in facts.expected_listen}
    # UDP services bound to every address (wireguard-go does) are tolerated on their declared port: the
    # firewall admits them only at the declared address (rampart-fw-07); TCP never (rampart-net-02).
    udp_ports = {port for proto, port, _ in declared if proto == "udp"}
    extra = sorted({f"{proto}/{addr}:{port}" for proto, addr, port in facts.listening
                    if not is_loopback(addr) and (proto, port, addr) not in declared
                    and not (proto == "udp" and is_wildcard(addr) and port in udp_ports)})
    assert not extra, f"listeners not declared at that address: {extra} (declared: {sorted(declared)})"


@control("rampart-net-02", "Declared TCP services bind to their declared address, not to every address")
def no_wildcard_tcp(facts: Facts) -> None:
    wild = sorted({f"{addr}:{port}" for proto, addr, port in facts.listening
                   if proto == "tcp" and is_wildcard(addr)})
    assert not wild, f"TCP listeners on all addresses: {wild}"


@control("rampart-files-01", "Key and secret files are owned and moded tightly",
         stat=list(SECRET_FILES))
def secret_files(facts: Facts) -> None:
    bad = []
    for path, (user, group, limit) in SECRET_FILES.items():
        st = facts.stat(path)
        if st is None:
            continue
        if st["user"] != user or st["group"] != group or not mode_at_most(st, limit):
            bad.append(f"{path} is {describe(st)}, want {user}:{group} <= {limit:04o}")
    assert not bad, "; ".join(bad)


@control("rampart-files-02", "sudoers drop-ins are root-owned and not writable by others")
def sudoers_d_modes(facts: Facts) -> None:
    bad = [f"{p} {describe(st)}" for p, st in facts.data["stat"].items()
           if p.startswith("/etc/sudoers.d/") and st and not (st["user"] == "root" and mode_at_most(st, 0o440))]
    assert not bad, str(bad)


@control("rampart-time-01", "Clock correct and chrony configured (tracking where the host owns its clock)",
         read=["/etc/chrony/chrony.conf"], units=["chrony.service"])
def time_sync(facts: Facts) -> None:
    before, after = facts.data["_controller_window"]
    remote = facts.data["time"]
    skew = max(before - remote, remote - after, 0.0)
    assert skew < 1.0, f"clock off by {skew:.1f}s from the controller's"
    assert re.search(r"^(server|pool) ", facts.file("/etc/chrony/chrony.conf") or "", re.M), \
        "chrony has no server"
    unit = facts.unit("chrony")
    assert unit.get("UnitFileState") == "enabled", f"chrony {unit.get('UnitFileState')}"
    can_set_clock = bool(facts.data["capbnd"] & (1 << 25))
    if can_set_clock:
        assert unit.get("ActiveState") == "active", f"chrony is {unit.get('ActiveState')}"
    else:
        # The lab: the kernel clock is shared with the controller; chrony skips itself by its condition.
        assert unit.get("ConditionResult") == "no", "chrony neither running nor skipped for lack of CAP_SYS_TIME"


@control("rampart-audit-01", "auditd enabled and running", units=["auditd.service"])
def auditd_running(facts: Facts) -> None:
    unit = facts.unit("auditd")
    assert unit.get("UnitFileState") == "enabled", f"auditd is {unit.get('UnitFileState')}"
    assert unit.get("ActiveState") == "active", f"auditd is {unit.get('ActiveState')}/{unit.get('SubState')}"


@control("rampart-audit-02", "auditd is skipped, not failed, where it cannot run", units=["auditd.service"])
def auditd_not_failed(facts: Facts) -> None:
    unit = facts.unit("auditd")
    assert unit.get("ActiveState") != "failed", "auditd.service failed"


AUDIT_WATCHES = ["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/sudoers", "/etc/sudoers.d/",
                 "/etc/ssh/sshd_config"]


@control("rampart-audit-03", "Audit rules cover identity, sudoers, sshd, time, modules and privileged commands")
def audit_rules(facts: Facts) -> None:
    rules = "\n".join(facts.files("/etc/audit/rules.d/").values())
    missing = [w for w in AUDIT_WATCHES if not re.search(rf"^-w {re.escape(w)} -p wa", rules, re.M)]
    for needle in ("settimeofday", "clock_settime", "init_module", "delete_module", "path=/usr/bin/sudo",
                   "-k privileged", "-k perm_mod"):
        if needle not in rules:
            missing.append(needle)
    assert not missing, f"audit rules lack: {missing}"


@control("rampart-audit-04", "Audit rules loaded in the kernel", units=["auditd.service"])
def audit_loaded(facts: Facts) -> None:
    # augenrules --load runs as ExecStartPost of auditd; with auditd active and the rules file present, the
    # kernel has them (auditctl -l cannot be trusted from a container, so this control uses the unit state).
    unit = facts.unit("auditd")
    assert unit.get("ActiveState") == "active", "auditd not running: no rules loaded"
    assert facts.files("/etc/audit/rules.d/"), "no rules file"


@control("rampart-sudo-01", "sudo policy is valid, uses a pty and logs to a file")
def sudo_policy(facts: Facts) -> None:
    assert facts.data["sudo_check"]["rc"] == 0, facts.data["sudo_check"]["out"]
    sudoers = facts.file("/etc/sudoers") or ""
    assert re.search(r"^Defaults\s+use_pty", sudoers, re.M), "Defaults use_pty missing"
    assert re.search(r"^Defaults\s+logfile=", sudoers, re.M), "Defaults logfile missing"


@control("rampart-sudo-02", "Password-less sudo only for the automation user", read=["/etc/sudoers"])
def nopasswd(facts: Facts) -> None:
    texts = {"/etc/sudoers": facts.file("/etc/sudoers") or "", **facts.files("/etc/sudoers.d/")}
    holders = set()
    for text in texts.values():
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if "NOPASSWD" in line:
                holders.add(line.split()[0])
    assert holders <= {"ops"}, f"NOPASSWD for {sorted(holders - {'ops'})}"


@control("rampart-sudo-03", "Only root and the sudo group have sudo rules; sudo group holds only allowed users")
def sudo_rules(facts: Facts) -> None:
    texts = [facts.file("/etc/sudoers") or "", *facts.files("/etc/sudoers.d/").values()]
    subjects = set()
    for text in texts:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith(("Defaults", "@include", "#include")) and "ALL" in line:
                subjects.add(line.split()[0])
    assert subjects <= {"root", "%sudo", "ops"}, f"sudo rules for {sorted(subjects - {'root', '%sudo', 'ops'})}"
    members = set(facts.data["groups"].get("sudo", []))
    assert members <= {"ops"}, f"sudo group has {sorted(members - {'ops'})}"


@control("rampart-updates-01", "Unattended security upgrades installed and switched on")
def unattended(facts: Facts) -> None:
    assert facts.installed("unattended-upgrades"), "unattended-upgrades not installed"
    periodic = facts.file("/etc/apt/apt.conf.d/20auto-upgrades") or ""
    assert re.search(r'APT::Periodic::Unattended-Upgrade\s+"1"', periodic), "Unattended-Upgrade not 1"
    assert re.search(r'APT::Periodic::Update-Package-Lists\s+"1"', periodic), "Update-Package-Lists not 1"


@control("rampart-updates-02", "apt upgrade timers enabled", units=["apt-daily.timer", "apt-daily-upgrade.timer"])
def apt_timers(facts: Facts) -> None:
    bad = {t: facts.unit(t).get("UnitFileState") for t in ("apt-daily.timer", "apt-daily-upgrade.timer")
           if facts.unit(t).get("UnitFileState") != "enabled"}
    assert not bad, f"timers not enabled: {bad}"


@control("rampart-login-01", "Only key-holding members of the SSH group can log in over SSH")
def ssh_users_have_keys(facts: Facts) -> None:
    members = facts.data["groups"].get("sshusers", [])
    missing = [m for m in members if not (facts.data["homes"].get(m, {}).get("ak") or {}).get("size")]
    assert not missing, f"sshusers without authorized keys: {missing}"
