"""Checks over monitoring/ content, shared by the fast-tier tests (tests/unit/test_monitoring*.py).

Pure functions: they read files and return problems as one-line messages naming the file and the rule or
panel, so a failing test says exactly what to fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2] / "monitoring"  # the repository's monitoring/ content
RULES_DIR = ROOT / "prometheus" / "rules"
TESTS_DIR = ROOT / "prometheus" / "tests"
DASHBOARDS_DIR = ROOT / "dashboards"

# Series Prometheus makes itself rather than scraping them.
SYNTHETIC = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped",
             "scrape_samples_post_metric_relabeling", "scrape_series_added"}

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and durations left out)."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub("", text)
    text = _BRACKETS.sub("", text)
    text = _GROUPING.sub("", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}


def rule_files(directory: Path = RULES_DIR) -> list[Path]:
    return sorted(directory.glob("*.rules.yml"))


def test_files(directory: Path = TESTS_DIR) -> list[Path]:
    return sorted(directory.glob("*.test.yml"))


def load_rules(path: Path) -> list[dict]:
    """Every rule of a rule file (with its group's name under '_group')."""
    doc = yaml.safe_load(path.read_text()) or {}
    rules = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            rules.append({**rule, "_group": group.get("name", "?")})
    return rules


def alerts(paths: Iterable[Path]) -> dict[str, Path]:
    return {r["alert"]: p for p in paths for r in load_rules(p) if "alert" in r}


def alert_test_coverage(tests: Iterable[Path]) -> dict[str, dict[str, bool]]:
    """alertname -> {'fires': a case expects it, 'silent': a case expects none of it} over promtool tests."""
    seen: dict[str, dict[str, bool]] = {}
    for path in tests:
        doc = yaml.safe_load(path.read_text()) or {}
        for case in doc.get("tests", []):
            for t in case.get("alert_rule_test", []):
                entry = seen.setdefault(t["alertname"], {"fires": False, "silent": False})
                if t.get("exp_alerts"):
                    entry["fires"] = True
                else:
                    entry["silent"] = True
    return seen


def coverage_problems(rules: Iterable[Path], tests: Iterable[Path]) -> list[str]:
    cov = alert_test_coverage(tests)
    problems = []
    for name, path in sorted(alerts(rules).items()):
        entry = cov.get(name, {"fires": False, "silent": False})
        rel = _rel(path)
        if not entry["fires"]:
            problems.append(f"{rel}: alert {name}: no promtool test case expects it to fire")
        if not entry["silent"]:
            problems.append(f"{rel}: alert {name}: no promtool test case expects it to stay silent")
    return problems


def rule_metrics(paths: Iterable[Path]) -> tuple[dict[tuple[str, str], set[str]], set[str]]:
    """(file, rule) -> metric names its expression selects; and the names recording rules define."""
    used: dict[tuple[str, str], set[str]] = {}
    recorded: set[str] = set()
    for path in paths:
        for rule in load_rules(path):
            name = rule.get("alert") or rule.get("record")
            used[(_rel(path), name)] = metric_names(str(rule["expr"]))
            if "record" in rule:
                recorded.add(rule["record"])
    return used, recorded


def dashboard_files(directory: Path = DASHBOARDS_DIR) -> list[Path]:
    return sorted(directory.glob("*.json"))


def _panels(panels: list[dict]) -> Iterable[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def dashboard_metrics(paths: Iterable[Path]) -> dict[tuple[str, str], set[str]]:
    """(dashboard file, panel title) -> metric names in the panel's queries and template variables."""
    used: dict[tuple[str, str], set[str]] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        for panel in _panels(doc.get("panels") or []):
            for target in panel.get("targets") or []:
                if "expr" in target:
                    used.setdefault((_rel(path), panel.get("title", "?")), set()).update(metric_names(target["expr"]))
        for var in (doc.get("templating") or {}).get("list") or []:
            query = var.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            if var.get("type") == "query" and isinstance(query, str):
                m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query)
                names = metric_names(m.group(1)) if m else metric_names(query)
                used.setdefault((_rel(path), f"variable {var.get('name')}"), set()).update(names)
    return used


def unknown_metrics(used: dict[tuple[str, str], set[str]], known: set[str], what: str) -> list[str]:
    return [f"{where}: {what} {name}: names {', '.join(sorted(missing))}, which nothing we deploy exports"
            for (where, name), names in sorted(used.items())
            if (missing := names - known)]


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT.parent))
    except ValueError:
        return str(path)
