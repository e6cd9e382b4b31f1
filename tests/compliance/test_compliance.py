"""One test per (host, control): the control's id is in the test id (`bot01:sshd-01`)."""

import pytest


def test_control(compliance, compliance_case):
    host, cid = compliance_case
    ctl = compliance.controls[cid]
    facts = compliance.facts(host)
    if ctl.applies is not None and not ctl.applies(facts):
        pytest.skip(f"{cid} does not apply to {host}")
    waiver = next((w for w in compliance.waivers if w.matches(cid, facts)), None)
    if waiver is not None:
        pytest.skip(f"WAIVED {cid} on {host}: {waiver.reason}")
    ctl.check(facts)  # raises AssertionError: "<what is wrong>" (the title is in the docstring below)
