"""Compliance suite plumbing: which hosts, their facts (collected once, in parallel), waivers, report.

Lab:        .venv/bin/python -m pytest tests/compliance
Any other:  .venv/bin/python -m pytest tests/compliance --hosts=ansible://all \
                --ansible-inventory=inventory/prod [--topology=inventory/prod/topology.yml]
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import compliance_core as core
import pytest
import testinfra
from rampart.topology import load as load_topology
from support import lab

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_JUNIT = ROOT / "build" / "compliance.xml"
RESULTS: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))  # host -> outcome -> ids


def pytest_addoption(parser):
    group = parser.getgroup("compliance")
    group.addoption("--topology", help="topology.yml of the environment (default: the lab's, or "
                    "<ansible-inventory>/topology.yml)")
    group.addoption("--waivers", default=str(core.WAIVERS), help="waivers file (default: %(default)s)")
    group.addoption("--control", action="append", default=[], help="run only these control ids (repeatable)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Default JUnit file when only this suite runs (combined runs choose their own --junitxml).
    here = Path(__file__).resolve().parent
    only_this = config.args and all(Path(a.split("::")[0]).resolve().is_relative_to(here) for a in config.args)
    if getattr(config.option, "xmlpath", None) is None and not config.option.collectonly and only_this:
        DEFAULT_JUNIT.parent.mkdir(exist_ok=True)
        config.option.xmlpath = str(DEFAULT_JUNIT)


class Session:
    """The hosts under test, their topology-derived expectations and collected facts."""

    def __init__(self, config):
        self.config = config
        spec = config.getoption("hosts", None)
        if spec:
            inventory = config.getoption("ansible_inventory", None)
            topo_path = config.getoption("topology") or (Path(inventory) / "topology.yml" if inventory else None)
            if not topo_path or not Path(topo_path).exists():
                raise pytest.UsageError("compliance: pass --topology=<env>/topology.yml (needed for the expected "
                                        "listeners and SSH addresses)")
            self.topology = load_topology(topo_path)
            hosts = testinfra.get_hosts(
                spec.split(","), ssh_config=config.getoption("ssh_config", None),
                ssh_identity_file=config.getoption("ssh_identity_file", None),
                ansible_inventory=inventory, connection=config.getoption("connection", None), sudo=True)
            self.backends = {h.backend.get_hostname(): h for h in hosts}
        else:
            if not lab.running():
                raise pytest.UsageError("compliance: no --hosts given and no running lab (.lab/state.json)")
            self.topology = load_topology(config.getoption("topology")) if config.getoption("topology") \
                else lab.topology()
            self.backends = {name: lab.remote(name) for name in lab.hosts()}
        self.env = self.topology.name
        self.controls = core.load_controls()
        only = config.getoption("control")
        if unknown := set(only) - set(self.controls):
            raise pytest.UsageError(f"compliance: unknown control(s) {sorted(unknown)}")
        if only:
            self.controls = {cid: c for cid, c in self.controls.items() if cid in only}
        try:
            self.waivers = core.load_waivers(Path(config.getoption("waivers")), core.CONTROLS)
        except (core.WaiverError, OSError) as e:
            raise pytest.UsageError(f"compliance: {e}") from None
        self._facts: dict[str, core.Facts | Exception] | None = None
        self.collect_seconds = 0.0

    def names(self) -> list[str]:
        return sorted(self.backends)

    def facts(self, name: str) -> core.Facts:
        if self._facts is None:
            start = time.monotonic()
            with ThreadPoolExecutor(max_workers=16) as pool:
                futures = {n: pool.submit(self._collect, n) for n in self.names()}
            self._facts = {}
            for n, fut in futures.items():
                try:
                    self._facts[n] = fut.result()
                except Exception as e:  # noqa: BLE001 - reported per control, per host
                    self._facts[n] = e
            self.collect_seconds = time.monotonic() - start
        got = self._facts[name]
        if isinstance(got, Exception):
            raise got
        return got

    def _collect(self, name: str) -> core.Facts:
        before = time.time()
        data = core.collect(self.backends[name], name)
        data["_controller_window"] = (before, time.time())  # the remote clock was read inside this window
        topo = self.topology
        th = topo.hosts.get(name)
        facts = core.Facts(name=name, env=self.env, data=data)
        if th is not None:
            facts.addresses = {z: str(a) for z, a in th.addresses.items()}
            facts.roles = tuple(th.roles)
            facts.topology = topo
            facts.zone = th.zone
            facts.access_address = str(topo.access_address(name))
            facts.router = topo.host_view(name).gateway
            facts.expected_listen = {(e.proto, e.port, str(e.address)) for e in topo.endpoints() if e.host == name}
        return facts


def pytest_generate_tests(metafunc):
    if "compliance_case" not in metafunc.fixturenames:
        return
    session = _session(metafunc.config)
    cases = [(h, cid) for h in session.names() for cid in sorted(session.controls)]
    metafunc.parametrize("compliance_case", cases, ids=[f"{h}:{cid}" for h, cid in cases])


def _session(config) -> Session:
    if not hasattr(config, "_compliance"):
        config._compliance = Session(config)
    return config._compliance


@pytest.fixture(scope="session")
def compliance(request) -> Session:
    return _session(request.config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    case = getattr(item, "callspec", None) and item.callspec.params.get("compliance_case")
    if not case or (report.when != "call" and not (report.when == "setup" and report.outcome != "passed")):
        return
    host, cid = case
    waived = report.skipped and "WAIVED" in str(report.longrepr)
    state = "waived" if waived else ("skipped" if report.skipped else report.outcome)
    RESULTS[host][state].append(cid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    session = _session(config)
    tr = terminalreporter
    tr.section("compliance")
    header = f"{'host':<12} {'passed':>7} {'failed':>7} {'waived':>7} {'n/a':>5}"
    tr.write_line(header)
    tr.write_line("-" * len(header))
    totals = defaultdict(int)
    for host in sorted(RESULTS):
        row = RESULTS[host]
        for k in ("passed", "failed", "waived", "skipped"):
            totals[k] += len(row[k])
        tr.write_line(f"{host:<12} {len(row['passed']):>7} {len(row['failed']):>7} {len(row['waived']):>7} "
                      f"{len(row['skipped']):>5}")
    tr.write_line("-" * len(header))
    tr.write_line(f"{'total':<12} {totals['passed']:>7} {totals['failed']:>7} {totals['waived']:>7} "
                  f"{totals['skipped']:>5}")
    tr.write_line(f"{len(session.controls)} controls x {len(RESULTS)} hosts; environment {session.env}; "
                  f"facts collected in {session.collect_seconds:.1f}s")
    failed = {h: r["failed"] for h, r in RESULTS.items() if r["failed"]}
    for host, ids in sorted(failed.items()):
        tr.write_line(f"FAILED {host}: {', '.join(sorted(ids))}", red=True)
    if config.option.xmlpath:
        tr.write_line(f"JUnit XML: {config.option.xmlpath}")
