"""Every safe-mode decision is in the audit trail, written by the script that takes it.

A reply Redis drops after running a script is the same as a call that ran the script and never
looked at the answer: these tests run the scripts alone and find the entry with the effect.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from sendguard.feedback.counters import AUTOMATIC, Signal, Signals
from sendguard.governance.audit_entries import entry
from sendguard.rules import SafeModeRules, ScopeKind
from sendguard.state import scripts
from sendguard.state.keys import Keys
from tests.conftest import Api, Daemon
from tests.peers import SmtpSink

SCOPE = "segment:cfo-na-q4"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def entries(client: redis.Redis, keys: Keys, kind: str) -> list[dict[str, Any]]:
    """The entries of `kind`, chained or still pending."""
    raw = client.lrange(keys.audit_chain, 0, -1) + client.lrange(keys.audit_pending, 0, -1)
    return [found for found in map(json.loads, raw) if found["kind"] == kind]


def run(client: redis.Redis, keys: Keys, name: str, *args: Any) -> Any:
    """Run one script and nothing else, as Redis does when the reply is then lost."""
    return client.eval(scripts.source(name, keys), 0, *args)


def test_a_trip_and_a_resume_write_their_entries_in_the_same_script(client: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    tripped = entry("safe_mode.tripped", "operator:omar", {"outcome": "@"})
    created, trip = run(
        client, keys, "safe_mode_trip", SCOPE, "manual", "operator:omar", "stale list", tripped
    )
    assert created == 1 and client.hget(keys.trips, SCOPE) == trip
    [written] = entries(client, keys, "safe_mode.tripped")
    assert written["actor"] == "operator:omar" and written["fields"]["trip"] == json.loads(trip)
    assert json.loads(trip)["by"] == "operator:omar"
    # A retry finds the trip, answers with it and writes nothing more.
    assert run(client, keys, "safe_mode_trip", SCOPE, "manual", "operator:omar", "again", tripped) == [
        0,
        trip,
    ]
    assert len(entries(client, keys, "safe_mode.tripped")) == 1

    resumed = entry("safe_mode.resumed", "admin:sam", {"scope": SCOPE, "reason": "fixed", "outcome": "@"})
    lifted, released, still, left, before = run(
        client, keys, "safe_mode_resume", SCOPE, 500, "resumed by admin:sam", resumed, 60_000
    )
    assert (lifted, released, still, left, before) == (trip, 0, 0, 0, 1)
    assert client.hget(keys.trips, SCOPE) is None
    [written] = entries(client, keys, "safe_mode.resumed")
    assert written["actor"] == "admin:sam" and written["fields"]["trip"] == json.loads(trip)
    assert (written["fields"]["reason"], written["fields"]["released"]) == ("fixed", 0)
    again = run(client, keys, "safe_mode_resume", SCOPE, 500, "resumed by admin:sam", resumed, 60_000)
    assert again == ["", 0, 0, 0, 1]  # nothing left to do, and it is known to be done
    assert len(entries(client, keys, "safe_mode.resumed")) == 1


def test_an_automatic_trip_writes_its_entry_in_the_script_that_counts(
    client: redis.Redis, redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    rules = SafeModeRules(min_sent=2, bounce_rate=0.5, scopes=[ScopeKind.SEGMENT])

    async def bounce() -> list[str]:
        async_client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            signals = Signals(async_client, keys)
            await signals.record(signals.call([SCOPE], [Signal.SENT], rules))
            recorded = await signals.record(signals.call([SCOPE], [Signal.SENT, Signal.HARD], rules))
            return [trip.scope for trip in recorded.trips]
        finally:
            await async_client.aclose()

    assert asyncio.run(bounce()) == [SCOPE]
    [written] = entries(client, keys, "safe_mode.tripped")
    assert written["actor"] == AUTOMATIC and written["fields"]["trip"]["cause"] == "bounce_rate"
    assert written["fields"]["trip"] == json.loads(client.hget(keys.trips, SCOPE))


def test_people_act_as_role_and_name_and_a_retried_resume_succeeds_once(
    make_daemon: Callable[..., Daemon], client_for: Callable[..., Api], client: redis.Redis
) -> None:
    daemon = make_daemon("")
    keys = Keys(daemon.env["SENDGUARD_REDIS_PREFIX"])
    operator = client_for(daemon, "operator", "sendguard")  # a person may pick the daemon's name
    admin = client_for(daemon, "admin", "sam")
    trip = operator.client.post("/v1/safe-mode", json={"scope": SCOPE, "reason": "checking"})
    assert trip.status_code == 201 and trip.json()["by"] == "operator:sendguard"
    again = operator.client.post("/v1/safe-mode", json={"scope": SCOPE, "reason": "checking"})
    assert again.status_code == 200 and again.json()["at"] == trip.json()["at"]

    done = admin.client.delete(f"/v1/safe-mode/{SCOPE}", params={"reason": "fine"})
    assert done.status_code == 200 and done.json()["resumed"]["by"] == "operator:sendguard"
    retried = admin.client.delete(f"/v1/safe-mode/{SCOPE}", params={"reason": "fine"})
    assert retried.status_code == 200 and retried.json()["resumed"] is None
    assert [e["actor"] for e in entries(client, keys, "safe_mode.tripped")] == ["operator:sendguard"]
    assert [e["actor"] for e in entries(client, keys, "safe_mode.resumed")] == ["admin:sam"]


def test_the_maintenance_loop_finishes_a_release_a_resume_left_half_done(
    make_daemon: Callable[..., Daemon], client_for: Callable[..., Api], client: redis.Redis, smtp: SmtpSink
) -> None:
    daemon = make_daemon("", instance_ttl="1")
    keys = Keys(daemon.env["SENDGUARD_REDIS_PREFIX"])
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "sam")
    assert admin.client.post("/v1/safe-mode", json={"scope": "global", "reason": "drill"}).status_code == 201
    ids = [agent.send(f"lead{i}@customer.example")["id"] for i in range(3)]
    assert {agent.status(m)["status"] for m in ids} == {"held"}
    # The resume's script ran, releasing one message; the caller died before releasing the rest.
    resumed = entry("safe_mode.resumed", "admin:sam", {"scope": "global", "reason": "over", "outcome": "@"})
    lifted, released, _, left, _ = run(
        client, keys, "safe_mode_resume", "global", 1, "resumed", resumed, 60_000
    )
    assert lifted and (released, left) == (1, 2)
    for message_id in ids:
        agent.wait_status(message_id, "sent")
    assert client.scard(keys.releasing) == 0 and len(entries(client, keys, "safe_mode.resumed")) == 1


def test_a_resume_queues_what_it_held_and_moves_what_another_trip_holds(
    client: redis.Redis, prefix: str
) -> None:
    """release_held (lua/shared/safe_mode.lua) reads each record once, asks whether anything is
    tripped once, and counts the released in one HINCRBY a status: each message still ends where
    it did, at its time, with its history, and the counts move by one a message."""
    keys = Keys(prefix)
    held = keys.held(SCOPE)
    future = 2**52  # ms: a send_at far ahead, kept when released
    records = {
        "plain": {"to_domain": "c.example", "from_addr": "a@b.example", "agent": "x", "segment": "cfo-na-q4"},
        "later": {
            "to_domain": "c.example",
            "from_addr": "a@b.example",
            "agent": "x",
            "segment": "cfo-na-q4",
            "not_before": str(future),
        },
        "elsewhere": {"scopes": json.dumps([SCOPE, "campaign:other"])},
        "moved_on": {"to_domain": "c.example", "from_addr": "a@b.example", "agent": "x"},
    }
    for message_id, fields in records.items():
        status = "queued" if message_id == "moved_on" else "held"
        client.hset(keys.msg(message_id), mapping={"status": status, "held_by": SCOPE, **fields})
        client.sadd(held, message_id)
    client.hset(keys.count, mapping={"held": 3, "queued": 1})
    client.hset(keys.trips, mapping={SCOPE: "{}", "campaign:other": "{}"})
    resumed = entry("safe_mode.resumed", "admin:sam", {"outcome": "@"})
    assert run(client, keys, "safe_mode_resume", SCOPE, 500, "resumed by admin:sam", resumed, 60_000)[
        1:4
    ] == [2, 1, 0]
    assert client.hgetall(keys.count) == {"held": "1", "queued": "3"}
    assert [client.hget(keys.msg(m), "status") for m in records] == ["queued", "queued", "held", "queued"]
    assert client.hget(keys.msg("elsewhere"), "held_by") == "campaign:other"
    assert client.smembers(keys.held("campaign:other")) == {"elsewhere"}
    assert client.zscore(keys.due, "later") == future and client.zscore(keys.due, "moved_on") is None
    assert client.zscore(keys.due, "plain") is not None and not client.hexists(keys.msg("plain"), "held_by")
    assert [json.loads(h)["status"] for h in client.lrange(keys.hist("plain"), 0, -1)] == ["queued"]
    assert [json.loads(h)["status"] for h in client.lrange(keys.hist("elsewhere"), 0, -1)] == ["held"]
