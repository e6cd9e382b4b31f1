"""The controller: it holds the SSH key to every host, the platform CA and the VPN keys, so it is checked too.

Where the controller is the machine running the lab, this suite does not touch it (no hardening or firewall is
applied to the machine you run `make test` on); it checks what it can from the outside and says what it
skipped. Against a real inventory the same checks read the repository's own secret stores."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from rampart.lab import PROXY_NAMES
from rampart.lab.files import LAB_DIR, RUN_DIR
from rampart.topology import load

ROOT = Path(__file__).resolve().parents[2]
ENVS = sorted(p.parent.name for p in (ROOT / "inventory").glob("*/topology.yml"))


def _private(path: Path, most: int) -> list[str]:
    """Files under ``path`` that someone other than their owner can read: a mode beyond ``most`` with every
    directory on the way (inside the store) open to others (a file in an 0700 directory is private)."""
    bad = []
    files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()] if path.is_dir() else [path]
    for f in files:
        mode = stat.S_IMODE(f.stat().st_mode)
        if not mode & ~most & 0o077:
            continue
        ancestors = [a for a in f.parents if a == path or path in a.parents]
        if all(stat.S_IMODE(a.stat().st_mode) & 0o011 for a in ancestors):
            bad.append(f"{f.relative_to(ROOT)} is {mode:o} and reachable")
    return bad


@pytest.mark.parametrize("env", ENVS)
def test_the_controller_has_no_leg_outside_the_platform(env):
    """A controller in a real external zone is refused by the model; the lab's simulated internet is the one
    exception (the controller is its upstream)."""
    topo = load(ROOT / "inventory" / env / "topology.yml")
    outside = [z for z in topo.controller.addresses if topo.zones[z].external and not topo.zones[z].simulated]
    assert not outside, f"{env}: the controller has a leg in external zone(s) {outside}"


def test_controller_key_stores_are_private():
    stores = [ROOT / LAB_DIR / "ssh", ROOT / ".secrets", ROOT / "output" / "wireguard"]
    present = [s for s in stores if s.exists()]
    if not present:
        pytest.skip("no key store on this controller yet (no lab, no secrets)")
    bad = [b for s in present for b in _private(s, 0o600)]
    print(f"\ncontroller key stores checked: {', '.join(str(s.relative_to(ROOT)) for s in present)}; "
          "NOT checked (this suite does not touch the machine running the lab): its hardening, firewall and sshd")
    assert not bad, "controller secrets readable beyond their owner:\n" + "\n".join(bad)


def test_lab_package_proxies_serve_only_the_mirror_on_their_own_addresses():
    confs = {name: RUN_DIR / name / "acng.conf" for name in PROXY_NAMES if (RUN_DIR / name / "acng.conf").exists()}
    if not confs:
        pytest.skip("no lab proxies running on this controller")
    from support import lab
    topo = lab.topology()
    ctl = topo.controller
    want = {
        PROXY_NAMES[0]: {str(e.address) for e in topo.endpoints() if e.service == "apt_proxy" and e.host == ctl.name},
        PROXY_NAMES[1]: {str(a) for z, a in ctl.addresses.items() if topo.zones[z].external},
    }
    for name, conf in confs.items():
        kv = dict(line.split(": ", 1) for line in conf.read_text().splitlines() if ": " in line)
        assert set(kv["BindAddress"].split()) == want[name], f"{name} binds {kv['BindAddress']}"
        assert kv.get("ForceManaged") == "1", f"{name} would fetch any URL"
        assert "PassThroughPattern" not in kv, f"{name} passes CONNECT through"
