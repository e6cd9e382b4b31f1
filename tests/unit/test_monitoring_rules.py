"""monitoring/prometheus: rule syntax (promtool check rules), every alert's unit tests (promtool test rules),
and that every alert has a case where it fires and one where it stays silent."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from rampart import monitoring_checks as checks

ROOT = Path(__file__).resolve().parents[2]

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")

REQUIRED_ALERTS = {
    "BotDown", "BotNotReady", "MarketDataStale", "OrdersUnknownTooLong", "TradingHalted", "DailyLossNearLimit",
    "HostDown", "DiskFillingUp", "BackupStale", "BackupFailed", "CertificateExpiringSoon",
    "WireGuardNoRecentHandshake", "FirewallDropSpike", "VaultSealed", "PostgresDown", "ScrapeTargetDown",
}


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_there_are_rule_and_test_files():
    assert checks.rule_files(), "no monitoring/prometheus/rules/*.rules.yml"
    assert checks.test_files(), "no monitoring/prometheus/tests/*.test.yml"


def test_required_alerts_exist():
    missing = REQUIRED_ALERTS - set(checks.alerts(checks.rule_files()))
    assert not missing, f"monitoring/prometheus/rules: alerts missing: {', '.join(sorted(missing))}"


def test_every_alert_has_a_severity_and_a_summary():
    bad = [f"{p.name}: alert {r['alert']}: needs labels.severity critical|warning and annotations.summary"
           for p in checks.rule_files() for r in checks.load_rules(p) if "alert" in r
           and (r.get("labels", {}).get("severity") not in ("critical", "warning")
                or "summary" not in r.get("annotations", {}))]
    assert not bad, "\n".join(bad)


@needs_promtool
@pytest.mark.parametrize("path", checks.rule_files(), ids=lambda p: p.name)
def test_rule_file_is_valid(path: Path):
    done = _promtool("check", "rules", str(path))
    assert done.returncode == 0, f"{path.relative_to(ROOT)}: promtool check rules failed:\n{done.stdout}{done.stderr}"


@needs_promtool
@pytest.mark.parametrize("path", checks.test_files(), ids=lambda p: p.name)
def test_rule_unit_tests_pass(path: Path):
    done = _promtool("test", "rules", path.name, cwd=path.parent)
    assert done.returncode == 0, f"{path.relative_to(ROOT)}: promtool test rules failed:\n{done.stdout}{done.stderr}"


def test_every_alert_fires_and_stays_silent_in_a_unit_test():
    problems = checks.coverage_problems(checks.rule_files(), checks.test_files())
    assert not problems, "\n".join(problems)


def test_every_rule_file_is_under_test():
    tested = set()
    for path in checks.test_files():
        doc = checks.yaml.safe_load(path.read_text())
        tested.update((path.parent / f).resolve() for f in doc.get("rule_files", []))
    untested = [str(p.relative_to(ROOT)) for p in checks.rule_files() if p.resolve() not in tested]
    assert not untested, f"rule files no promtool test loads: {', '.join(untested)}"


# -- the checks catch bad input ------------------------------------------------------------------
@needs_promtool
def test_a_rule_syntax_error_is_reported_with_the_file(tmp_path: Path):
    bad = tmp_path / "broken.rules.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: up ==\n")
    done = _promtool("check", "rules", str(bad))
    assert done.returncode != 0
    assert "broken.rules.yml" in done.stdout + done.stderr


def test_an_alert_without_a_unit_test_is_named(tmp_path: Path):
    rules = tmp_path / "x.rules.yml"
    rules.write_text("groups:\n  - name: x\n    rules:\n      - alert: Lonely\n        expr: up == 0\n"
                     "      - alert: HalfTested\n        expr: up == 2\n")
    tests = tmp_path / "x.test.yml"
    tests.write_text("rule_files: [x.rules.yml]\ntests:\n  - input_series: []\n    alert_rule_test:\n"
                     "      - {eval_time: 0s, alertname: HalfTested, exp_alerts: []}\n")
    problems = checks.coverage_problems([rules], [tests])
    assert any("alert Lonely: no promtool test case expects it to fire" in p for p in problems)
    assert any("alert HalfTested: no promtool test case expects it to fire" in p for p in problems)
    assert not any("HalfTested: no promtool test case expects it to stay silent" in p for p in problems)


@pytest.mark.parametrize(("expr", "names"), [
    ('up{job="bot_metrics"} == 0', {"up"}),
    ("time() - rampart_backup_last_success_timestamp_seconds > 26 * 3600",
     {"rampart_backup_last_success_timestamp_seconds"}),
    ('sum by (host, le) (rate(a_bucket{x=~"y|z"}[5m] offset 1h)) / on(host) group_left(zone) b > 1e3 or c',
     {"a_bucket", "b", "c"}),
    ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))", {"h_bucket"}),
    ("-rampart_bot_pnl_quote >= ignoring(period) 0.8 * rampart:x:ratio unless absent(q)",
     {"rampart_bot_pnl_quote", "rampart:x:ratio", "q"}),
])
def test_metric_name_extraction(expr: str, names: set[str]):
    assert checks.metric_names(expr) == names
