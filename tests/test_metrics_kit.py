"""The monitoring kit in metrics/: alert rules, their unit tests, the Prometheus and Alertmanager
examples and the Grafana dashboard, checked with the real promtool and amtool, and against the
metrics the daemon really exports.

promtool and amtool are required, never skipped: `bash tests/install-tools.sh` installs them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sendguard.metrics import Metrics

KIT = Path(__file__).resolve().parent.parent / "metrics"
ALERTS = KIT / "alerts.yml"
ALERT_TESTS = KIT / "alerts.test.yml"
DASHBOARD = KIT / "grafana" / "sendguard.json"
SENDGUARD_RECEIVER = "sendguard-safe-mode"

_METRIC_NAME = re.compile(r"\bsendguard_[a-z_]+")
# Parts of a PromQL expression where a `sendguard_...` word is not a metric: string literals (label
# values, label_join arguments), label matchers and the label lists of by/without/on/ignoring/group_*.
_NOT_METRICS = (
    re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\''),
    re.compile(r"\{[^}]*\}"),
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),
)
# Grafana's variables, replaced by something promtool can parse.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$scope_kind": ".*"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `bash tests/install-tools.sh` (needs root or sudo)")
    return path


def _run(*args: str) -> str:
    """Run a tool in metrics/ and return its stdout; fail with all it printed if it fails."""
    result = subprocess.run(args, cwd=KIT, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        pytest.fail(f"`{' '.join(args)}` exited {result.returncode}:\n{output}", pytrace=False)
    return result.stdout


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _alert_rules() -> list[dict[str, Any]]:
    groups = _load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def metric_names(expr: str) -> set[str]:
    """The sendguard metric names a PromQL expression reads (crudely: no full parser)."""
    for pattern in _NOT_METRICS:
        expr = pattern.sub(" ", expr)
    return set(_METRIC_NAME.findall(expr))


def exported_names() -> set[str]:
    """Every series name the daemon can expose: families (also never-observed labelled ones, which
    still get HELP and TYPE lines), their samples, and each histogram's _bucket, _sum and _count."""
    names: set[str] = set()
    for line in Metrics().exposition().decode().splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            parts = line.split(" ")
            names.add(parts[2])
            if line.startswith("# TYPE ") and parts[3] == "histogram":
                names.update(f"{parts[2]}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return {name for name in names if name.startswith("sendguard_")}


def test_metric_names_parser_ignores_labels_and_strings() -> None:
    expr = (
        'label_join(max by (scope_kind, sendguard_scope) (sendguard_bounce_rate{sendguard_x="1"}), '
        '"sendguard_scope", ":", "scope_kind") > on (sendguard_y) group_left () sendguard_safe_mode'
    )
    assert metric_names(expr) == {"sendguard_bounce_rate", "sendguard_safe_mode"}


def test_alert_rules_pass_promtool_check() -> None:
    output = _run(_tool("promtool"), "check", "rules", ALERTS.name)
    assert "SUCCESS" in output


def test_alert_rules_pass_their_unit_tests() -> None:
    _run(_tool("promtool"), "test", "rules", ALERT_TESTS.name)


def test_prometheus_example_config_is_valid() -> None:
    output = _run(_tool("promtool"), "check", "config", "prometheus.yml")
    assert "1 rule files found" in output


def test_alertmanager_example_config_is_valid() -> None:
    _run(_tool("amtool"), "check-config", "alertmanager.yml")


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["sendguard_scope=global", "severity=page"], {SENDGUARD_RECEIVER, "oncall-pager"}),
        (["sendguard_scope=inbox:sdr@acme.example", "severity=page"], {SENDGUARD_RECEIVER, "oncall-pager"}),
        (["alertname=SendguardSafeModeActive", "severity=page"], {"oncall-pager"}),
        (["alertname=SendguardBounceRateHigh", "severity=ticket"], {"oncall-tickets"}),
    ],
)
def test_alertmanager_sends_only_scoped_alerts_to_sendguard(labels: list[str], receivers: set[str]) -> None:
    output = _run(_tool("amtool"), "config", "routes", "test", "--config.file=alertmanager.yml", *labels)
    assert set(output.strip().split(",")) == receivers


def test_alertmanager_posts_to_sendguard_with_a_bearer_token() -> None:
    config = _load_yaml(KIT / "alertmanager.yml")
    (receiver,) = [r for r in config["receivers"] if r["name"] == SENDGUARD_RECEIVER]
    (webhook,) = receiver["webhook_configs"]
    assert webhook["url"] == "http://127.0.0.1:8587/v1/alerts"
    assert webhook["send_resolved"] is False
    assert webhook["http_config"]["authorization"]["credentials_file"]


def test_every_alert_has_for_severity_and_guidance() -> None:
    for rule in _alert_rules():
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _load_yaml(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in _alert_rules()}
    assert alerts - firing == set(), "alerts no unit test fires"
    assert alerts - quiet == set(), "alerts no unit test checks staying quiet"
    assert (firing | quiet) - alerts == set(), "unit tests for alerts that do not exist"


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_names()
    assert "sendguard_messages_sent_total" in exported
    used = {
        "alerts.yml": {name for rule in _alert_rules() for name in metric_names(rule["expr"])},
        "grafana/sendguard.json": {
            name for query in _dashboard_queries(_dashboard()) for name in metric_names(query)
        },
    }
    for where, names in used.items():
        assert names, f"no sendguard metric found in {where}"
        assert names - exported == set(), f"{where} uses metrics sendguard does not export"


def test_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "label_values(sendguard_safe_mode, scope_kind)" in json.dumps(variables["scope_kind"])
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        if panel["type"] == "row":  # a row only groups panels: it has no query
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    queries = []
    for query in _dashboard_queries(_dashboard()):
        if query.startswith("label_values("):  # Grafana's own function, not PromQL
            continue
        for variable, value in _GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"unknown Grafana variable in {query}"
        queries.append(query)
    records = [{"record": f"dashboard:query{i}", "expr": query} for i, query in enumerate(queries)]
    rules = {"groups": [{"name": "dashboard", "rules": records}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    _run(_tool("promtool"), "check", "rules", str(path))
