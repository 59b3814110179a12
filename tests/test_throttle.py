"""Throttles as properties: exact rolling windows across daemons, no head-of-line blocking, gaps."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

from tests.conftest import Api, Daemon, by_domain, max_in_any_window
from tests.peers import SmtpSink

ClientFor = Callable[[Daemon, str, str], Api]
BASE = """
[ingress]
mx_check = "off"
recipient_cooldown = "0s"
"""


def rules_with(*throttles: dict[str, str | int]) -> str:
    """The base rules plus one [[throttle]] table per mapping."""
    tables = "".join(
        "\n[[throttle]]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())
        for table in throttles
    )
    return BASE + tables


def test_windows_are_exact_with_two_daemons_sharing_redis(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    rules = rules_with(
        {"scope": "recipient_domain", "limit": 3, "per": "2s"},
        {"scope": "inbox", "limit": 5, "per": "3s"},
    )
    smtp.delay = 0.05  # deliveries overlap in flight, as they do with a real relay
    daemons = [make_daemon(rules, process=True), make_daemon(rules, process=True)]
    clients = [client_for(d, "agent", "sdr-bot") for d in daemons]
    for n in range(16):
        domain = "customer.example" if n % 2 else "other.example"
        clients[n % 2].send(f"lead{n}@{domain}")
    received = smtp.wait_for(16, timeout=60)
    assert len(received) == 16
    for domain, times in by_domain(received).items():
        assert max_in_any_window(times, 2.0) <= 3, (domain, sorted(times))
    assert max_in_any_window([r.at for r in received], 3.0) <= 5
    # Both daemons did deliveries, so the windows were shared, not merely per process.
    sent_total = [d.metric("sendguard_messages_sent_total") or 0 for d in daemons]
    assert all(count > 0 for count in sent_total), sent_total


def test_a_throttled_domain_does_not_hold_up_others(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    rules = rules_with({"scope": "recipient_domain", "match": "customer.example", "limit": 1, "per": "1h"})
    daemon = make_daemon(rules, workers="2")
    api = client_for(daemon, "agent", "sdr-bot")
    held = [api.send(f"held{n}@customer.example")["id"] for n in range(6)]
    free = [api.send(f"free{n}@other.example")["id"] for n in range(10)]
    smtp.wait_for(11, timeout=20)
    for message_id in free:
        api.wait_status(message_id, "sent")
    statuses = [api.status(message_id) for message_id in held]
    assert sorted(s["status"] for s in statuses) == ["queued"] * 5 + ["sent"]
    assert {s["waiting_for"] for s in statuses if s["status"] == "queued"} == {"recipient_domain"}
    assert len(smtp.snapshot()) == 11
    metrics = daemon.http.get("/metrics").text
    assert 'sendguard_throttle_waits_total{scope="recipient_domain"}' in metrics


def test_min_gap_spaces_sends_and_waiting_messages_leave_by_themselves(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    rules = rules_with({"scope": "inbox", "limit": 100, "per": "1h", "min_gap": "700ms", "jitter": "200ms"})
    daemon = make_daemon(rules)
    api = client_for(daemon, "agent", "sdr-bot")
    for n in range(4):
        api.send(f"gap{n}@customer.example")
    received = smtp.wait_for(4, timeout=20)
    times = sorted(r.at for r in received)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Arrivals at the relay, however late the scheduler ran: the gap counts from the relay's answer
    # to the one before, in Redis's whole milliseconds, so the margin is one millisecond.
    assert all(gap >= 0.699 for gap in gaps), gaps
    assert len(smtp.snapshot()) == 4
