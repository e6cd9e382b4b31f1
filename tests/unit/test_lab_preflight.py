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




# ---- one lab per machine: a lab another checkout built is never adopted ------------------------------

@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    d = tmp_path / "run"
    monkeypatch.setattr(lab_mod, "RUN_DIR", d)
    return d


def _hosts(run_dir, *names):
    for name in names:
        (run_dir / "hosts" / name / "upper").mkdir(parents=True)


def test_a_fresh_machine_is_claimed_by_this_checkout(run_dir, tmp_path):
    repo = tmp_path / "here"
    repo.mkdir()
    lab_mod.claim(repo)
    assert (run_dir / "owner").read_text() == f"{repo.resolve()}\n"
    lab_mod.claim(repo)  # bringing its own lab up again is fine
    assert (run_dir / "owner").read_text() == f"{repo.resolve()}\n"


def test_a_lab_built_by_another_checkout_is_refused_and_left_alone(run_dir, tmp_path):
    other, repo = tmp_path / "other", tmp_path / "here"
    other.mkdir()
    repo.mkdir()
    _hosts(run_dir, "db01", "vault01")
    (run_dir / "owner").write_text(f"{other}\n")
    with pytest.raises(LabError) as err:
        lab_mod.claim(repo)
    msg = str(err.value)
    assert f"another checkout, {other} is on this machine" in msg
    assert "db01, vault01" in msg and "make lab-down" in msg
    assert (run_dir / "owner").read_text() == f"{other}\n"  # nothing taken over
    assert (run_dir / "hosts" / "vault01" / "upper").is_dir()


def test_an_owner_whose_checkout_is_gone_is_still_refused(run_dir, tmp_path):
    _hosts(run_dir, "db01")
    (run_dir / "owner").write_text(f"{tmp_path / 'deleted-clone'}\n")
    with pytest.raises(LabError, match=r"deleted-clone \(that directory is gone\)"):
        lab_mod.claim(tmp_path)


def test_hosts_left_without_an_owner_are_refused(run_dir, tmp_path):
    """A lab from before owners were recorded, or of unknown origin: not adopted either."""
    _hosts(run_dir, "mon01")
    with pytest.raises(LabError, match=r"did not record itself .*hosts: mon01"):
        lab_mod.claim(tmp_path)
    assert not (run_dir / "owner").exists()


def test_shared_services_without_hosts_are_not_a_lab(run_dir, tmp_path):
    """The package proxy's cache dir alone (a lab brought down halfway) holds no checkout's secrets."""
    (run_dir / "apt-cacher-ng").mkdir(parents=True)
    lab_mod.claim(tmp_path)
    assert (run_dir / "owner").read_text() == f"{tmp_path.resolve()}\n"
