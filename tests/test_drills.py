"""Incident drills: a daemon killed with SIGKILL mid-run loses nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from tests.conftest import Api, Daemon, wait_until
from tests.peers import SmtpSink

ClientFor = Callable[[Daemon, str, str], Api]
RULES = """
[ingress]
mx_check = "off"
recipient_cooldown = "0s"
"""


@pytest.mark.drill
def test_kill_9_mid_delivery_loses_nothing_and_counts_every_duplicate(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    smtp.delay = 0.05
    first = make_daemon(RULES, workers="8")
    api = client_for(first, "agent", "sdr-bot")
    ids = [api.send(f"lead{n}@customer.example")["id"] for n in range(80)]
    wait_until(lambda: len(smtp.snapshot()) >= 15, what="deliveries to be under way")
    first.kill()
    delivered_before_kill = len(smtp.snapshot())
    assert delivered_before_kill < len(ids), "the kill came too late to test anything"

    second = make_daemon(RULES, workers="8")
    api = client_for(second, "agent", "sdr-bot")
    records = [api.wait_status(message_id, "sent", timeout=60) for message_id in ids]

    arrivals = Counter(r.message_id for r in smtp.snapshot())
    expected = {f"<{message_id}.sg@acme.example>" for message_id in ids}
    assert set(arrivals) == expected, "every accepted message arrives"
    duplicates = sum(count - 1 for count in arrivals.values())
    uncertain = sum(record["uncertain"] for record in records)
    assert uncertain > 0, "the kill should have caught messages mid-send"
    assert duplicates <= uncertain, (duplicates, uncertain)
    recovered = [r for r in records if "recovered" in [h["cause"] for h in r["history"]]]
    assert len(recovered) == uncertain
