"""Safe mode end to end: real daemons, a real SMTP server answering 550, trips shared by Redis."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from sendguard.delivery.throttle import Throttles
from sendguard.feedback.counters import SLOTS, Signal, Signals, Trip
from sendguard.model import Status
from sendguard.record import MessageRecord
from sendguard.rules import SafeModeRules, ThrottleRule
from sendguard.scopes import scope_values
from sendguard.state.keys import Keys
from sendguard.state.store import Moved, Store
from tests.conftest import Api, Daemon, message, wait_until, write_claimed
from tests.peers import SmtpSink

CONNECTIONS = 4
STORM_RULES = """
[ingress]
recipient_cooldown = "0s"

[safe_mode]
min_sent = 10
bounce_rate = 0.1

[approvals]
mass_send_threshold = 1000  # this storm is about safe mode, not about approvals
"""


def test_a_bounce_storm_stops_its_segment_within_the_in_flight_sends(
    make_daemon: Callable[..., Daemon],
    client_for: Callable[[Daemon, str, str], Api],
    smtp: SmtpSink,
) -> None:
    smtp.delay = 0.05  # a relay that takes its time, so the storm is still running at the trip
    daemon = make_daemon(STORM_RULES, smtp_connections=str(CONNECTIONS))
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")
    # The inbox, the agent and global see the storm's bounces too. With clean history behind
    # them they stay under the line, so the segment is the first scope to cross, deterministically.
    history = [agent.send(f"earlier{i}@other.example", segment="smb")["id"] for i in range(30)]
    for message_id in history:
        agent.wait_status(message_id, "sent")
    storm, calm = [], []
    for i in range(60):  # a fifth of the bad list bounces
        local = f"bounce{i}" if i % 5 == 2 else f"lead{i}"
        storm.append(agent.send(f"{local}@customer.example", segment="cfo-na-q4")["id"])
        if i % 3 == 0:
            calm.append(agent.send(f"buyer{i}@other.example", segment="smb")["id"])

    trips = wait_until(lambda: admin.client.get("/v1/safe-mode").json(), what="the storm to trip safe mode")
    assert [t["scope"] for t in trips] == ["segment:cfo-na-q4"]
    trip = trips[0]
    assert trip["cause"] == "bounce_rate"
    assert trip["threshold"] == 0.1 and trip["value"] >= 0.1
    assert trip["by"] == "sendguard"

    # The other segment keeps sending; the stormy one stops, its rest held, nothing dropped.
    for message_id in calm:
        agent.wait_status(message_id, "sent")
    states = wait_until(
        lambda: (s := [agent.status(m)["status"] for m in storm]).count("sending") == 0 and s,
        what="in-flight sends to finish",
    )
    assert set(states) <= {"sent", "bounced", "held"}, states
    assert states.count("held") >= 60 - 10 - 2 * CONNECTIONS - 5

    # Trip-to-halt: no transaction to the stormy segment starts once the trip is recorded,
    # beyond the ones already in flight.
    tripped_at = _ms(trip["at"])
    storm_addresses = {agent.status(m)["to"] for m in storm}
    after = [at for at, address, _ in smtp.rcpts if address in storm_addresses and at * 1000 > tripped_at]
    assert len(after) <= CONNECTIONS, f"{len(after)} sends after the trip with {CONNECTIONS} in flight"
    crossing = max(
        at for at, address, reply in smtp.rcpts if reply.startswith("550") and at * 1000 <= tripped_at
    )
    print(
        f"\ntrip recorded {tripped_at - crossing * 1000:.1f} ms after the crossing 550; "
        f"{len(after)} RCPTs to the tripped segment after it ({CONNECTIONS} connections)"
    )

    held = next(m for m, s in zip(storm, states, strict=True) if s == "held")
    assert agent.status(held)["held_by"] == "segment:cfo-na-q4"
    wait_until(
        lambda: daemon.metric("sendguard_safe_mode", scope_kind="segment", scope="cfo-na-q4") == 1,
        what="the safe-mode gauge",
    )
    assert (daemon.metric("sendguard_bounce_rate", scope_kind="segment", scope="cfo-na-q4") or 0) >= 0.1
    assert daemon.metric("sendguard_safe_mode", scope_kind="segment", scope="smb") == 0

    # A new submission into the tripped scope is accepted and held, not rejected.
    late = agent.client.post(
        "/v1/messages", json=message("late@customer.example", segment="cfo-na-q4")
    ).json()
    assert late["status"] == "held"
    assert late["reasons"][0]["code"] == "safe_mode"

    # A person fixes the list and resumes: everything held goes out, nothing lost.
    smtp.rcpt_replies = {address: "250 OK" for address in storm_addresses}
    refused = admin.client.delete("/v1/safe-mode/segment:cfo-na-q4")
    assert refused.status_code == 422 and "reason" in refused.text
    resumed = admin.client.delete(
        "/v1/safe-mode/segment:cfo-na-q4", params={"reason": "bad rows removed from the list"}
    ).json()
    assert resumed["released"] == states.count("held") + 1
    assert resumed["resumed"]["cause"] == "bounce_rate"
    agent.wait_status(held, "sent")
    agent.wait_status(late["id"], "sent")
    final = wait_until(
        lambda: (s := [agent.status(m)["status"] for m in storm]).count("held") == 0 and s,
        what="released messages to be delivered",
    )
    assert set(final) <= {"sent", "bounced"}
    assert admin.client.get("/v1/safe-mode").json() == []
    history = agent.status(held)["history"]
    assert [h["cause"] for h in history][-3:] == ["resumed", "attempt", "relay_accepted"]
    assert "bad rows removed" in history[-3]["detail"]


def test_two_daemons_share_a_trip_and_the_cli_resumes_it(
    make_daemon: Callable[..., Daemon],
    client_for: Callable[[Daemon, str, str], Api],
    smtp: SmtpSink,
) -> None:
    first = make_daemon("", process=True)
    second = make_daemon("", process=True)
    admin = client_for(first, "admin", "dana")
    agent = client_for(second, "agent", "sdr-bot")
    tripped = admin.client.post("/v1/safe-mode", json={"scope": "global", "reason": "kill switch drill"})
    assert tripped.status_code == 201, tripped.text
    assert tripped.json()["cause"] == "manual" and tripped.json()["by"] == "admin:dana"
    again = admin.client.post("/v1/safe-mode", json={"scope": "global", "reason": "twice"})
    assert again.status_code == 200 and again.json()["detail"] == "kill switch drill"

    ids = [agent.send(f"lead{i}@customer.example")["id"] for i in range(3)]
    assert {agent.status(m)["status"] for m in ids} == {"held"}
    assert agent.client.get("/v1/safe-mode").json()[0]["scope"] == "global"
    assert smtp.received == []

    sam = client_for(first, "admin", "sam")
    out = second.cli("safe-mode", "resume", "global", "--reason", "drill over", token=sam.token)
    assert "3 held messages released" in out
    for message_id in ids:
        agent.wait_status(message_id, "sent")
    assert "resumed by admin:sam" in agent.status(ids[0])["history"][-3]["detail"]


def test_a_scope_that_is_not_one_is_refused_naming_the_field(
    make_daemon: Callable[..., Daemon], client_for: Callable[[Daemon, str, str], Api]
) -> None:
    admin = client_for(make_daemon(""), "admin", "dana")
    tripped = admin.client.post("/v1/safe-mode", json={"scope": "planet:mars", "reason": "x"})
    resumed = admin.client.delete("/v1/safe-mode/planet:mars", params={"reason": "x"})
    for refused in (tripped, resumed):
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"].startswith(
            "scope: scope 'planet:mars' must be 'global' or '<kind>:<value>'"
        )
    assert admin.client.get("/v1/safe-mode").json() == []


@pytest.mark.parametrize(
    ("typed", "scope"),
    [
        ("agent:SDR-Bot", "agent:sdr-bot"),
        ("inbox:Alice+Q4@Acme.example.", "inbox:alice@acme.example"),
        ("sender_domain: ACME.example.", "sender_domain:acme.example"),
        ("recipient_domain:Customer.Example.", "recipient_domain:customer.example"),
        ("segment: cfo-na-q4 ", "segment:cfo-na-q4"),
    ],
)
def test_a_trip_spelled_otherwise_trips_the_scope_its_messages_are_in(
    make_daemon: Callable[..., Daemon], client_for: Callable[[Daemon, str, str], Api], typed: str, scope: str
) -> None:
    """An on-call types a scope the way people write it: the trip is of the scope the agent's
    messages are in, and holds the next one, as the canonical spelling does."""
    daemon = make_daemon("")
    agent = client_for(daemon, "agent", "sdr-bot")
    operator = client_for(daemon, "operator", "omar")
    tripped = operator.client.post("/v1/safe-mode", json={"scope": typed, "reason": "3am: stop it"})
    assert tripped.status_code == 201, tripped.text
    assert tripped.json()["scope"] == scope
    sent = agent.send("dana@customer.example", segment="cfo-na-q4", **{"from": "Alice+q4@acme.example"})
    assert sent["status"] == "held", sent
    again = operator.client.post("/v1/safe-mode", json={"scope": scope, "reason": "the canonical spelling"})
    assert again.status_code == 200, again.text  # one trip, not two
    admin = client_for(daemon, "admin", "sam")
    resumed = admin.client.delete(f"/v1/safe-mode/{typed}", params={"reason": "ok"})
    assert resumed.status_code == 200 and resumed.json()["scope"] == scope, resumed.text


def test_a_trip_of_an_agent_not_in_the_register_is_refused_naming_it(
    make_daemon: Callable[..., Daemon], client_for: Callable[[Daemon, str, str], Api]
) -> None:
    """`agent:sdr_bot` is no agent: "tripped" would hold nothing while sdr-bot sends on."""
    daemon = make_daemon("")
    operator = client_for(daemon, "operator", "omar")
    refused = operator.client.post("/v1/safe-mode", json={"scope": "agent:sdr_bot", "reason": "stop it"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"].startswith("scope: no agent 'sdr_bot' in the rules' register")
    result = daemon.cli_result("safe-mode", "trip", "agent:SDR_Bot", "--reason", "x", token=operator.token)
    assert result.returncode == 1 and "no agent 'sdr_bot' in the rules' register" in result.stderr, result
    assert "tripped" not in result.stdout
    assert operator.client.get("/v1/safe-mode").json() == []


def test_a_hijacked_agent_trips_on_its_refusals(
    make_daemon: Callable[..., Daemon], client_for: Callable[[Daemon, str, str], Api], smtp: SmtpSink
) -> None:
    daemon = make_daemon("[safe_mode]\nmax_denials = 5\n")
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")
    for i in range(3):  # a mailbox it may not use: 403
        forged = message(f"x{i}@customer.example", **{"from": "ceo@evil.example"})
        assert agent.client.post("/v1/messages", json=forged).status_code == 403
    for i in range(2):  # free-mail addresses: rejected
        assert agent.send(f"someone{i}@gmail.com")["status"] == "rejected"
    trips = admin.client.get("/v1/safe-mode").json()
    assert [(t["scope"], t["cause"], t["value"]) for t in trips] == [("agent:sdr-bot", "denials", 5)]
    assert agent.send("lead@customer.example")["status"] == "held"
    other = client_for(daemon, "agent", "support-bot")
    sent = other.send("someone@customer.example", **{"from": "help@acme.example"})
    other.wait_status(sent["id"], "sent")


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() * 1000


def test_a_trip_holds_messages_due_later_at_once_and_resume_keeps_their_time(
    make_daemon: Callable[..., Daemon], client_for: Callable[[Daemon, str, str], Api], smtp: SmtpSink
) -> None:
    daemon = make_daemon("")
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    waiting = [agent.send(f"lead{i}@customer.example", campaign="q4", send_at=later)["id"] for i in range(3)]
    elsewhere = agent.send("lead9@customer.example", campaign="q1", send_at=later)["id"]
    assert admin.client.post("/v1/safe-mode", json={"scope": "campaign:q4", "reason": "x"}).status_code == 201
    wait_until(lambda: {agent.status(m)["status"] for m in waiting} == {"held"}, what="the sweep")
    assert agent.status(elsewhere)["status"] == "queued"

    resumed = admin.client.delete("/v1/safe-mode/campaign:q4", params={"reason": "checked"}).json()
    assert resumed["released"] == 3
    assert {agent.status(m)["status"] for m in waiting} == {"queued"}
    assert smtp.received == []  # back in the queue for their send_at, not sent at once


JUDGED_RULES = """
[ingress]
recipient_cooldown = "0s"

[safe_mode]
min_sent = 10
bounce_rate = 0.1
complaint_rate = 0.1

[approvals]
mass_send_threshold = 1000
"""


def _send_one(agent: Api, local: str, segment: str) -> str:
    """Send one message and wait for the relay's answer, so every count is settled before the next."""
    message_id: str = agent.send(f"{local}@customer.example", segment=segment)["id"]
    wait_until(
        lambda: agent.status(message_id)["status"] in ("sent", "bounced"),
        what=f"{local} to be answered",
    )
    return message_id


def test_a_tripped_segment_takes_its_evidence_out_of_the_scopes_above_it(
    make_daemon: Callable[..., Daemon], client_for: Callable[[Daemon, str, str], Api], smtp: SmtpSink
) -> None:
    """A bad list trips its segment. Its bounces then count no more in the inbox, the sender domain,
    the agent and global, so a clean segment of the same inbox trips nothing with a bounce rate
    under the line, before or after the bad segment is resumed; a scope trips on its own evidence."""
    daemon = make_daemon(JUDGED_RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")

    def tripped() -> list[tuple[str, str]]:
        return [(t["scope"], t["cause"]) for t in admin.client.get("/v1/safe-mode").json()]

    for i in range(10):  # 3 bounces of 10: the bad list crosses at its tenth answer
        _send_one(agent, f"bounce{i}" if i >= 7 else f"lead{i}", "cfo-na-q4")
    assert tripped() == [("segment:cfo-na-q4", "bounce_rate")]

    # 1 bounce of 12 in the clean segment: 8 %, under the line. With the bad list's 3 of 10 still
    # counted above it, the inbox would see 4 of 22 (18 %) and trip on the clean segment's bounce.
    for i in range(12):
        _send_one(agent, "bounce-clean" if i == 11 else f"buyer{i}", "smb")
    assert tripped() == [("segment:cfo-na-q4", "bounce_rate")]

    resumed = admin.client.delete("/v1/safe-mode/segment:cfo-na-q4", params={"reason": "list fixed"})
    assert resumed.status_code == 200, resumed.text
    _send_one(agent, "bounce-clean2", "smb")  # 2 of 13 in the clean segment: 15 %, its own crossing
    assert tripped() == [("segment:smb", "bounce_rate")]


def test_a_bounce_is_judged_on_the_bounce_rate_only(
    make_daemon: Callable[..., Daemon], client_for: Callable[[Daemon, str, str], Api], smtp: SmtpSink
) -> None:
    """Complaints that came in while the window was too small to judge wait for the next
    complaint: a later bounce does not trip the scope on the complaint rate."""
    daemon = make_daemon(JUDGED_RULES.replace("bounce_rate = 0.1", "bounce_rate = 0.5"))
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")

    def complain(message_id: str) -> None:
        local = agent.status(message_id)["to"]
        event = {"type": "complaint", "message_id": message_id, "recipient": local}
        assert admin.client.post("/v1/events", json=event).status_code == 200

    early = [_send_one(agent, f"lead{i}", "smb") for i in range(5)]
    complain(early[0])
    complain(early[1])  # 2 complaints of 5 sent: too few sends to judge
    for i in range(5, 10):  # then 1 bounce of 10 sent (under 50 %), while complaints stand at 20 %
        _send_one(agent, "bounce9" if i == 9 else f"lead{i}", "smb")
    assert admin.client.get("/v1/safe-mode").json() == []

    complain(early[2])  # a complaint is judged on the complaint rate: 3 of 10
    trips = admin.client.get("/v1/safe-mode").json()
    assert [(t["scope"], t["cause"]) for t in trips] == [("segment:smb", "complaint_rate")]


@pytest.mark.parametrize("tripped", ["agent:sdr-bot", "agent:other-bot"])
async def test_a_trip_recorded_after_the_claim_holds_the_message_at_the_start_of_its_send(
    redis_url: str, prefix: str, tripped: str
) -> None:
    """The claim saw no trip; the trip another daemon records before the send starts still holds the
    message, in the script that would have reserved its throttles and started it, and reserves
    nothing. A trip of a scope that is not the message's lets it start (the start looks its own
    scopes up rather than stopping at any trip), and reserves its throttles."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    store, throttles = Store(client, keys), Throttles(client, keys, lease_ms=31_000)
    record = MessageRecord(
        "m1",
        Status.QUEUED,
        agent="sdr-bot",
        from_addr="sdr@acme.example",
        to="lead@customer.example",
        to_canonical="lead@customer.example",
        to_domain="customer.example",
    )
    try:
        [claim] = await write_claimed(client, keys, [record])
        trip = Trip(tripped, "manual", "a person stopped it", 1, "admin:dana")
        await client.hset(keys.trips, trip.scope, trip.to_json())
        rule = ThrottleRule.model_validate({"scope": "recipient_domain", "limit": 5, "per": "1m"})
        buckets = throttles.buckets([rule], scope_values(record))
        started = await store.start(
            claim, "attempt 1", {"attempts": 1}, "", throttles.reservation(buckets, "m1:1"), buckets.waits
        )
        stored = await store.record("m1")
        assert stored is not None
        if tripped == "agent:sdr-bot":
            assert started.moved is Moved.HELD
            assert (stored.status, stored.held_by) == (Status.HELD, "agent:sdr-bot")
            assert await client.exists(*buckets.keys) == 0
        else:
            assert started.moved is Moved.MOVED and stored.status is Status.SENDING
            assert await client.zcard(buckets.keys[0]) == 1
    finally:
        await client.aclose()


async def test_a_signal_window_counts_each_signal_and_outlives_the_last_one_by_its_window(
    redis_url: str, prefix: str
) -> None:
    """Each signal counts once in its slot and in the totals, and the window is kept at least
    window + slot past every signal (lua/shared/signal_window.lua reads its expiry and writes it
    only when shorter), never longer than one slot more, and never without an expiry, even for a
    window written without one (a trip takes counts out of the scopes above it without touching
    their expiry)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    signals = Signals(client, keys)
    rules = SafeModeRules(window="10m")
    window_ms, slot_ms = 600_000, 600_000 // SLOTS
    kept = range(window_ms + slot_ms - 1_000, window_ms + 2 * slot_ms + 1)  # ms, PTTL just after a signal
    scopes = ["segment:s", "global"]
    try:
        for signal in ([Signal.SENT], [Signal.SENT, Signal.HARD], [Signal.SENT, Signal.SENT]):
            await signals.record(signals.call(scopes, signal, rules))
            for scope in scopes:
                assert await client.pttl(keys.signals(scope)) in kept
        await client.persist(keys.signals("global"))
        await signals.record(signals.call(scopes, [Signal.SENT], rules))
        for scope in scopes:
            counts = await client.hgetall(keys.signals(scope))
            assert await client.pttl(keys.signals(scope)) in kept
            by_slot: dict[str, int] = {}  # summed over the slots: a slot may end while this runs
            for field, value in counts.items():
                if field[0].isdigit():
                    signal_name = field.split(":")[1]
                    by_slot[signal_name] = by_slot.get(signal_name, 0) + int(value)
            assert by_slot == {"sent": 5, "hard": 1}
            assert (counts["t:sent"], counts["t:hard"]) == ("5", "1")
        assert set(await client.zrange(keys.active_scopes, 0, -1)) == set(scopes)
    finally:
        await client.aclose()
