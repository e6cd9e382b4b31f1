"""The SSH client drop-in: rendered from the role defaults, parsed by the real `ssh -G` (OpenSSH's own check,
offline), and the compliance suite's client controls agree with what ssh makes of it."""

import shutil
import subprocess

import compliance_core as core  # noqa: E402
import pytest
from hardening_templates import render, role_vars

SSH = shutil.which("ssh")
needs_ssh = pytest.mark.skipif(SSH is None, reason="needs the OpenSSH client (ssh -G)")


def _effective(tmp_path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "client.conf"
    path.write_text(text)
    return subprocess.run([SSH, "-G", "-F", str(path), "backup01.invalid"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)


def _client_controls() -> dict[str, core.Control]:
    core.load_controls()
    return {cid: c for cid, c in core.CONTROLS.items()
            if (cid.startswith("ssh-") and cid != "ssh-01") or cid in ("rampart-ssh-13", "rampart-ssh-14")}


@needs_ssh
def test_the_drop_in_parses_and_passes_every_client_control(tmp_path):
    result = _effective(tmp_path, render("hardening", "ssh_client.conf.j2"))
    assert result.returncode == 0, result.stderr
    facts = core.Facts(name="db01", env="prod", data={"ssh_client": {"rc": 0, "out": result.stdout, "err": ""}})
    controls = _client_controls()
    assert len(controls) >= 17
    for control in controls.values():
        control.check(facts)


@needs_ssh
def test_without_the_drop_in_the_client_controls_fail(tmp_path):
    result = _effective(tmp_path, "# Debian's defaults only\n")
    facts = core.Facts(name="db01", env="prod", data={"ssh_client": {"rc": 0, "out": result.stdout, "err": ""}})
    failing = set()
    for cid, control in _client_controls().items():
        try:
            control.check(facts)
        except AssertionError:
            failing.add(cid)
    # OpenSSH's defaults offer CBC/CTR ciphers, NIST curves, SHA-1 MACs, GSSAPI off, no strict checking.
    assert {"ssh-02", "ssh-06", "ssh-07", "ssh-08", "ssh-09", "ssh-10", "rampart-ssh-13", "rampart-ssh-14"} <= failing


@needs_ssh
def test_a_bad_option_fails_validation(tmp_path):
    result = _effective(tmp_path, render("hardening", "ssh_client.conf.j2") + "ForwardAgnet no\n")
    assert result.returncode != 0 and "Bad configuration option" in result.stderr


def test_an_ed25519_host_key_and_the_servers_algorithms_are_accepted():
    v = role_vars("hardening")
    assert "ssh-ed25519" in v["hardening_ssh_client_host_key_algorithms"]
    for client, server in (("ciphers", "ciphers"), ("kex", "kex"), ("macs", "macs")):
        assert set(v[f"hardening_ssh_client_{client}"]) & set(v[f"hardening_ssh_{server}"])


def test_nothing_is_forwarded():
    text = render("hardening", "ssh_client.conf.j2")
    for line in ("ForwardAgent no", "ForwardX11 no", "StrictHostKeyChecking yes", "HashKnownHosts yes"):
        assert f"\n{line}\n" in text
