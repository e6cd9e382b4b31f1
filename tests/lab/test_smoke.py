"""Smoke checks on every lab host after the converge: identity, network, systemd, time, packages."""

import time

from rampart.lab import PROXY_NAMES
from rampart.lab.files import RUN_DIR

ACNG_LOGS = [RUN_DIR / name / "log" / "apt-cacher.log" for name in PROXY_NAMES]


def test_hostname(host, lab_host):
    assert host.check_output("hostname") == lab_host


def test_addresses_match_the_topology(host, lab_host, topo):
    have = set(host.check_output("ip -4 -o addr show | awk '{print $4}'").split())
    for zone, addr in topo.hosts[lab_host].addresses.items():
        if topo.zones[zone].vpn:
            continue  # the tunnel address appears once WireGuard is up
        assert f"{addr}/{topo.zones[zone].cidr.prefixlen}" in have, f"{lab_host} lacks its {zone} address"


def test_systemd_running_with_no_failed_units(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    failed = host.check_output("systemctl --failed --no-legend --plain")
    assert (state, failed) == ("running", ""), f"state={state} failed units:\n{failed}"


def test_time(host, lab_host):
    """Lab hosts share the controller's kernel clock (no CAP_SYS_TIME): verify that clock agrees with the
    controller's, that chrony is configured, and that systemd skipped (not failed) it for that reason.
    On a host where chrony can run, verify it is tracking instead."""
    remote_now = float(host.check_output("date +%s.%N"))
    assert abs(remote_now - time.time()) < 2.0
    assert host.file("/etc/chrony/chrony.conf").contains("^server ")
    assert host.service("chrony").is_enabled
    cond = host.check_output("systemctl show chrony -p ConditionResult --value")
    if cond == "no":
        print(f"{lab_host}: verified shared kernel clock; chrony configured, skipped for lack of CAP_SYS_TIME")
        status = host.check_output("grep CapBnd /proc/1/status").split()[1]
        assert not int(status, 16) & (1 << 25), "chrony skipped although the host may set the clock"
    else:
        assert host.run("chronyc -n tracking").rc == 0
        print(f"{lab_host}: chrony running and tracking")


def test_apt_goes_through_the_proxy(host, lab_host, topo):
    conf = host.file("/etc/apt/apt.conf.d/01rampart-proxy").content_string
    view = topo.host_view(lab_host)
    want = view.apt_proxy_url or f"http://{view.controller_address}:{topo.services['apt_proxy'].port}"
    assert f'"{want}"' in conf
    host.check_output("apt-get -q update")
    clients = {line.split("|")[3] for log in ACNG_LOGS if log.exists()
               for line in log.read_text().splitlines() if line.count("|") >= 4}
    mine = {str(a) for a in topo.hosts[lab_host].addresses.values()}
    assert clients & mine, f"no request from {lab_host} ({', '.join(sorted(mine))}) in the proxy's log"


def test_journal_is_persistent(host):
    assert host.file("/var/log/journal").is_directory
    assert host.file("/etc/systemd/journald.conf.d/rampart.conf").contains("^Storage=persistent")


def test_unattended_upgrades_configured(host):
    assert host.package("unattended-upgrades").is_installed
    assert host.file("/etc/apt/apt.conf.d/20auto-upgrades").contains('Unattended-Upgrade "1"')
