"""The lab's preflight refuses clearly, before touching anything, when this machine cannot host it."""

import json
import subprocess
from pathlib import Path

import pytest
import rampart.lab as lab_mod
from rampart.lab import Lab, LabError
from rampart.topology import load

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab(tmp_path):
    return Lab(load(ROOT / "inventory" / "lab" / "topology.yml"), tmp_path)


def fake_routes(monkeypatch, routes):
    def run(*cmd, check=True, capture=True, **kw):
        assert cmd[:2] == ("ip", "-j"), f"preflight ran something unexpected: {cmd}"
        return subprocess.CompletedProcess(cmd, 0, json.dumps(routes), "")
    monkeypatch.setattr(lab_mod, "run", run)


def test_not_root_is_refused_with_the_way_forward(lab, monkeypatch):
    monkeypatch.setattr(lab_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match=r"needs root .*: run `sudo make lab`"):
        lab.preflight()


def test_missing_tools_name_their_packages(lab, monkeypatch):
    monkeypatch.setattr(lab_mod.os, "geteuid", lambda: 0)
    monkeypatch.setattr(lab_mod.shutil, "which", lambda tool: None if tool == "debootstrap" else "/bin/x")
    with pytest.raises(LabError, match=r"missing packages: debootstrap\. `make lab` installs them"):
        lab.preflight()


def test_a_route_owned_by_something_else_is_a_clash(lab, monkeypatch):
    fake_routes(monkeypatch, [{"dst": "10.77.30.0/24", "dev": "eth7"}, {"dst": "default", "dev": "eth0"}])
    with pytest.raises(LabError, match=r"zone data \(10\.77\.30\.0/24\) clashes with route 10\.77\.30\.0/24 on eth7"):
        lab._check_clashes()


def test_the_labs_own_routes_are_not_a_clash(lab, monkeypatch):
    fake_routes(monkeypatch, [{"dst": "10.77.10.0/24", "dev": "rl-mgmt"}, {"dst": "192.0.2.0/24", "dev": "eth0"}])
    lab._check_clashes()


