"""plugins/modules/rampart_packages: dpkg-query's view in package_facts' shape (what the apt guards read)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from support.plugins import load_plugin, run_ansible

rampart_missing_packages = load_plugin("plugins/filter/packages.py").rampart_missing_packages
parse = load_plugin("plugins/modules/rampart_packages.py").parse

SAMPLE = (
    "ii \tnftables\t1.0.6-2+deb12u2\tamd64\n"
    "rc \told-daemon\t2.0-1\tamd64\n"  # removed, configuration kept: not installed
    "ii \tlibc6\t2.36-9+deb12u10\tamd64\n"
    "ii \tlibc6\t2.36-9+deb12u10\ti386\n"  # multiarch: two entries for one name
    "hi \tchrony\t4.3-2+deb12u1\tamd64\n"  # held, installed
    "un \tnever-installed\t\t\n"
    "garbage line\n"
)


def test_only_installed_packages_in_package_facts_shape():
    got = parse(SAMPLE)
    assert sorted(got) == ["chrony", "libc6", "nftables"]
    assert got["nftables"] == [{"name": "nftables", "version": "1.0.6-2+deb12u2", "arch": "amd64", "source": "apt"}]
    assert [e["arch"] for e in got["libc6"]] == ["amd64", "i386"]
    assert rampart_missing_packages(["nftables=1.0.6-2+deb12u2", "chrony", "old-daemon", "nftables=9"], got) == [
        "old-daemon",
        "nftables=9",
    ]


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs a Debian controller")
def test_the_module_agrees_with_dpkg_on_this_machine():
    """Run for real (ansible's localhost, read-only): every package dpkg calls installed, with its version."""
    rc, tasks = run_ansible("-m", "rampart_packages")
    result = next(iter(tasks.values()))
    assert rc == 0, result
    packages = result["ansible_facts"]["packages"]
    dpkg = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package} ${Version}\n"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    installed = {(f[1], f[2]) for f in (line.split() for line in dpkg) if len(f) == 3 and f[0][1] == "i"}
    assert installed and {(n, e["version"]) for n, entries in packages.items() for e in entries} == installed
    assert result["changed"] is False
