"""The relay circuit breaker, trip and resume notifications, Alertmanager's webhook and the safe-mode CLI.

Real peers throughout: the SMTP sink is stopped to take the relay down, a stdlib HTTP server on
loopback plays the Slack-style webhook, and the CLI runs as a subprocess against the test's Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sendguard.config import WebhookURL
from sendguard.metrics import Metrics
from sendguard.notify import Notifier
from tests.conftest import Api, Daemon, free_port, run_cli, sendguard_command, wait_until
from tests.peers import SmtpSink, Webhook

MakeDaemon = Callable[..., Daemon]
ClientFor = Callable[[Daemon, str, str], Api]

MAX_ATTEMPTS = 2
OUTAGE_SETTINGS = {
    "smtp_connections": "2",
    "circuit_failures": "3",
    "circuit_max_delay": "1",
    "max_attempts": str(MAX_ATTEMPTS),
}
SEGMENT = "segment:cfo-na-q4"
ALERT_NAME = "SendguardBounceRateHigh"


def _causes(record: dict[str, Any]) -> list[str]:
    return [entry["cause"] for entry in record["history"]]


def _trips(admin: Api) -> list[dict[str, Any]]:
    response = admin.client.get("/v1/safe-mode")
    assert response.status_code == 200, response.text
    trips: list[dict[str, Any]] = response.json()
    return trips


def _trip(admin: Api, scope: str, reason: str) -> httpx.Response:
    response = admin.client.post("/v1/safe-mode", json={"scope": scope, "reason": reason})
    assert response.status_code == 201, response.text
    return response


# -- the relay circuit breaker --------------------------------------------------


def _relay_outage(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink, count: int
) -> tuple[Daemon, Api, list[str]]:
    """A daemon whose relay went down, `count` messages submitted, and the circuit seen open."""
    daemon = make_daemon("", **OUTAGE_SETTINGS)
    agent = client_for(daemon, "agent", "sdr-bot")
    smtp.stop()
    ids = [agent.send(f"lead{i}@customer.example")["id"] for i in range(count)]
    wait_until(
        lambda: all("connection" in _causes(agent.status(m)) for m in ids),
        what="every message to be deferred for the connection",
    )
    wait_until(lambda: daemon.metric("sendguard_relay_circuit_open") == 1, what="the circuit to open")
    assert (daemon.metric("sendguard_relay_circuit_opens_total") or 0) >= 1
    return daemon, agent, ids


def test_a_relay_outage_defers_messages_beyond_max_attempts_and_never_fails_them(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink
) -> None:
    _, agent, ids = _relay_outage(make_daemon, client_for, smtp, count=3)
    # The half-open probes keep trying; a refused connection must not use up the attempts.
    wait_until(
        lambda: max(agent.status(m)["attempts"] for m in ids) > MAX_ATTEMPTS,
        what=f"a message to be tried more than {MAX_ATTEMPTS} times",
    )
    records = [agent.status(m) for m in ids]
    assert {r["status"] for r in records} <= {"deferred", "sending"}, records
    assert not {"failed", "bounced"} & {h["status"] for r in records for h in r["history"]}


def test_the_circuit_closes_by_itself_when_the_relay_returns_and_each_message_leaves_once(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon, agent, ids = _relay_outage(make_daemon, client_for, smtp, count=6)
    smtp.start()
    for message_id in ids:
        agent.wait_status(message_id, "sent")
    received = [r.message_id for r in smtp.received]
    assert len(received) == len(ids) and len(set(received)) == len(ids), received
    wait_until(lambda: daemon.metric("sendguard_relay_circuit_open") == 0, what="the circuit gauge to drop")


def test_a_relay_refusing_recipients_does_not_open_the_circuit(
    make_daemon: MakeDaemon, client_for: ClientFor
) -> None:
    daemon = make_daemon("", **(OUTAGE_SETTINGS | {"circuit_failures": "1"}))
    agent = client_for(daemon, "agent", "sdr-bot")
    for i in range(3):  # the sink answers 550 at RCPT for bounce* local parts
        agent.wait_status(agent.send(f"bounce{i}@customer.example")["id"], "bounced")
    assert daemon.metric("sendguard_relay_circuit_open") == 0
    assert daemon.metric("sendguard_relay_circuit_opens_total") == 0


def test_a_probe_held_back_by_a_throttle_gap_does_not_stall_dispatch(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink
) -> None:
    # A min_gap longer than the probe period: the first probe meets the gap the failed attempt set.
    rules = '[[throttle]]\nscope = "inbox"\nlimit = 100\nper = "1h"\nmin_gap = "2s"\n'
    daemon = make_daemon(rules, **(OUTAGE_SETTINGS | {"circuit_failures": "1"}))
    agent = client_for(daemon, "agent", "sdr-bot")
    smtp.stop()
    sent = agent.send("lead@customer.example")["id"]
    wait_until(lambda: "connection" in _causes(agent.status(sent)), what="the connection failure")
    smtp.start()
    agent.wait_status(sent, "sent", timeout=5)  # the gap ends 2 s after the failed attempt


# -- notifications ----------------------------------------------------------------


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


@pytest.fixture
def notified(make_daemon: MakeDaemon, client_for: ClientFor, webhook: Webhook) -> tuple[Daemon, Api]:
    """A daemon that notifies `webhook`, and an admin client for it."""
    daemon = make_daemon("", notify_url=webhook.url)
    return daemon, client_for(daemon, "admin", "dana")


def _notification(webhook: Webhook, event: str, timeout: float = 10) -> dict[str, Any]:
    """The first accepted body for `event` (tripped or resumed), waiting for it."""
    found: dict[str, Any] = wait_until(
        lambda: next((b for b in webhook.bodies() if b["sendguard"]["event"] == event), None),
        timeout=timeout,
        what=f"a {event} notification",
    )
    return found


def test_a_trip_by_hand_notifies_the_webhook(notified: tuple[Daemon, Api], webhook: Webhook) -> None:
    _, admin = notified
    _trip(admin, SEGMENT, "the Q4 list looks stale")
    body = _notification(webhook, "tripped")
    assert SEGMENT in body["text"] and "the Q4 list looks stale" in body["text"], body
    assert body["sendguard"]["scope"] == SEGMENT
    assert body["sendguard"]["cause"] == "manual" and body["sendguard"]["by"] == "admin:dana"


def test_a_resume_notifies_the_webhook_with_the_released_count(
    notified: tuple[Daemon, Api], client_for: ClientFor, webhook: Webhook
) -> None:
    daemon, admin = notified
    agent = client_for(daemon, "agent", "sdr-bot")
    _trip(admin, SEGMENT, "the Q4 list looks stale")
    for i in range(2):
        assert agent.send(f"lead{i}@customer.example", segment="cfo-na-q4")["status"] == "held"
    resumed = admin.client.delete(f"/v1/safe-mode/{SEGMENT}", params={"reason": "list cleaned"})
    assert resumed.status_code == 200, resumed.text
    body = _notification(webhook, "resumed")
    assert body["sendguard"]["released"] == 2
    assert SEGMENT in body["text"] and "list cleaned" in body["text"] and "2 held" in body["text"]


def test_the_webhook_secret_path_never_reaches_the_log(
    make_daemon: MakeDaemon, client_for: ClientFor, webhook: Webhook
) -> None:
    """httpx logs every request's URL; the webhook's path is its secret, so only its host is shown."""
    daemon = make_daemon("", process=True, notify_url=webhook.url)
    _trip(client_for(daemon, "admin", "dana"), SEGMENT, "the Q4 list looks stale")
    _notification(webhook, "tripped")
    request_lines = wait_until(
        lambda: [line for line in daemon.log_path.read_text().splitlines() if "HTTP Request: POST" in line],
        what="httpx's log line for the notification",
    )
    assert "http://127.0.0.1:" in request_lines[0], request_lines
    log = daemon.log_path.read_text()
    assert webhook.url.endswith("/hooks/T000/B000/secret")
    assert "/hooks/" not in log
    assert "T000/B000" not in log


def test_a_failing_webhook_gets_the_notification_on_its_third_try(
    notified: tuple[Daemon, Api], webhook: Webhook
) -> None:
    _, admin = notified
    webhook.fail_first = 2
    _trip(admin, "global", "kill switch drill")
    _notification(webhook, "tripped", timeout=8)  # retried after 1 s, then 2 s
    assert webhook.attempts == 3
    assert len(webhook.bodies()) == 1


def test_an_unreachable_webhook_neither_delays_the_trip_nor_goes_uncounted(
    make_daemon: MakeDaemon, client_for: ClientFor
) -> None:
    daemon = make_daemon("", notify_url=f"http://127.0.0.1:{free_port()}/hook")  # a closed port
    admin = client_for(daemon, "admin", "dana")
    assert daemon.metric("sendguard_notifications_failed_total") == 0
    started = time.monotonic()
    _trip(admin, "global", "kill switch drill")
    assert time.monotonic() - started < 0.5
    # Four attempts, 1 s + 2 s + 4 s apart, then it gives up and counts it.
    wait_until(
        lambda: daemon.metric("sendguard_notifications_failed_total") == 1,
        timeout=15,
        what="the dropped notification to be counted",
    )
    assert [t["scope"] for t in _trips(admin)] == ["global"]


# -- Alertmanager's webhook -----------------------------------------------------


def _alert(status: str, **labels: str) -> dict[str, Any]:
    """One alert as Alertmanager sends it (webhook payload version 4)."""
    return {
        "status": status,
        "labels": {"alertname": ALERT_NAME, "severity": "page", **labels},
        "annotations": {"summary": "bounce rate above half its threshold"},
        "startsAt": "2024-05-01T10:00:00.000Z",
        "endsAt": "2024-05-01T10:30:00.000Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=sendguard_bounce_rate",
        "fingerprint": "c0ffee1234567890",
    }


def _post_alerts(api: Api, *alerts: dict[str, Any]) -> httpx.Response:
    payload = {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{ALERT_NAME}"}}',
        "truncatedAlerts": 0,
        "status": alerts[0]["status"],
        "receiver": "sendguard",
        "groupLabels": {"alertname": ALERT_NAME},
        "commonLabels": alerts[0]["labels"],
        "commonAnnotations": alerts[0]["annotations"],
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }
    return api.client.post("/v1/alerts", json=payload)


def _alerts_out(api: Api, *alerts: dict[str, Any]) -> dict[str, list[str]]:
    response = _post_alerts(api, *alerts)
    assert response.status_code == 200, response.text
    out: dict[str, list[str]] = response.json()
    return out


@pytest.fixture
def admin(make_daemon: MakeDaemon, client_for: ClientFor) -> Api:
    return client_for(make_daemon(""), "admin", "dana")


def test_a_firing_alert_trips_its_scope(admin: Api) -> None:
    out = _alerts_out(admin, _alert("firing", sendguard_scope=SEGMENT))
    assert out == {"tripped": [SEGMENT], "already": [], "ignored": []}
    [trip] = _trips(admin)
    assert (trip["scope"], trip["cause"], trip["by"]) == (SEGMENT, "alert", "admin:dana")
    assert trip["detail"] == f"{ALERT_NAME}: bounce rate above half its threshold"


def test_a_second_firing_alert_finds_its_scope_already_tripped(admin: Api) -> None:
    _alerts_out(admin, _alert("firing", sendguard_scope=SEGMENT))
    out = _alerts_out(admin, _alert("firing", sendguard_scope=SEGMENT))
    assert out == {"tripped": [], "already": [SEGMENT], "ignored": []}


def test_a_resolved_alert_does_not_resume(admin: Api) -> None:
    _alerts_out(admin, _alert("firing", sendguard_scope=SEGMENT))
    out = _alerts_out(admin, _alert("resolved", sendguard_scope=SEGMENT))
    assert out["tripped"] == [] and out["already"] == []
    assert out["ignored"] == [f"{ALERT_NAME}: not firing"]
    assert [t["scope"] for t in _trips(admin)] == [SEGMENT]


def test_alerts_without_a_usable_scope_are_ignored_with_the_reason(admin: Api) -> None:
    out = _alerts_out(admin, _alert("firing"), _alert("firing", sendguard_scope="planet:mars"))
    assert out["tripped"] == [] and out["already"] == []
    unlabelled, unparsable = out["ignored"]
    assert unlabelled == f"{ALERT_NAME}: no sendguard_scope label"
    assert unparsable.startswith(f"{ALERT_NAME}: scope 'planet:mars' must be 'global' or '<kind>:<value>'")
    assert _trips(admin) == []


def test_an_alert_for_an_agent_not_in_the_register_is_ignored_and_the_others_trip(admin: Api) -> None:
    out = _alerts_out(
        admin,
        _alert("firing", sendguard_scope="agent:ghost-bot"),
        _alert("firing", sendguard_scope="agent:SDR-Bot"),
    )
    assert out["tripped"] == ["agent:sdr-bot"] and out["already"] == []
    [ignored] = out["ignored"]
    assert ignored.startswith(f"{ALERT_NAME}: no agent 'ghost-bot' in the rules' register"), ignored
    assert [t["scope"] for t in _trips(admin)] == ["agent:sdr-bot"]


def test_an_ignored_alert_is_logged_and_counted_by_reason(
    make_daemon: MakeDaemon, client_for: ClientFor, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = make_daemon("")
    admin = client_for(daemon, "admin", "dana")
    assert daemon.metric("sendguard_alerts_ignored_total", reason="bad_scope") == 0
    caplog.set_level(logging.WARNING, logger="sendguard")
    out = _alerts_out(
        admin,
        _alert("firing"),
        _alert("firing", sendguard_scope="planet:mars"),
        _alert("firing", sendguard_scope="segment:"),
        _alert("resolved", sendguard_scope=SEGMENT),
    )
    assert len(out["ignored"]) == 4
    assert daemon.metric("sendguard_alerts_ignored_total", reason="no_scope") == 1
    assert daemon.metric("sendguard_alerts_ignored_total", reason="bad_scope") == 2
    assert daemon.metric("sendguard_alerts_ignored_total", reason="not_firing") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(ALERT_NAME in line and "ignored" in line for line in warnings) == 3, warnings
    assert any("planet:mars" in line for line in warnings), warnings


def test_an_agent_token_may_not_post_alerts(make_daemon: MakeDaemon, client_for: ClientFor) -> None:
    agent = client_for(make_daemon(""), "agent", "sdr-bot")
    assert _post_alerts(agent, _alert("firing", sendguard_scope=SEGMENT)).status_code == 403
    assert _trips(agent) == []


# -- the safe-mode CLI ---------------------------------------------------------


@pytest.fixture
def cli_env(make_daemon: MakeDaemon, client_for: ClientFor) -> dict[str, str]:
    """The environment `sendguard safe-mode` needs: the running daemon's API and a token file (for
    the admin sam), and nothing else: no Redis, no rules, no data directory."""
    daemon = make_daemon("")
    env = daemon.cli_env(client_for(daemon, "admin", "sam").token)
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "SENDGUARD_API_URL": f"http://127.0.0.1:{env['SENDGUARD_API_PORT']}",
        "SENDGUARD_TOKEN_FILE": env["SENDGUARD_TOKEN_FILE"],
    }


def test_the_cli_trips_a_scope_in_normal_form_and_lists_it(cli_env: dict[str, str]) -> None:
    out = run_cli(cli_env, "safe-mode", "trip", "inbox:Alice@Acme.example", "--reason", "x")
    assert out == "inbox:alice@acme.example: tripped (x)"
    assert run_cli(cli_env, "safe-mode", "list") == "inbox:alice@acme.example\tmanual\tx\tby admin:sam"


def test_the_cli_resuming_a_scope_that_is_not_tripped_exits_1(cli_env: dict[str, str]) -> None:
    result = sendguard_command(cli_env, "safe-mode", "resume", SEGMENT, "--reason", "nothing to resume")
    assert result.returncode == 1, result
    assert f"{SEGMENT} is not in safe mode" in result.stderr


def test_the_cli_refuses_a_malformed_scope_saying_what_a_scope_looks_like(cli_env: dict[str, str]) -> None:
    result = sendguard_command(cli_env, "safe-mode", "trip", "nonsense", "--reason", "x")
    assert result.returncode == 2, result
    assert "'nonsense' must be 'global' or '<kind>:<value>'" in result.stderr
    assert "segment" in result.stderr and "inbox" in result.stderr
    assert run_cli(cli_env, "safe-mode", "list") == ""


def test_resuming_a_scope_that_is_not_tripped_keeps_its_signal_window(
    make_daemon: MakeDaemon, client_for: ClientFor
) -> None:
    daemon = make_daemon("[safe_mode]\nmax_denials = 3\n")
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")
    for i in range(2):  # free-mail recipients are refused: two denials of three
        assert agent.send(f"someone{i}@gmail.com")["status"] == "rejected"
    refused = admin.client.delete("/v1/safe-mode/agent:sdr-bot", params={"reason": "typo"})
    assert refused.status_code == 404, refused.text
    assert agent.send("someone2@gmail.com")["status"] == "rejected"
    assert [(t["scope"], t["cause"]) for t in _trips(admin)] == [("agent:sdr-bot", "denials")]


async def test_a_post_still_going_at_shutdown_is_dropped_counted_and_its_connection_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A webhook that takes the request and never answers: at shutdown the post must not outlive
    # the loop (its connection left open), nor vanish without a count.
    requested, hung_up = asyncio.Event(), asyncio.Event()

    async def webhook(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        requested.set()
        await reader.read()  # until the client hangs up
        hung_up.set()
        writer.close()

    server = await asyncio.start_server(webhook, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    metrics = Metrics()
    notifier = Notifier(WebhookURL(f"http://127.0.0.1:{port}/hook"), metrics, timeout=60)
    try:
        notifier.post("sendguard: safe mode for global", {"event": "tripped"})
        await asyncio.wait_for(requested.wait(), 10)
        with caplog.at_level(logging.ERROR, logger="sendguard.notify"):
            await notifier.drain(0.2)
        await asyncio.wait_for(hung_up.wait(), 5)
        assert metrics.registry.get_sample_value("sendguard_notifications_failed_total") == 1
        assert "1 notifications to http://127.0.0.1" in caplog.text and "dropped at shutdown" in caplog.text
    finally:
        server.close()
        await server.wait_closed()
