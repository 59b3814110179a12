"""The monitoring kit in metrics/: alert rules, their unit tests, the Prometheus and Alertmanager
examples and the Grafana dashboard, checked with the real promtool and amtool, and against the
metrics the daemon really exports.

promtool, amtool and Alertmanager are required, never skipped: `bash tests/install-tools.sh`
installs them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sendguard.metrics import Metrics
from tests.conftest import Api, Daemon, free_port, token_file, wait_until
from tests.peers import Webhook

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
        (
            ["alertname=SendguardDeliveriesFailingStop", "sendguard_scope=global", "severity=stop"],
            {SENDGUARD_RECEIVER},
        ),
        (["sendguard_scope=inbox:sdr@acme.example", "severity=page"], {SENDGUARD_RECEIVER}),
        (["alertname=SendguardDeliveriesFailing", "severity=page"], {"oncall-pager"}),
        (["alertname=SendguardSafeModeActive", "severity=page"], {"oncall-pager"}),
        (["alertname=SendguardBounceRateHigh", "severity=ticket"], {"oncall-tickets"}),
    ],
)
def test_alertmanager_sends_scoped_alerts_to_sendguard_alone(labels: list[str], receivers: set[str]) -> None:
    """A stop-sending alert resolves once its trip lands, inside the pager's group_wait, so it goes
    to sendguard only; people get its person-facing sibling."""
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
    """severity is page or ticket for people, and stop exactly for the alerts that stop sending."""
    for rule in _alert_rules():
        assert "for" in rule, rule["alert"]
        stops = "sendguard_scope" in rule["labels"]
        assert rule["labels"]["severity"] in ({"stop"} if stops else {"page", "ticket"}), rule["alert"]
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


# -- a real Alertmanager ---------------------------------------------------------------------------

AM_SPEEDUP = 10  # the example's timings, this many times faster: the pager's group_wait 30s -> 3s
PAGER_GROUP_WAIT = 30 / AM_SPEEDUP


def _faster(duration: str) -> str:
    """An Alertmanager duration (`30s`, `5m`, `4h`) `AM_SPEEDUP` times shorter."""
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, f"unexpected duration {duration!r} in alertmanager.yml"
    seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]
    return f"{seconds * 1000 // AM_SPEEDUP}ms"


def _alertmanager_config(sendguard: str, token: Path, hooks: dict[str, str]) -> dict[str, Any]:
    """alertmanager.yml's routes and inhibit rules as they are, its timings faster, and its receivers
    pointed at this test's peers: sendguard itself (with a real token) and a webhook per person."""
    config: dict[str, Any] = _load_yaml(KIT / "alertmanager.yml")

    def speed_up(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                route[key] = _faster(route[key])
        for child in route.get("routes", []):
            speed_up(child)

    speed_up(config["route"])
    for receiver in config["receivers"]:
        if receiver["name"] == SENDGUARD_RECEIVER:
            (webhook,) = receiver["webhook_configs"]
            webhook["url"] = f"{sendguard}/v1/alerts"
            webhook["http_config"]["authorization"]["credentials_file"] = str(token)
        else:
            name = receiver["name"]
            receiver.clear()
            receiver.update(name=name, webhook_configs=[{"url": hooks[name], "send_resolved": True}])
    return config


class Alertmanager:
    """`prometheus-alertmanager` (Debian's name for it) on loopback, alone (no cluster)."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if binary is None:
            pytest.fail(
                "Alertmanager is not installed: run `bash tests/install-tools.sh` (needs root or sudo)"
            )
        config_path = directory / "alertmanager.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.url = f"http://127.0.0.1:{free_port()}"
        self._log = directory / "alertmanager.log"
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.path={directory / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=log,
            )
        with httpx.Client(base_url=self.url, timeout=1) as probe:  # not httpx.get(): a client each poll
            wait_until(lambda: self._ready(probe), timeout=15, what="Alertmanager to be ready")

    def _ready(self, probe: httpx.Client) -> bool:
        if self._process.poll() is not None:
            raise AssertionError(f"Alertmanager exited {self._process.returncode}: {self._log.read_text()}")
        try:
            return probe.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def post(self, *alerts: dict[str, Any]) -> None:
        """Hand alerts over as Prometheus does after an evaluation."""
        response = httpx.post(f"{self.url}/api/v2/alerts", json=list(alerts), timeout=5)
        assert response.status_code == 200, response.text

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


def _as_prometheus_sends(rule: dict[str, Any], fired_at: datetime, *, firing: bool) -> dict[str, Any]:
    """An alert of `rule` as Prometheus posts it after an evaluation: since `fired_at` (the moment it
    passed its `for`; Alertmanager flushes at once what is older than group_wait), firing (ending in a
    minute unless posted again) or resolved."""
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": rule["alert"], **rule["labels"]},
        "annotations": {"summary": f"{rule['alert']} (test)"},
        "startsAt": fired_at.isoformat(),
        "endsAt": (now + timedelta(minutes=1) if firing else now).isoformat(),
        "generatorURL": "http://prometheus.test:9090/graph",
    }


@pytest.fixture
def alertmanager_for(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Alertmanager]]:
    started: list[Alertmanager] = []

    def start(config: dict[str, Any]) -> Alertmanager:
        started.append(Alertmanager(config, tmp_path))
        return started[-1]

    yield start
    for alertmanager in started:
        alertmanager.stop()


def test_a_stop_trips_sendguard_and_its_page_reaches_a_person_through_a_real_alertmanager(
    make_daemon: Callable[..., Daemon],
    client_for: Callable[[Daemon, str, str], Api],
    alertmanager_for: Callable[[dict[str, Any]], Alertmanager],
    tmp_path: Path,
) -> None:
    """The stop alert resolves as soon as its trip lands, well inside the pager's group_wait; its
    sibling page keeps firing and is what the pager gets, once group_wait is over."""
    daemon = make_daemon("")
    daemon.listen()
    admin = client_for(daemon, "admin", "alertmanager")
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    stop, page = rules["SendguardDeliveriesFailingStop"], rules["SendguardDeliveriesFailing"]
    with Webhook() as pager, Webhook() as tickets:
        alertmanager = alertmanager_for(
            _alertmanager_config(
                f"http://127.0.0.1:{daemon.env['SENDGUARD_API_PORT']}",
                token_file(tmp_path, admin.token),
                {"oncall-pager": pager.url, "oncall-tickets": tickets.url},
            )
        )
        started, fired_at = time.monotonic(), datetime.now(UTC)
        alertmanager.post(
            _as_prometheus_sends(stop, fired_at, firing=True),
            _as_prometheus_sends(page, fired_at, firing=True),
        )
        trips = wait_until(
            lambda: admin.client.get("/v1/safe-mode").json(), what="sendguard to trip on the stop alert"
        )
        tripped_after = time.monotonic() - started
        # Prometheus' next evaluation: global is in safe mode, so the stop resolves; the page fires on.
        alertmanager.post(
            _as_prometheus_sends(stop, fired_at, firing=False),
            _as_prometheus_sends(page, fired_at, firing=True),
        )
        [first, *_] = wait_until(pager.bodies, what="a notification at the pager")
        paged_after = time.monotonic() - started

    assert [(t["scope"], t["cause"], t["by"]) for t in trips] == [("global", "alert", "admin:alertmanager")]
    assert trips[0]["detail"].startswith("SendguardDeliveriesFailingStop: ")
    assert tripped_after < PAGER_GROUP_WAIT <= paged_after, (tripped_after, paged_after)
    assert first["status"] == "firing"
    assert [a["labels"]["alertname"] for a in first["alerts"]] == ["SendguardDeliveriesFailing"]
    stops_at_pager = [
        a for body in pager.bodies() for a in body["alerts"] if "sendguard_scope" in a["labels"]
    ]
    assert stops_at_pager == [], "a machine-facing stop alert reached the pager"
    assert tickets.bodies() == []
    print(
        f"\ntripped {tripped_after:.2f}s and paged {paged_after:.2f}s after the alerts reached Alertmanager"
    )
