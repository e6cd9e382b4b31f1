"""Render every monitoring role's templates with sample host variables (the per-host view's shape) through
ansible-playbook on localhost (connection: local, templates into a temp dir only) and run the validators the
roles use: promtool check config, amtool check-config, blackbox_exporter --config.check, systemd-analyze verify.
Loki, Alloy and Grafana cannot be installed here, so their own validators are skipped with that reason and
their configs get structural checks instead."""

# ruff: noqa: E501 - the embedded playbook and the sample topology read best unwrapped

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The virtualenv running the tests (not a fixed checkout path: CI runs from a clean clone anywhere).
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
if not ANSIBLE_PLAYBOOK.exists():
    ANSIBLE_PLAYBOOK = Path(shutil.which("ansible-playbook") or "ansible-playbook")


def view(name, zone, roles, mgmt, zone_addr, listens, connects=None, tun=False):
    return {"rampart_host": {
        "name": name, "fqdn": f"{name}.lab.rampart.internal", "zone": zone, "roles": roles, "platform": True,
        "external": False, "gateway": False, "addresses": {zone: zone_addr, "mgmt": mgmt},
        "management_address": mgmt, "access_address": mgmt, "controller_address": "10.77.10.1",
        "apt_proxy_url": None, "time_servers": ["10.77.10.1"], "needs": {"memlock": False, "tun": tun},
        "listens": listens, "clients": {}, "connects": connects or {}}}


def ne(addr):
    return {"node_exporter": {"address": addr, "port": 9100, "proto": "tcp", "plane": "mgmt"}}


HOSTS = {
    "mon01": view("mon01", "monitoring", ["prometheus", "alertmanager", "loki", "grafana"], "10.77.10.33",
                  "10.77.50.2", {
                      **ne("10.77.10.33"),
                      "prometheus": {"address": "10.77.10.33", "port": 9090, "proto": "tcp", "plane": "mgmt"},
                      "alertmanager": {"address": "10.77.10.33", "port": 9093, "proto": "tcp", "plane": "mgmt"},
                      "grafana": {"address": "10.77.10.33", "port": 3000, "proto": "tcp", "plane": "mgmt"},
                      "loki": {"address": "10.77.50.2", "port": 3100, "proto": "tcp", "plane": "zone"},
                      "journal_remote": {"address": "10.77.50.2", "port": 19532, "proto": "tcp", "plane": "zone"}},
                  {"alert_receiver": [{"host": "controller", "address": "10.77.10.1", "port": 9095, "proto": "tcp"}],
                   "journal_remote": [{"host": "mon01", "address": "10.77.50.2", "port": 19532, "proto": "tcp"}],
                   "loki": [{"host": "mon01", "address": "10.77.50.2", "port": 3100, "proto": "tcp"}]}),
    "bot01": view("bot01", "trading", ["bot"], "10.77.10.50", "10.77.20.57", {
        **ne("10.77.10.50"), "bot_metrics": {"address": "10.77.10.50", "port": 9108, "proto": "tcp", "plane": "mgmt"}},
        {"journal_remote": [{"host": "mon01", "address": "10.77.50.2", "port": 19532, "proto": "tcp"}],
         "loki": [{"host": "mon01", "address": "10.77.50.2", "port": 3100, "proto": "tcp"}]}),
    "vault01": view("vault01", "secrets", ["vault"], "10.77.10.42", "10.77.40.2", {
        **ne("10.77.10.42"), "vault": {"address": "10.77.40.2", "port": 8200, "proto": "tcp", "plane": "zone"}}),
    "gateway": view("gateway", "edge", ["router", "wireguard_hub"], "10.77.10.2", "10.77.1.2", ne("10.77.10.2"),
                    tun=True),
}


def target(host, port, role, zone):
    return {"target": f"{HOSTS[host]['rampart_host']['management_address']}:{port}",
            "labels": {"host": host, "zone": zone, "role": role}}


ALL_VARS = {
    "rampart_environment": "lab",
    "rampart_domain": "lab.rampart.internal",
    "rampart_services": {
        "node_exporter": {"port": 9100, "proto": "tcp", "plane": "mgmt", "hosts": sorted(HOSTS)},
        "bot_metrics": {"port": 9108, "proto": "tcp", "plane": "mgmt", "hosts": ["bot01"]},
        "vault": {"port": 8200, "proto": "tcp", "plane": "zone", "hosts": ["vault01"]},
        "alertmanager": {"port": 9093, "proto": "tcp", "plane": "mgmt", "hosts": ["mon01"]},
        "journal_remote": {"port": 19532, "proto": "tcp", "plane": "zone", "hosts": ["mon01"]},
    },
    "rampart_scrape_targets": {
        "node_exporter": [target("bot01", 9100, "bot", "trading"), target("gateway", 9100, "router", "edge"),
                          target("mon01", 9100, "prometheus", "monitoring"),
                          target("vault01", 9100, "vault", "secrets")],
        "bot_metrics": [target("bot01", 9108, "bot", "trading")],
    },
}

PLAYBOOK = """
- name: Render the monitoring roles' templates and validate them
  hosts: all
  gather_facts: false
  vars:
    out: "{{ render_dir }}/{{ inventory_hostname }}"
    repo: "{{ repo_root }}"
  # The roles' defaults, at the same low precedence they have in a role.
  vars_files:
    - "{{ repo_root }}/roles/prometheus/defaults/main.yml"
    - "{{ repo_root }}/roles/alertmanager/defaults/main.yml"
    - "{{ repo_root }}/roles/node_exporter/defaults/main.yml"
    - "{{ repo_root }}/roles/blackbox_exporter/defaults/main.yml"
    - "{{ repo_root }}/roles/netmetrics/defaults/main.yml"
    - "{{ repo_root }}/roles/journal_remote/defaults/main.yml"
    - "{{ repo_root }}/roles/journal_upload/defaults/main.yml"
    - "{{ repo_root }}/roles/loki/defaults/main.yml"
    - "{{ repo_root }}/roles/alloy/defaults/main.yml"
    - "{{ repo_root }}/roles/grafana/defaults/main.yml"
  tasks:
    - name: Output directories
      ansible.builtin.file: {path: "{{ out }}/rules", state: directory, mode: "0755"}
    - name: node_exporter and netmetrics (every host)
      ansible.builtin.template: {src: "{{ repo }}/roles/{{ item.r }}/templates/{{ item.t }}", dest: "{{ out }}/{{ item.d }}",
                                 mode: "0644"}
      loop:
        - {r: node_exporter, t: node_exporter.default.j2, d: node_exporter.default}
        - {r: netmetrics, t: rampart-netmetrics.service.j2, d: rampart-netmetrics.service}
        - {r: netmetrics, t: rampart-netmetrics.timer.j2, d: rampart-netmetrics.timer}
    - name: journal_upload (every host with a flow to the collector)
      ansible.builtin.template: {src: "{{ repo }}/roles/journal_upload/templates/journal-upload.conf.j2",
                                 dest: "{{ out }}/journal-upload.conf", mode: "0644"}
      when: rampart_host.connects.journal_remote is defined
    - name: Alloy pipeline
      ansible.builtin.template: {src: "{{ repo }}/roles/alloy/templates/config.alloy.j2", dest: "{{ out }}/config.alloy",
                                 mode: "0644"}
      when: rampart_host.connects.loki is defined
    - name: Monitoring host only
      when: inventory_hostname == 'mon01'
      vars:
        prometheus_config_dir: "{{ out }}"
        prometheus_rules_src: "{{ repo }}/monitoring/prometheus/rules"
        alertmanager_routing_file: "{{ repo }}/monitoring/alertmanager/routing.yml"
        blackbox_exporter_ca_file: "{{ ca_file }}"
      block:
        - name: Scrape targets are all known hosts
          ansible.builtin.include_role: {name: "{{ repo }}/roles/prometheus", tasks_from: targets}
        - name: Rules (promtool check rules)
          ansible.builtin.copy: {src: "{{ item }}", dest: "{{ out }}/rules/", mode: "0644",
                                 validate: "promtool check rules %s"}
          loop: "{{ query('ansible.builtin.fileglob', prometheus_rules_src ~ '/*.rules.yml') }}"
        - name: prometheus.yml (promtool check config)
          ansible.builtin.template: {src: "{{ repo }}/roles/prometheus/templates/prometheus.yml.j2",
                                     dest: "{{ out }}/prometheus.yml", mode: "0644", validate: "promtool check config %s"}
        - name: alertmanager.yml (amtool check-config)
          ansible.builtin.template: {src: "{{ repo }}/roles/alertmanager/templates/alertmanager.yml.j2",
                                     dest: "{{ out }}/alertmanager.yml", mode: "0644", validate: "amtool check-config %s"}
        - name: alertmanager.yml with production e-mail (amtool check-config)
          ansible.builtin.template: {src: "{{ repo }}/roles/alertmanager/templates/alertmanager.yml.j2",
                                     dest: "{{ out }}/alertmanager-email.yml", mode: "0644",
                                     validate: "amtool check-config %s"}
          vars:
            alertmanager_email_to: oncall@example.org
            alertmanager_email_from: alertmanager@example.org
            alertmanager_email_smarthost: smtp.example.org:587
            alertmanager_email_username: alertmanager
            alertmanager_email_password: not-a-real-password
            alertmanager_webhook_from_topology: false
        - name: blackbox.yml (blackbox_exporter --config.check)
          ansible.builtin.template: {src: "{{ repo }}/roles/blackbox_exporter/templates/blackbox.yml.j2",
                                     dest: "{{ out }}/blackbox.yml", mode: "0644",
                                     validate: "prometheus-blackbox-exporter --config.check --config.file=%s"}
        - name: Other configs (structure checked by the test)
          ansible.builtin.template: {src: "{{ repo }}/roles/{{ item.r }}/templates/{{ item.t }}",
                                     dest: "{{ out }}/{{ item.d }}", mode: "0644"}
          loop:
            - {r: prometheus, t: prometheus.default.j2, d: prometheus.default}
            - {r: alertmanager, t: alertmanager.default.j2, d: alertmanager.default}
            - {r: journal_remote, t: journal-remote.conf.j2, d: journal-remote.conf}
            - {r: journal_remote, t: socket-override.conf.j2, d: journal-remote-socket.conf}
            - {r: journal_remote, t: rampart-journal-vacuum.service.j2, d: rampart-journal-vacuum.service}
            - {r: journal_remote, t: rampart-journal-vacuum.timer.j2, d: rampart-journal-vacuum.timer}
            - {r: loki, t: loki.yml.j2, d: loki.yml}
            - {r: grafana, t: grafana.ini.j2, d: grafana.ini}
            - {r: grafana, t: datasources.yml.j2, d: datasources.yml}
            - {r: grafana, t: dashboards.yml.j2, d: dashboards.yml}
"""


def _run_playbook(tmp: Path, all_vars: dict) -> subprocess.CompletedProcess[str]:
    inv = {"all": {"hosts": {h: {**v, "ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
                             for h, v in HOSTS.items()},
                   "vars": all_vars}}
    (tmp / "inventory.yml").write_text(yaml.safe_dump(inv))
    (tmp / "render.yml").write_text(PLAYBOOK)
    ca = tmp / "ca.crt"
    if not ca.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(tmp / "ca.key"), "-out", str(ca), "-days", "2", "-subj", "/CN=test CA"],
                       check=True, capture_output=True)
    env = {**os.environ, "ANSIBLE_CONFIG": str(tmp / "none.cfg"), "ANSIBLE_STDOUT_CALLBACK": "default",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_FORKS": "4"}
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(tmp / "inventory.yml"), str(tmp / "render.yml"),
         "-e", json.dumps({"render_dir": str(tmp / "out"), "repo_root": str(ROOT), "ca_file": str(ca)})],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    for tool in ("promtool", "amtool", "prometheus-blackbox-exporter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install prometheus prometheus-alertmanager "
                        "prometheus-blackbox-exporter)")
    tmp = tmp_path_factory.mktemp("render")
    done = _run_playbook(tmp, ALL_VARS)
    assert done.returncode == 0, f"rendering/validation failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    return tmp / "out"


def test_prometheus_scrapes_exactly_the_topology_targets(rendered: Path):
    cfg = yaml.safe_load((rendered / "mon01" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    for job, targets in ALL_VARS["rampart_scrape_targets"].items():
        got = [(t, sc["labels"]) for sc in jobs[job]["static_configs"] for t in sc["targets"]]
        assert got == [(t["target"], t["labels"]) for t in targets], job
    assert set(jobs) == {*ALL_VARS["rampart_scrape_targets"], "blackbox"}
    probes = {sc["labels"]["probe"]: sc["targets"][0] for sc in jobs["blackbox"]["static_configs"]}
    assert probes == {"bot_readyz": "http://10.77.10.50:9108/readyz",
                      "vault_health": "https://10.77.40.2:8200/v1/sys/health",
                      "vault_tls": "10.77.40.2:8200", "journal_remote_tls": "10.77.50.2:19532"}
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["10.77.10.33:9093"]
    assert cfg["global"]["external_labels"] == {"environment": "lab"}
    args = (rendered / "mon01" / "prometheus.default").read_text()
    assert "--web.listen-address=10.77.10.33:9090" in args and "--storage.tsdb.retention.time=30d" in args


def test_alertmanager_routes_by_severity(rendered: Path):
    cfg = rendered / "mon01" / "alertmanager.yml"
    for labels, receiver in [(["severity=critical", "alertname=BotDown"], "critical"),
                             (["severity=warning", "alertname=DiskFillingUp"], "warning"),
                             (["alertname=Other"], "default")]:
        done = subprocess.run(["amtool", "config", "routes", "test", f"--config.file={cfg}", *labels],
                              capture_output=True, text=True, timeout=30)
        assert done.stdout.strip() == receiver, (labels, done.stdout, done.stderr)
    doc = yaml.safe_load(cfg.read_text())
    hooks = {r["name"]: [w["url"] for w in r.get("webhook_configs", [])] for r in doc["receivers"]}
    assert hooks == {name: ["http://10.77.10.1:9095/alerts"] for name in ("critical", "warning", "default")}
    inhibit = doc["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['alertname="HostDown"'] and inhibit["equal"] == ["host"]
    email = yaml.safe_load((rendered / "mon01" / "alertmanager-email.yml").read_text())
    assert {r["name"]: bool(r.get("email_configs")) for r in email["receivers"]} == {
        "critical": True, "warning": True, "default": False}
    assert "--web.listen-address=10.77.10.33:9093" in (rendered / "mon01" / "alertmanager.default").read_text()


def test_exporters_listen_on_the_declared_addresses(rendered: Path):
    for host, v in HOSTS.items():
        args = (rendered / host / "node_exporter.default").read_text()
        assert f"--web.listen-address={v['rampart_host']['listens']['node_exporter']['address']}:9100" in args
        assert "--collector.textfile.directory=/var/lib/prometheus/node-exporter" in args
    assert "--wireguard" in (rendered / "gateway" / "rampart-netmetrics.service").read_text()
    assert "--wireguard" not in (rendered / "bot01" / "rampart-netmetrics.service").read_text()


def test_units_pass_systemd_analyze(rendered: Path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not available")
    units = [rendered / "gateway" / "rampart-netmetrics.service", rendered / "gateway" / "rampart-netmetrics.timer",
             rendered / "mon01" / "rampart-journal-vacuum.service", rendered / "mon01" / "rampart-journal-vacuum.timer"]
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)],
                          capture_output=True, text=True, timeout=60)
    problems = [line for line in done.stderr.splitlines() if "rampart" in line]
    assert not problems, "\n".join(problems)


def test_journal_paths_come_from_the_topology(rendered: Path):
    assert "URL=https://10.77.50.2:19532" in (rendered / "bot01" / "journal-upload.conf").read_text()
    assert "ListenStream=10.77.50.2:19532" in (rendered / "mon01" / "journal-remote-socket.conf").read_text()
    assert "TrustedCertificateFile=/etc/rampart/pki/ca.crt" in (rendered / "mon01" / "journal-remote.conf").read_text()
    assert not (rendered / "vault01" / "journal-upload.conf").exists()  # no declared flow, nothing rendered


def test_loki_alloy_grafana_configs_render(rendered: Path):
    loki = yaml.safe_load((rendered / "mon01" / "loki.yml").read_text())
    assert loki["server"]["http_listen_address"] == "10.77.50.2"
    assert loki["compactor"]["retention_enabled"] is True and loki["limits_config"]["retention_period"] == "744h"
    alloy = (rendered / "bot01" / "config.alloy").read_text()
    assert 'url = "http://10.77.50.2:3100/loki/api/v1/push"' in alloy and 'host = "bot01"' in alloy
    assert alloy.count("{") == alloy.count("}")
    ini = (rendered / "mon01" / "grafana.ini").read_text()
    assert "http_addr = 10.77.10.33" in ini and "[auth.anonymous]\nenabled = false" in ini
    ds = yaml.safe_load((rendered / "mon01" / "datasources.yml").read_text())
    uids = {d["uid"] for d in ds["datasources"]}
    for board in sorted((ROOT / "monitoring" / "dashboards").glob("*.json")):
        used = {p["datasource"]["uid"] for p in json.loads(board.read_text())["panels"] if p.get("datasource")}
        assert used <= uids, f"{board.name}: panels use datasource uids {used - uids} that are not provisioned"


def test_grafana_labs_binaries_are_not_run_here():
    missing = [b for b in ("loki", "alloy", "grafana-server") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"live checks skipped: {', '.join(missing)} not installable on this machine (no registry it "
                    "reaches has Grafana Labs' software), so `loki -verify-config`, `alloy fmt` and a Grafana "
                    "provisioning run were not executed; the configs got structural checks instead")


def test_a_scrape_target_absent_from_the_topology_is_refused(tmp_path: Path):
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed")
    bad = json.loads(json.dumps(ALL_VARS))
    bad["rampart_scrape_targets"]["bot_metrics"].append(
        {"target": "10.77.10.99:9108", "labels": {"host": "rogue01", "zone": "trading", "role": "bot"}})
    done = _run_playbook(tmp_path, bad)
    assert done.returncode != 0
    assert "target 10.77.10.99:9108 names host rogue01, which is not in the topology's inventory" in done.stdout
