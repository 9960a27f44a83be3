"""ops/alerts.yml and ops/grafana-dashboard.json: they parse, they have the shape Prometheus
and Grafana load, and every metric (and label) they name is one nxnw's code exports.

The exported metrics are collected from the code itself: every module of ours that
imports a metric class from prometheus_client is imported, and its module-level metrics
read (name, type, label names), so a renamed or removed metric fails this test.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("datastore", "sync", "proxy", "snapshot", "dns_handoff", "nxnw")
ALERTS, DASHBOARD = ROOT / "ops" / "alerts.yml", ROOT / "ops" / "grafana-dashboard.json"
#: Series suffixes each metric type adds to its name, as the text exposition shows them.
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "enum": ("",), "info": ("_info",)}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
SELECTOR = re.compile(r"\b(nxnw_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported_series() -> dict[str, set[str]]:
    """Every series name nxnw's code exports -> the label names it carries."""
    series: dict[str, set[str]] = {}
    imports_metrics = re.compile(r"^from prometheus_client import .*\b(Counter|Gauge|Histogram|Summary|Enum|Info)\b",
                                 re.M)
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not imports_metrics.search(path.read_text()):
                continue
            module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
            for metric in vars(module).values():
                if isinstance(metric, MetricWrapperBase):
                    labels = set(metric._labelnames) | ({metric._name} if metric._type == "stateset" else set())
                    kind = "enum" if metric._type == "stateset" else metric._type
                    for suffix in SUFFIXES[kind]:
                        series[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def expressions() -> dict[str, str]:
    """Every PromQL expression of both files, keyed by where it is."""
    found = {f"alert {rule['alert']}": rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"]
             for rule in group["rules"]}
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        found[f"variable {variable['name']}"] = variable["query"]
    return found


def test_the_alert_rules_have_the_shape_prometheus_loads() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert all(group["name"] for group in doc["groups"])
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"]), rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].count("(") == rule["expr"].count(")"), rule
        assert "for" not in rule or re.fullmatch(r"\d+[smh]", rule["for"]), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"], rule


def test_the_dashboard_has_the_shape_grafana_imports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), ids
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            refs = [target["refId"] for target in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]


def test_every_metric_and_label_the_rules_and_panels_use_is_exported() -> None:
    series = exported_series()
    assert "nxnw_migration_phase" in series and "nxnw_http_requests_total" in series  # the collection worked
    problems = []
    for where, expr in expressions().items():
        used = SELECTOR.findall(expr)
        assert used, f"{where} names no nxnw metric: {expr}"
        labels_in_expr = set(TARGET_LABELS)
        for name, matchers in used:
            if name not in series:
                problems.append(f"{where}: {name} is not exported")
                continue
            labels_in_expr |= series[name]
            problems += [f"{where}: {name} has no label {label!r}" for label, _ in MATCHER.findall(matchers)
                         if label not in series[name] | TARGET_LABELS]
        problems += [f"{where}: no metric in it has the label {label!r}" for grouping in GROUPING.findall(expr)
                     for label in (part.strip() for part in grouping.split(",")) if label not in labels_in_expr]
    assert not problems, "\n".join(problems)


def test_the_alerts_cover_what_an_operator_must_hear_about() -> None:
    used = {name for where, expr in expressions().items() if where.startswith("alert ")
            for name, _ in SELECTOR.findall(expr)}
    assert {"nxnw_migration_journal_depth", "nxnw_repair_journal_depth", "nxnw_migration_verify_remaining",
            "nxnw_http_requests_total", "nxnw_writer_clock_unsafe", "nxnw_writer_clock_offset_seconds",
            "nxnw_zookeeper_lease_age_seconds", "nxnw_shadow_reads_total"} <= used
