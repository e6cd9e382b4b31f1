"""The filter that lets roles skip apt when package_facts shows their packages installed (issue 8)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from support.plugins import load_plugin

ROOT = Path(__file__).resolve().parents[2]
missing = load_plugin("plugins/filter/packages.py", "rampart_packages_filter").rampart_missing_packages

# The shape package_facts (manager: apt) gives.
INSTALLED = {
    "restic": [{"name": "restic", "version": "0.14.0-1+b5", "arch": "amd64", "source": "apt"}],
    "prometheus": [{"name": "prometheus", "version": "2.42.0+ds-5+deb12u1", "arch": "amd64", "source": "apt"}],
}


def test_names_and_pinned_versions_are_checked_against_the_facts():
    assert missing(["restic", "openssh-client"], INSTALLED) == ["openssh-client"]
    assert missing(["prometheus=2.42.0+ds-5+deb12u1"], INSTALLED) == []
    # A different installed version is missing: apt must move it to the pinned one.
    assert missing(["prometheus=2.42.0+ds-5"], INSTALLED) == ["prometheus=2.42.0+ds-5"]
    assert missing("restic", INSTALLED) == []


def test_without_facts_every_package_goes_to_apt():
    assert missing(["restic", "prometheus=1"], None) == ["restic", "prometheus=1"]


@pytest.mark.parametrize("specs", [[""], [3], {"restic": 1}])
def test_bad_package_lists_are_named(specs):
    with pytest.raises(AnsibleFilterError, match="expected package names"):
        missing(specs, INSTALLED)


def test_facts_that_are_not_package_facts_are_refused():
    with pytest.raises(AnsibleFilterError, match="package_facts"):
        missing(["restic"], ["restic"])
