"""/metrics stays bounded whatever segment, campaign and From values agents send.

A daemon in this process delivers to the aiosmtpd sink messages with hundreds of distinct values.
The per-scope gauges show global, every tripped scope and the busiest `SENDGUARD_METRICS_TOP_SCOPES`
others of each kind; a scope that falls out of that set loses its series.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Api, Daemon, wait_until
from tests.peers import SmtpSink

TOP = 3
RULES = """
[ingress]
recipient_cooldown = "0s"

[approvals]
mass_send_threshold = 100000  # hundreds of messages from one agent are the point here
"""
PER_SCOPE = (
    "sendguard_bounce_rate",
    "sendguard_complaint_rate",
    "sendguard_negative_reply_rate",
    "sendguard_safe_mode",
    "sendguard_window_sent",
    "sendguard_window_replies",
)
# Scope kinds that see this traffic: sender_domain (acme.example alone), inbox, segment, campaign, agent.
KINDS = 5

Scopes = set[tuple[str, str]]


def _per_scope_series(daemon: Daemon) -> dict[str, Scopes]:
    """(scope_kind, scope) of each per-scope gauge's series on /metrics."""
    found: dict[str, Scopes] = {name: set() for name in PER_SCOPE}
    for family in text_string_to_metric_families(daemon.http.get("/metrics", timeout=5).text):
        if family.name in found:
            found[family.name] = {(s.labels["scope_kind"], s.labels["scope"]) for s in family.samples}
    return found


def _send(agent: Api, name: str, count: int) -> None:
    """`count` messages whose From, segment and campaign are all `name`."""
    for i in range(count):
        agent.send(
            f"{name}-{i}@customer.example", segment=name, campaign=name, **{"from": f"{name}@acme.example"}
        )


def test_per_scope_gauges_show_global_tripped_and_the_busiest_scopes_only(
    make_daemon: Callable[..., Daemon], client_for: Callable[[Daemon, str, str], Api], smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES, metrics_top_scopes=str(TOP))
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")

    # Two sends put `early` among the busiest; `lonely` (one send) is tripped by hand.
    _send(agent, "early", 2)
    _send(agent, "lonely", 1)
    wait_until(lambda: len(smtp.received) == 3, what="the first 3 messages at the sink")
    tripped = admin.client.post("/v1/safe-mode", json={"scope": "segment:lonely", "reason": "test"})
    assert tripped.status_code in (200, 201), tripped.text
    wait_until(
        lambda: ("segment", "early") in _per_scope_series(daemon)["sendguard_window_sent"],
        what="early's gauges",
    )

    # Hundreds of one-off values, and TOP segments busier than `early`.
    distinct = 300
    for i in range(distinct):
        _send(agent, f"s{i}", 1)
    for i in range(TOP):
        _send(agent, f"busy{i}", 3)
    total = 3 + distinct + 3 * TOP
    wait_until(lambda: len(smtp.received) == total, timeout=60, what=f"all {total} messages at the sink")
    # One refresh sets every gauge and removes what left the set, so once global counts every send,
    # the series are those of the final counts.
    wait_until(
        lambda: daemon.metric("sendguard_window_sent", scope_kind="global", scope="global") == total,
        what="the gauges to count every send",
    )
    series = _per_scope_series(daemon)
    bound = 1 + KINDS * TOP + 1  # global, the busiest of each kind, the tripped one
    shown = series["sendguard_window_sent"]
    print(
        f"\n{len(PER_SCOPE) * len(shown)} per-scope series for {total} messages, {distinct} distinct values"
    )
    for name, scopes in series.items():
        assert scopes == shown, f"{name} shows other scopes than sendguard_window_sent"
    assert len(shown) <= bound, sorted(shown)
    assert {value for kind, value in shown if kind == "segment"} == {"busy0", "busy1", "busy2", "lonely"}
    assert {value for kind, value in shown if kind == "campaign"} == {"busy0", "busy1", "busy2"}
    assert ("global", "global") in shown
    assert not any(value == "early" for _, value in shown), "a scope that fell out keeps stale series"
    assert daemon.metric("sendguard_safe_mode", scope_kind="segment", scope="lonely") == 1
    assert daemon.metric("sendguard_window_sent", scope_kind="segment", scope="busy0") == 3

    # Resumed, `lonely` is an untripped scope with one send: its series go too.
    resumed = admin.client.delete("/v1/safe-mode/segment:lonely", params={"reason": "test over"})
    assert resumed.status_code == 200, resumed.text
    wait_until(
        lambda: ("segment", "lonely") not in _per_scope_series(daemon)["sendguard_safe_mode"],
        what="the resumed scope's series to go",
    )
