"""Prometheus rules and the Grafana dashboard as the monitoring tests read them.

The rule file and the dashboard JSON under monitoring/, the PromQL queries in them (rules,
panel targets, query variables), the metric names those queries use, what a /metrics text can
export, and the Prometheus tools (promtool, prometheus) the tests run. Used by
tests/test_monitoring.py (static checks) and tests/test_monitoring_live.py (a real worker,
matcher and Prometheus).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = REPO_ROOT / "monitoring" / "prometheus" / "snowtrap-rules.yaml"
DASHBOARD = REPO_ROOT / "monitoring" / "grafana" / "snowtrap.json"
MATCHER_PREFIX = "snowtrap_matcher_"

METRIC_NAME = re.compile(r"(?<![\w:])(snowtrap_[A-Za-z0-9_]+)")
RECORDED_NAME = re.compile(r"(?<![\w:])(snowtrap:[A-Za-z0-9_:]+)")
LE_SELECTOR = re.compile(r"(snowtrap_[A-Za-z0-9_]+_bucket)\{[^}]*le=\"([^\"]+)\"")


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} not found on PATH: run `bash tools/install_system_tools.sh` (make test "
            "does; Debian package prometheus)",
            pytrace=False,
        )
    return found


def rule_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


def recorded_names() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


def rule_expressions() -> list[str]:
    return [r["expr"] for g in rule_groups() for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> list[str]:
    """Every PromQL query of the dashboard: panel targets and query variables."""
    exprs = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard()["panels"])
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"unexpected variable query {query!r}"
            exprs.append(match.group(1))
    return exprs


def exported_names(metrics_text: str) -> set[str]:
    """Sample names a scrape can return, including those of label sets not yet seen."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names
