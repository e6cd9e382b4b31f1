"""Kernel and network parameters (ids from dev-sec linux-baseline `sysctl-*`, plus rampart's own)."""

from compliance_core import Facts, control


def _expect(facts: Facts, wanted: dict[str, set[str]]) -> None:
    wrong = {k: facts.sysctl(k) for k, ok in wanted.items() if facts.sysctl(k) not in ok}
    assert not wrong, "; ".join(f"{k}={v} (want {'|'.join(sorted(wanted[k]))})" for k, v in wrong.items())


def _simple(cid: str, title: str, wanted: dict[str, str | set[str]]) -> None:
    norm = {k: ({v} if isinstance(v, str) else v) for k, v in wanted.items()}

    @control(cid, title, sysctl=norm)
    def check(facts: Facts) -> None:
        _expect(facts, norm)


@control("sysctl-01", "IPv4 forwarding only on hosts that route between zones",
         sysctl=["net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"])
def ipv4_forwarding(facts: Facts) -> None:
    want = "1" if facts.router else "0"
    _expect(facts, {"net.ipv4.ip_forward": {want}, "net.ipv4.conf.all.forwarding": {want}})


_simple("sysctl-02", "Reverse path filtering", {"net.ipv4.conf.all.rp_filter": "1",
                                                  "net.ipv4.conf.default.rp_filter": "1"})
_simple("sysctl-03", "Ignore bogus ICMP error responses", {"net.ipv4.icmp_ignore_bogus_error_responses": "1"})
_simple("sysctl-04", "Ignore ICMP echo to broadcast addresses", {"net.ipv4.icmp_echo_ignore_broadcasts": "1"})
_simple("sysctl-05", "ICMP rate limit", {"net.ipv4.icmp_ratelimit": "100"})
_simple("sysctl-06", "ICMP rate mask", {"net.ipv4.icmp_ratemask": "88089"})
_simple("sysctl-07", "No TCP timestamps (uptime leak)", {"net.ipv4.tcp_timestamps": "0"})
_simple("sysctl-08", "ARP: reply only for addresses on the incoming interface",
        {"net.ipv4.conf.all.arp_ignore": {"1", "2"}})
_simple("sysctl-09", "ARP: announce the best local address", {"net.ipv4.conf.all.arp_announce": "2"})
_simple("sysctl-10", "RFC 1337 TIME-WAIT assassination protection", {"net.ipv4.tcp_rfc1337": "1"})
_simple("sysctl-11", "SYN cookies against SYN floods", {"net.ipv4.tcp_syncookies": "1"})
_simple("sysctl-13", "No source-routed packets", {
    "net.ipv4.conf.all.accept_source_route": "0", "net.ipv4.conf.default.accept_source_route": "0",
    "net.ipv6.conf.all.accept_source_route": "0", "net.ipv6.conf.default.accept_source_route": "0"})
_simple("sysctl-14", "No IPv4 ICMP redirects accepted", {
    "net.ipv4.conf.all.accept_redirects": "0", "net.ipv4.conf.default.accept_redirects": "0"})
_simple("sysctl-15", "No 'secure' ICMP redirects accepted", {
    "net.ipv4.conf.all.secure_redirects": "0", "net.ipv4.conf.default.secure_redirects": "0"})
_simple("sysctl-16", "No ICMP redirects sent", {
    "net.ipv4.conf.all.send_redirects": "0", "net.ipv4.conf.default.send_redirects": "0"})
_simple("sysctl-17", "Martian packets logged", {
    "net.ipv4.conf.all.log_martians": "1", "net.ipv4.conf.default.log_martians": "1"})
_simple("sysctl-19", "No IPv6 forwarding (no zone routes IPv6)", {"net.ipv6.conf.all.forwarding": "0"})
_simple("sysctl-20", "No IPv6 ICMP redirects accepted", {
    "net.ipv6.conf.all.accept_redirects": "0", "net.ipv6.conf.default.accept_redirects": "0"})
_simple("sysctl-21", "No IPv6 router solicitations", {"net.ipv6.conf.default.router_solicitations": "0"})
_simple("sysctl-22", "Ignore router preference in router advertisements",
        {"net.ipv6.conf.default.accept_ra_rtr_pref": "0"})
_simple("sysctl-23", "Ignore prefix information in router advertisements",
        {"net.ipv6.conf.default.accept_ra_pinfo": "0"})
_simple("sysctl-24", "Ignore default routes in router advertisements",
        {"net.ipv6.conf.default.accept_ra_defrtr": "0"})
_simple("sysctl-25", "No router advertisements accepted", {
    "net.ipv6.conf.all.accept_ra": "0", "net.ipv6.conf.default.accept_ra": "0"})
_simple("sysctl-26", "No IPv6 address autoconfiguration", {"net.ipv6.conf.default.autoconf": "0"})
_simple("sysctl-27", "No duplicate-address probes per address", {"net.ipv6.conf.default.dad_transmits": "0"})
_simple("sysctl-28", "At most one global IPv6 address per interface", {"net.ipv6.conf.default.max_addresses": "1"})

# Kernel-wide settings: the host kernel's. (Inside a container they are the container host's.)
_simple("sysctl-30", "Magic SysRq off", {"kernel.sysrq": "0"})
_simple("sysctl-31a", "No core dumps from setuid programs", {"fs.suid_dumpable": {"0", "2"}})


@control("sysctl-31b", "Core dumps, if any, go to an absolute path or a pipe",
         sysctl=["kernel.core_pattern"])
def core_pattern(facts: Facts) -> None:
    pattern = facts.sysctl("kernel.core_pattern") or ""
    assert pattern.startswith(("/", "|/")), f"kernel.core_pattern={pattern!r}"


_simple("sysctl-32", "Full address space layout randomisation", {"kernel.randomize_va_space": "2"})


@control("sysctl-33", "CPU has the NX (no-execute) flag")
def nx(facts: Facts) -> None:
    assert "nx" in facts.data["cpu_flags"], "CPU flags lack nx"


_simple("sysctl-34", "Hard links, symlinks, FIFOs and regular files protected", {
    "fs.protected_hardlinks": "1", "fs.protected_symlinks": "1", "fs.protected_fifos": {"1", "2"},
    "fs.protected_regular": "2"})
_simple("rampart-sysctl-01", "Kernel pointers hidden from everyone", {"kernel.kptr_restrict": "2"})
_simple("rampart-sysctl-02", "Kernel log readable by root only", {"kernel.dmesg_restrict": "1"})
_simple("rampart-sysctl-03", "ptrace limited to descendants (Yama)", {"kernel.yama.ptrace_scope": {"1", "2", "3"}})
_simple("rampart-sysctl-04", "No unprivileged eBPF; JIT hardened", {
    "kernel.unprivileged_bpf_disabled": {"1", "2"}, "net.core.bpf_jit_harden": "2"})
_simple("rampart-sysctl-05", "perf events restricted", {"kernel.perf_event_paranoid": {"2", "3"}})
_simple("rampart-sysctl-06", "No TTY line-discipline autoload", {"dev.tty.ldisc_autoload": "0"})


@control("rampart-sysctl-07", "Hardening settings persisted in sysctl.d (applied at boot)")
def persisted(facts: Facts) -> None:
    conf = facts.file("/etc/sysctl.d/90-rampart-hardening.conf")
    assert conf, "/etc/sysctl.d/90-rampart-hardening.conf missing"
    settings = dict(line.replace(" ", "").split("=", 1) for line in conf.splitlines()
                    if "=" in line and not line.startswith("#"))
    for key, value in {"net.ipv4.conf.all.rp_filter": "1", "kernel.kptr_restrict": "2",
                       "fs.suid_dumpable": "0", "kernel.yama.ptrace_scope": "1"}.items():
        assert settings.get(key) == value, f"{key} in sysctl.d is {settings.get(key)!r}, want {value}"
