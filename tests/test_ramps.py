"""Warm-up ramps: a new inbox sends `start`, then `step` more each period, up to its ceiling, exactly,
whichever daemon sends; its limit now is in the sending status and the metrics.

Periods and windows of a second stand in for days: the rules take any duration.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from sendguard.errors import ConfigError
from sendguard.rules import RampRule, load_rules
from sendguard.state.keys import Keys
from tests.conftest import AGENT_RULES, Api, Daemon, max_in_any_window, wait_until
from tests.peers import SmtpSink

ClientFor = Callable[[Daemon, str, str], Api]
RAMP = RampRule.model_validate(
    {
        "scope": "inbox",
        "match": "alice@acme.example",
        "start": 2,
        "step": 1,
        "period": "1s",
        "ceiling": 4,
        "per": "1s",
    }
)
RULES = """
[ingress]
mx_check = "off"
recipient_cooldown = "0s"

[[ramp]]
scope = "inbox"
match = "alice@acme.example"
start = 2
step = 1
period = "1s"
ceiling = 4
per = "1s"
"""


def test_no_window_holds_more_than_the_ramp_allows_across_two_daemons(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, redis_url: str, prefix: str
) -> None:
    smtp.delay = 0.02  # deliveries overlap in flight
    daemons = [make_daemon(RULES), make_daemon(RULES)]
    clients = [client_for(daemon, "agent", "sdr-bot") for daemon in daemons]
    for n in range(12):
        clients[n % 2].send(f"lead{n}@customer.example")
    received = smtp.wait_for(12, timeout=20)
    first = float(redis.Redis.from_url(redis_url).get(Keys(prefix).ramp("inbox", "alice@acme.example")) or 0)
    first /= 1000  # the first reservation, by Redis' clock (this machine's)
    times = sorted(r.at for r in received)
    assert first and first <= times[0]
    for at in times:
        # Every send reserved by `at` saw a limit no higher than the one `at` gives.
        in_window = sum(1 for other in times if at - RAMP.per <= other <= at)
        assert in_window <= RAMP.limit(int((at - first) * 1000)), (at - first, in_window, times)
    assert sum(1 for at in times if at < first + RAMP.period) <= RAMP.start
    assert max_in_any_window(times, RAMP.per) <= RAMP.ceiling
    assert all((d.metric("sendguard_messages_sent_total") or 0) > 0 for d in daemons)  # both sent


def test_the_ramp_shows_in_the_sending_status_and_the_metrics(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES.replace('period = "1s"', 'period = "1h"').replace('per = "1s"', 'per = "1h"'))
    api = client_for(daemon, "agent", "sdr-bot")

    def ramps() -> list[dict[str, object]]:
        found: list[dict[str, object]] = api.client.get("/v1/sending-status").json()["ramps"]
        return found

    [before] = ramps()
    assert (before["scope"], before["limit"], before["used"], before["first_send"]) == (
        "inbox:alice@acme.example",
        2,
        0,
        None,
    )
    ids = [api.send(f"lead{n}@customer.example")["id"] for n in range(3)]
    smtp.wait_for(2)
    # Which of the three waits depends on the order their sends start in, not on their submission.
    wait_until(
        lambda: sorted(str(api.status(one)["waiting_for"]) for one in ids) == ["None", "None", "inbox"],
        what="one of the three to wait for the ramp",
    )
    [after] = ramps()
    assert (after["limit"], after["ceiling"], after["used"], after["per_seconds"]) == (2, 4, 2, 3600)
    assert after["first_send"]
    wait_until(
        lambda: daemon.metric("sendguard_ramp_limit", scope_kind="inbox", scope="alice@acme.example") == 2,
        what="the ramp's gauge",
    )


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ("scope = 'agent'\nstart = 5\nceiling = 50", "a ramp warms up an inbox or a sender_domain"),
        ("scope = 'inbox'\nstart = 50\nceiling = 5", "ceiling 5 is below start 50"),
        ("scope = 'sender_domain'\nstart = 5\nceiling = 50\nperiod = '1 day'", "key 'period'"),
        ("scope = 'sender_domain'\nceiling = 50", "key 'start'"),
    ],
)
def test_a_bad_ramp_is_named(tmp_path: Path, table: str, says: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(AGENT_RULES + "\n[[ramp]]\n" + table + "\n")
    with pytest.raises(ConfigError) as raised:
        load_rules(path)
    assert says in str(raised.value) and "[[ramp]] #1" in str(raised.value)
