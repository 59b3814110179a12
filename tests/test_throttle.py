"""Throttles as properties: exact rolling windows across daemons, no head-of-line blocking, gaps,
and buckets that an invented inbox cannot escape."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sendguard.delivery.throttle import Throttles
from sendguard.model import Status
from sendguard.record import MessageRecord
from sendguard.rules import Rules, ScopeKind, ThrottleRule, load_rules
from sendguard.scopes import scope_values
from sendguard.state.keys import Keys
from sendguard.state.store import Moved, Store
from tests.conftest import Api, Daemon, by_domain, max_in_any_window, wait_until, write_claimed
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
    # Windows of a second or so: 16 messages at 5 an inbox window take three windows of waiting,
    # and the windows are checked at the relay's receive times, whatever their length.
    domain_per, inbox_per = 1.0, 1.5
    rules = rules_with(
        {"scope": "recipient_domain", "limit": 3, "per": f"{domain_per * 1000:g}ms"},
        {"scope": "inbox", "limit": 5, "per": f"{inbox_per * 1000:g}ms"},
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
        assert max_in_any_window(times, domain_per) <= 3, (domain, sorted(times))
    assert max_in_any_window([r.at for r in received], inbox_per) <= 5
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
    assert (daemon.metric("sendguard_throttle_waits_total", scope="recipient_domain") or 0) >= 1


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


def test_an_invented_tag_shares_its_inboxs_bucket(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(rules_with({"scope": "inbox", "limit": 1, "per": "1h"}))
    api = client_for(daemon, "agent", "sdr-bot")
    api.wait_status(
        api.send("lead1@customer.example", **{"from": "Alice <Alice+x@Acme.example>"})["id"], "sent"
    )

    waiting = [
        api.send(f"lead{n}@customer.example", **{"from": sender})["id"]
        for n, sender in enumerate(["alice@acme.example", "Alice <ALICE+q4@acme.example>"], start=2)
    ]
    api.wait_status(api.send("lead4@customer.example", **{"from": "bob@acme.example"})["id"], "sent")

    wait_until(
        lambda: all(api.status(m)["waiting_for"] == "inbox" for m in waiting),
        what="the other spellings of alice@ to wait for alice@'s bucket",
    )
    assert [api.status(m)["status"] for m in waiting] == ["queued", "queued"]
    assert sorted(r.rcpt_tos[0] for r in smtp.snapshot()) == [
        "lead1@customer.example",
        "lead4@customer.example",
    ]


@pytest.fixture
def shipped() -> Rules:
    return load_rules(Path(__file__).resolve().parent.parent / "rules" / "sendguard.toml")


async def test_the_shipped_rules_cap_an_agent_and_a_sender_domain_however_many_inboxes_it_invents(
    redis_url: str, prefix: str, shipped: Rules
) -> None:
    """An agent allowed `*@domain` can make up a new From address per message, each with a fresh
    per-inbox bucket; the shipped agent and sender-domain throttles still stop it."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    throttles = Throttles(client, keys, lease_ms=31_000)
    store = Store(client, keys)

    async def until_refused(agent: str) -> tuple[int, ScopeKind | None]:
        """Messages from a new address each, to a new domain each, until one must wait."""
        for n in itertools.count():
            record = MessageRecord(
                id=f"{agent}-{n}",
                status=Status.QUEUED,
                agent=agent,
                from_addr=f"invented-{agent}-{n}@acme.example",
                to=f"lead@r{n}.example",
                to_domain=f"r{n}.example",
            )
            [claim] = await write_claimed(client, keys, [record])
            buckets = throttles.buckets(shipped.file.throttle, scope_values(record))
            reservation = throttles.reservation(buckets, f"{record.id}:1")
            started = await store.start(
                claim, "attempt 1", {}, "", reservation, [scope.value for scope in buckets.scopes]
            )
            if started.moved is Moved.THROTTLED:
                return n, buckets.scopes[started.bucket]
            assert started.moved is Moved.MOVED
        raise AssertionError("unreachable")

    try:
        assert await until_refused("sdr-bot") == (120, ScopeKind.AGENT)
        assert await until_refused("support-bot") == (80, ScopeKind.SENDER_DOMAIN)  # 200 from acme.example
    finally:
        await client.aclose()


async def test_a_send_held_back_by_a_later_bucket_waits_for_that_bucket(redis_url: str, prefix: str) -> None:
    """The start of a send names the bucket that held it back, whichever of the message's buckets it
    is, on its record (`waiting_for`) as in its answer, and reserves none of them."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    throttles = Throttles(client, keys, lease_ms=31_000)
    store = Store(client, keys)
    limits = {"recipient_domain": 100, "sender_domain": 100, "inbox": 1, "agent": 100, "global": 100}
    rules = [
        ThrottleRule.model_validate({"scope": kind, "limit": n, "per": "1m"}) for kind, n in limits.items()
    ]
    records = [
        MessageRecord(
            f"m{n}",
            Status.QUEUED,
            agent="sdr-bot",
            from_addr="sdr@acme.example",
            to=f"lead{n}@customer.example",
            to_canonical=f"lead{n}@customer.example",
            to_domain="customer.example",
        )
        for n in range(2)
    ]
    try:
        claims = await write_claimed(client, keys, records)
        buckets = throttles.buckets(rules, scope_values(records[0]))
        started = [
            await store.start(
                claim,
                "attempt 1",
                {},
                "",
                throttles.reservation(buckets, f"{claim.message_id}:1"),
                buckets.waits,
            )
            for claim in claims
        ]
        assert [s.moved for s in started] == [Moved.MOVED, Moved.THROTTLED]
        assert buckets.scopes[started[1].bucket] is ScopeKind.INBOX
        waiting = await store.record("m1")
        assert waiting is not None
        assert (waiting.status, waiting.waiting_for) == (Status.QUEUED, ScopeKind.INBOX)
        assert [await client.zcard(key) for key in buckets.keys] == [1, 1, 1, 1, 1]
    finally:
        await client.aclose()


async def test_a_window_outlives_its_newest_send_by_its_length(redis_url: str, prefix: str) -> None:
    """A window key must last until its newest send (in flight until `lease` from now) has left the
    window, however its expiry stood before: a reservation reads the expiry and lengthens it when it
    is short, so an entry still counting is never lost to an expiry."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    lease_ms, per_ms = 31_000, 60_000
    throttles = Throttles(client, keys, lease_ms=lease_ms)
    store = Store(client, keys)
    rule = ThrottleRule.model_validate({"scope": "recipient_domain", "limit": 100, "per": "1m"})
    records = [
        MessageRecord(
            f"m{n}", Status.QUEUED, agent="sdr-bot", from_addr="sdr@acme.example", to_domain="c.example"
        )
        for n in range(2)
    ]
    try:
        claims = await write_claimed(client, keys, records)
        buckets = throttles.buckets([rule], scope_values(records[0]))
        [window] = buckets.keys
        for claim in claims:
            await client.pexpire(window, 10)  # as if the window were about to go (no-op for the first)
            reservation = throttles.reservation(buckets, f"{claim.message_id}:1")
            started = await store.start(claim, "attempt 1", {}, "", reservation, buckets.waits)
            assert started.moved is Moved.MOVED
            assert await client.pttl(window) >= per_ms + lease_ms - 1_000
        assert await client.zcard(window) == 2
    finally:
        await client.aclose()
