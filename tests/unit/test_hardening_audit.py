"""The audit rules the hardening role renders: both system-call ABIs, the immutability switch, and the
compliance logic that compares them with what the kernel has loaded (`auditctl -l`)."""

import re

import compliance_core as core  # noqa: E402
import controls_os  # noqa: E402
import pytest
from hardening_templates import render, role_vars

SYSCALL = re.compile(r"^-a always,exit -F arch=(b32|b64) -S (\S+)(.*)-k (\S+)$")


def _syscall_rules(text: str) -> dict[str, set[tuple[str, str, str]]]:
    """arch -> {(syscalls, other fields, key)} for every system-call rule in the rendered file."""
    found: dict[str, set] = {"b32": set(), "b64": set()}
    for line in text.splitlines():
        if m := SYSCALL.match(line):
            found[m[1]].add((m[2], m[3].strip(), m[4]))
    return found


def test_every_syscall_rule_exists_for_both_abis():
    rules = _syscall_rules(render("hardening", "audit.rules.j2"))
    assert rules["b64"], "no system-call rules rendered"
    assert rules["b64"] == rules["b32"]
    keys = {key for _, _, key in rules["b32"]}
    assert {"perm_mod", "access", "modules", "time_change", "system_locale"} <= keys


def test_no_syscall_rule_without_an_arch():
    text = render("hardening", "audit.rules.j2")
    assert not [line for line in text.splitlines() if " -S " in line and "arch=" not in line]


def test_immutable_by_default_and_last():
    assert role_vars("hardening")["hardening_auditd_immutable"] is True
    lines = [line for line in render("hardening", "audit.rules.j2").splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[-1] == "-e 2"
    assert lines.count("-e 2") == 1


def test_immutability_can_be_switched_off():
    text = render("hardening", "audit.rules.j2", hardening_auditd_immutable=False)
    assert not re.search(r"^-e\b", text, re.M)


def test_the_abis_are_a_setting():
    rules = _syscall_rules(render("hardening", "audit.rules.j2", hardening_auditd_arches=["b64"]))
    assert rules["b64"] and not rules["b32"]


def test_auditd_conf_keeps_debian_defaults_under_ours():
    conf = dict(line.split(" = ", 1) for line in render("hardening", "auditd.conf.j2").splitlines()
                if " = " in line)
    assert conf["max_log_file"] == "50" and conf["disk_full_action"] == "SUSPEND"
    assert conf["log_file"] == "/var/log/audit/audit.log" and conf["plugin_dir"] == "/etc/audit/plugins.d"


# --- compliance: rules files against the kernel's listing ---------------------------------------------------

def _as_auditctl_prints(text: str) -> str:
    """What `auditctl -l` (audit 3.0.9) prints for these rules: -F key=, auid!=-1, no trailing slash."""
    out = []
    for line in text.splitlines():
        if not line.startswith(("-a", "-w")):
            continue
        line = line.replace("auid!=unset", "auid!=-1")
        if line.startswith("-w"):
            line = re.sub(r"^-w (\S+?)/? ", r"-w \1 ", line)
        else:
            line = re.sub(r" -k (\S+)$", r" -F key=\1", line)
            if "-F path=" in line:
                line = line.replace("-a always,exit ", "-a always,exit -S all ")
        out.append(line)
    return "\n".join(out) + "\n"


def _facts(rules_file: str, listing: str, enabled: str = "2", rc: int = 0) -> core.Facts:
    return core.Facts(name="db01", env="prod", data={
        "files": {"/etc/audit/rules.d/50-rampart.rules": rules_file},
        "auditctl": {"rules": {"rc": rc, "out": listing, "err": "" if rc == 0 else "Operation not permitted"},
                     "status": {"rc": rc, "out": f"enabled {enabled}\nfailure 1\n", "err": ""}}})


RULES = render("hardening", "audit.rules.j2")


def test_loaded_rules_that_match_the_file_pass():
    controls_os.audit_loaded_rules(_facts(RULES, _as_auditctl_prints(RULES)))
    controls_os.audit_both_arches(_facts(RULES, ""))
    controls_os.audit_immutable(_facts(RULES, ""))


def test_a_rule_missing_from_the_kernel_fails():
    listing = _as_auditctl_prints(RULES).replace("-F arch=b32 -S chmod,fchmod,fchmodat", "-F arch=b32 -S chmod")
    with pytest.raises(AssertionError, match="1 of .* rules not loaded"):
        controls_os.audit_loaded_rules(_facts(RULES, listing))


def test_an_unlocked_kernel_fails_when_the_files_lock():
    with pytest.raises(AssertionError, match="enabled 1"):
        controls_os.audit_loaded_rules(_facts(RULES, _as_auditctl_prints(RULES), enabled="1"))


def test_no_audit_socket_fails_with_the_reason():
    with pytest.raises(AssertionError, match="auditctl -l failed: Operation not permitted"):
        controls_os.audit_loaded_rules(_facts(RULES, "", rc=1))


def test_b64_only_rules_fail_the_abi_control():
    old = "\n".join(line for line in RULES.splitlines() if "arch=b32" not in line)
    with pytest.raises(AssertionError, match="perm_mod: .*has no arch=b32 twin"):
        controls_os.audit_both_arches(_facts(old, ""))


def test_unlocked_rules_fail_the_immutability_control():
    with pytest.raises(AssertionError, match="no `-e 2`"):
        controls_os.audit_immutable(_facts(render("hardening", "audit.rules.j2", hardening_auditd_immutable=False),
                                           ""))
