"""Prometheus rules and the Grafana dashboard, checked with the real tools.

- `promtool check rules` and `promtool test rules` (a unit test for every alert);
- every dashboard query parses (promtool checks it as a rule) and every recording rule it
  uses exists;
- every metric the matcher's rules and panels use is one stream/matcher/metrics.py defines
  (snowtrap_matcher_*) or the worker's stream/metrics.py (the crops it publishes), checked
  without Kafka.

That every metric they use is exported by a running worker and matcher, scraped by a real
Prometheus: tests/test_monitoring_live.py. Reading the rules and the dashboard:
tests/helpers/monitoring.py.

Missing promtool fails these tests: `make test` installs it first.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.monitoring import (
    LE_SELECTOR,
    MATCHER_PREFIX,
    METRIC_NAME,
    RECORDED_NAME,
    REPO_ROOT,
    RULES,
    alerts,
    dashboard,
    dashboard_expressions,
    exported_names,
    recorded_names,
    rule_expressions,
    rule_groups,
    tool,
)
from prometheus_client import generate_latest

from snowtrap.stream.matcher.metrics import MatcherMetrics
from snowtrap.stream.metrics import WorkerMetrics

RULE_TESTS = sorted((REPO_ROOT / "monitoring" / "prometheus" / "tests").glob("*.yaml"))
MATCHER_ALERTS = {
    "SnowtrapMatcherDown",
    "SnowtrapMatcherNoIdentities",
    "SnowtrapMatcherLagGrowing",
    "SnowtrapMatcherDeadLetterRateHigh",
}

SELECTOR_NAME = re.compile(r"(?<![\w:])([A-Za-z_][A-Za-z0-9_]*)\s*\{")
"""Metric names written with a label selector (`up{...}`): catches names outside snowtrap_."""
pytestmark = pytest.mark.filterwarnings(
    "ignore:open_text is deprecated:DeprecationWarning"  # kafka-python 3.0.12's resources
)
GRAFANA_VARIABLES = {"$__range": "1h", "$__rate_interval": "1m", "$stage": ".*", "$camera": ".*"}


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


# --- rules and dashboard, statically --------------------------------------------------------


def matcher_rules() -> list[dict[str, Any]]:
    """The matcher's rules: its group, and its thresholds in the config group."""
    return [
        r
        for g in rule_groups()
        for r in g["rules"]
        if g["name"].startswith("snowtrap.matcher") or "matcher" in r.get("record", "")
    ]


def test_promtool_check_rules():
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass():
    assert RULE_TESTS, "no rule unit tests in monitoring/prometheus/tests"
    result = run(tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_has_a_firing_unit_test_and_a_runbook():
    tested_firing: set[str] = set()
    tested_quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                target = tested_firing if check["exp_alerts"] else tested_quiet
                target.add(check["alertname"])
    assert set(alerts()) == tested_firing, "alerts without a test that makes them fire"
    assert set(alerts()) == tested_quiet, "alerts without a test that keeps them quiet"
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), name
        assert len(annotations["runbook"]) > 80, f"{name}: runbook too thin"


def test_required_alerts_exist():
    assert set(alerts()) >= {
        "SnowtrapNoWorkerUp",
        "SnowtrapConsumerLagGrowing",
        "SnowtrapDeadLetterRateHigh",
        "SnowtrapLatencySLOBurnFast",
        "SnowtrapLatencySLOBurnSlow",
        "SnowtrapCameraSilent",
        "SnowtrapModelBundleMismatch",
        *MATCHER_ALERTS,
    }


def registry_names(metrics: WorkerMetrics | MatcherMetrics) -> set[str]:
    """What a process with these metrics can export (no Kafka, no process needed)."""
    return exported_names(generate_latest(metrics.registry).decode())


def test_matcher_rules_and_panels_use_only_metrics_the_matcher_defines():
    """Every metric a matcher rule names is in stream/matcher/metrics.py (snowtrap_matcher_*),
    the workers' stream/metrics.py (crops published, the other end of the crops topic) or
    Prometheus' own `up` for the matcher's scrape job; the same for the dashboard's matcher
    queries."""
    matcher = registry_names(MatcherMetrics())
    worker = registry_names(WorkerMetrics())
    rules = matcher_rules()
    assert {r["alert"] for r in rules if "alert" in r} == MATCHER_ALERTS
    exprs = [r["expr"] for r in rules]
    exprs += [e for e in dashboard_expressions() if MATCHER_PREFIX in e or "snowtrap:matcher" in e]
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    matcher_used = {name for name in used if name.startswith(MATCHER_PREFIX)}
    assert len(matcher_used) >= 4, matcher_used
    assert matcher_used <= matcher, f"not in stream/matcher/metrics.py: {matcher_used - matcher}"
    assert used - matcher_used <= worker, (
        f"not in stream/metrics.py: {used - matcher_used - worker}"
    )
    for expr in exprs:
        for name in SELECTOR_NAME.findall(expr):
            assert name.startswith("snowtrap_") or name == "up", f"{name} in {expr!r}"
        if "up{" in expr:
            assert 'up{job=~".*snowtrap-matcher.*"}' in expr, expr
        for bucket, le in LE_SELECTOR.findall(expr):
            assert not bucket.startswith(MATCHER_PREFIX), f"le={le} is not a matcher bucket"
    # Thresholds are recording rules of their own, as for the workers.
    recorded = {name for r in rules for name in RECORDED_NAME.findall(r["expr"])}
    assert {
        "snowtrap:config:matcher_deadletter_ratio_threshold",
        "snowtrap:config:matcher_backlog_growth_threshold_crops",
    } <= recorded


def test_dashboard_queries_parse_and_use_defined_recording_rules(tmp_path: Path):
    exprs = dashboard_expressions()
    assert len(exprs) >= 20
    rules = []
    for i, expr in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown dashboard variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    check = tmp_path / "dashboard-queries.yaml"
    check.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", str(check))
    assert result.returncode == 0, result.stdout + result.stderr
    used = {name for expr in exprs for name in RECORDED_NAME.findall(expr)}
    assert used <= recorded_names(), f"undefined recording rules: {used - recorded_names()}"
    for expr in rule_expressions():  # rules use only rules that exist, too
        assert set(RECORDED_NAME.findall(expr)) <= recorded_names(), expr


def test_dashboard_covers_what_operators_look_at():
    titles = " / ".join(p["title"].lower() for p in dashboard()["panels"] if p["type"] != "row")
    for topic in ("throughput", "stage latency", "leopards per camera", "dead letters", "lag"):
        assert topic in titles, topic
    assert "model bundle" in titles
    exprs = " ".join(dashboard_expressions())
    assert "snowtrap_model_bundle_info" in exprs
    assert "histogram_quantile(0.95, sum by (stage, le)" in exprs
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert "Matcher" in rows
    for topic in ("matcher up", "matcher crops in and out", "matcher query latency"):
        assert topic in titles, topic
    assert "snowtrap:matcher_crops_backlog:increase30m" in exprs
    assert "snowtrap_matcher_individuals" in exprs
