"""The waivers file is strict: exact, known control ids and a reason, or the suite stops. (No host access.)"""

import compliance_core as core
import pytest

KNOWN = {"sysctl-30", "sshd-01"}


def _load(tmp_path, text):
    path = tmp_path / "waivers.yml"
    path.write_text(text)
    return core.load_waivers(path, KNOWN)


def test_the_shipped_waivers_load():
    core.load_controls()
    waivers = core.load_waivers(core.WAIVERS, core.CONTROLS)
    assert all(w.reason for w in waivers)


@pytest.mark.parametrize("text, message", [
    ("waivers: [{control: sysctl-30}]", "needs a `reason`"),
    ("waivers: [{control: sysctl-30, reason: ''}]", "needs a `reason`"),
    ("waivers: [{control: 'sysctl-*', reason: 'a pattern is never allowed'}]", "no patterns"),
    ("waivers: [{control: sysctl-99, reason: 'this control does not exist'}]", "unknown control"),
    ("waivers: [{control: sysctl-30, reason: 'some long reason', hots: [a]}]", "unknown key"),
    ("waivers: [{control: sysctl-30, reason: 'some long reason', container: maybe}]", "true or false"),
    ("- sysctl-30", "expected a mapping"),
])
def test_bad_waivers_are_errors(tmp_path, text, message):
    with pytest.raises(core.WaiverError, match=message.replace("*", r"\*")):
        _load(tmp_path, text)


def test_matching_is_exact(tmp_path):
    (waiver,) = _load(tmp_path, "waivers: [{control: sysctl-30, env: lab, container: true, "
                                "reason: 'kernel setting of a container host'}]")
    lab_container = core.Facts(name="db01", env="lab", data={"container": "systemd-nspawn"})
    prod_vm = core.Facts(name="db01", env="prod", data={"container": ""})
    lab_vm = core.Facts(name="db01", env="lab", data={"container": ""})
    assert waiver.matches("sysctl-30", lab_container)
    assert not waiver.matches("sshd-01", lab_container)
    assert not waiver.matches("sysctl-30", prod_vm)
    assert not waiver.matches("sysctl-30", lab_vm)
