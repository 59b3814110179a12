"""Incident drills on real parts: a daemon killed mid-run, Redis restarted under a daemon, a relay
saying "try later", a rogue agent submitting singles to one segment as fast as it can, and a
hijacked agent trying every dodge of issue 11.
"""

from __future__ import annotations

import http.client
import json
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Api, Daemon, RedisServer, message, wait_until
from tests.peers import DnsServer, SmtpSink

ClientFor = Callable[[Daemon, str, str], Api]
UNFINISHED = ("queued", "deferred", "sending")
RULES = """
[ingress]
mx_check = "off"
recipient_cooldown = "0s"
"""
# Drills of delivery, not of approval: their bursts of one agent ask for no mass-send request.
UNAPPROVED = RULES + "\n[approvals]\nmass_send_threshold = 1000000\n"


@pytest.mark.drill
def test_kill_9_mid_delivery_loses_nothing_and_counts_every_duplicate(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    # The relay answers DATA after 0.2 s: a worker spends most of each send waiting for that reply,
    # so a kill finds some mid-send even when a busy machine slows the daemon's own work.
    smtp.delay = 0.2
    first = make_daemon(UNAPPROVED, process=True, workers="8")  # it gets kill -9
    api = client_for(first, "agent", "sdr-bot")
    ids = [api.send(f"lead{n}@customer.example")["id"] for n in range(80)]
    # Killed while the relay holds a message's data unanswered: a send that reached the relay and
    # is not yet recorded, whatever the load.
    wait_until(
        lambda: len(smtp.snapshot()) >= 15 and smtp.answering > 0,
        what="deliveries to be under way, one of them waiting for the relay's answer",
    )
    first.kill()
    delivered_before_kill = len(smtp.snapshot())
    assert delivered_before_kill < len(ids), "the kill came too late to test anything"

    second = make_daemon(UNAPPROVED, workers="8")
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


def _readiness(daemon: Daemon) -> int:
    return daemon.http.get("/readyz", timeout=10).status_code


@pytest.mark.drill
def test_redis_restarted_mid_run_loses_nothing_and_readiness_follows_it(
    make_daemon: Callable[..., Daemon], mint: Callable[..., str], own_redis: RedisServer, smtp: SmtpSink
) -> None:
    smtp.delay = 0.05
    daemon = make_daemon(UNAPPROVED, process=True, redis_url=own_redis.url)
    api = Api(daemon, mint("agent", "sdr-bot", daemon=daemon))
    try:
        accepted = [api.send(f"before{n}@customer.example")["id"] for n in range(60)]
        wait_until(lambda: len(smtp.snapshot()) >= 10, what="deliveries to be under way")
        own_redis.stop()
        assert len(smtp.snapshot()) < len(accepted), "Redis went away too late to test anything"
        wait_until(lambda: _readiness(daemon) == 503, what="/readyz to report Redis gone")
        refused = api.client.post("/v1/messages", json=message("during@customer.example"))
        assert refused.status_code == 503, refused.text

        own_redis.start()
        wait_until(lambda: _readiness(daemon) == 200, what="/readyz to report Redis back")
        # Ready means ready: from here on no request fails, though every pooled connection died.
        with ThreadPoolExecutor(max_workers=16) as pool:  # agents polling at once use many of them
            list(pool.map(api.status, accepted))
        accepted += [api.send(f"after{n}@customer.example")["id"] for n in range(20)]
        records = [api.wait_status(message_id, "sent", timeout=60) for message_id in accepted]
    finally:
        api.close()

    arrivals = Counter(r.message_id for r in smtp.snapshot())
    assert set(arrivals) == {f"<{message_id}.sg@acme.example>" for message_id in accepted}
    duplicates = sum(count - 1 for count in arrivals.values())
    uncertain = sum(int(record["uncertain"]) for record in records)
    assert duplicates <= uncertain, (duplicates, uncertain)
    # The per-status counts, kept by the same scripts as the records, came through it in step.
    wait_until(
        lambda: all(daemon.metric("sendguard_messages_waiting", state=s) == 0 for s in UNFINISHED),
        what="the waiting counts to drop to zero",
    )


def _deferrals(record: dict[str, Any], code: str) -> int:
    """How often the relay put this message off with `code`, as its history tells."""
    return sum(1 for h in record["history"] if h["cause"] == "smtp_4xx" and f": {code} " in h["detail"])


@pytest.mark.drill
def test_a_relay_saying_try_later_defers_and_then_delivers_everything_once(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    # Enough attempts that the length of the episode on a busy machine is not what gets tested.
    daemon = make_daemon(RULES, max_attempts="40")
    api = client_for(daemon, "agent", "sdr-bot")
    smtp.mail_reply = "454 4.7.0 Throttling failure: Maximum sending rate exceeded"
    ids = [api.send(f"lead{n}@customer.example")["id"] for n in range(20)]
    wait_until(
        lambda: all(_deferrals(api.status(m), "454") for m in ids), what="every message to meet the 454"
    )
    smtp.mail_reply = None
    smtp.data_reply = "421 4.4.2 Too many connections, closing transmission channel"
    wait_until(
        lambda: all(_deferrals(api.status(m), "421") for m in ids), what="every message to meet the 421"
    )
    assert smtp.received == []
    smtp.data_reply = None
    records = [api.wait_status(m, "sent", timeout=30) for m in ids]

    arrivals = Counter(r.message_id for r in smtp.received)
    assert arrivals == Counter(f"<{m}.sg@acme.example>" for m in ids), "each message arrives exactly once"
    assert all(int(r["uncertain"]) == 0 for r in records)
    statuses = {h["status"] for r in records for h in r["history"]}
    assert not {"bounced", "failed"} & statuses, statuses
    deferred = sum(_deferrals(r, "454") + _deferrals(r, "421") for r in records)
    assert daemon.metric("sendguard_messages_deferred_total", cause="smtp_4xx") == deferred
    assert daemon.metric("sendguard_smtp_replies_total", reply_class="4xx", stage="mail") == sum(
        _deferrals(r, "454") for r in records
    )
    assert daemon.metric("sendguard_smtp_replies_total", reply_class="4xx", stage="data") == sum(
        _deferrals(r, "421") for r in records
    )
    assert daemon.metric("sendguard_messages_sent_total") == len(ids)
    assert daemon.metric("sendguard_messages_bounced_total") == 0
    assert daemon.metric("sendguard_messages_failed_total") == 0
    assert daemon.metric("sendguard_bounces_total", type="hard") == 0  # exported at 0 from the start
    assert daemon.metric("sendguard_relay_circuit_opens_total") == 0, "a reply proves the relay is there"


# A runaway loop's 12,000 singles against the default threshold of 25 fill some 460 approval requests,
# each raced for by 16 connections. The gate is one script whatever the threshold, so a threshold of 4
# puts the same races (tier 0 running out, a request filling and the next opening) at 240 requests,
# a tenth of the submissions.
ROGUE_SUBMISSIONS = 1_200
MASS_SEND_THRESHOLD = 4


def _rogue_burst(daemon: Daemon, token: str, count: int, threads: int) -> dict[str, str]:
    """Single submissions to one segment from `threads` keep-alive connections, as fast as they go;
    the status of each accepted message by its id.

    The standard library's client, not httpx: on two shared cores httpx spends about 15 times the
    CPU per request, which would slow the burst down more than the daemon does.
    """
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def submitter(first: int) -> dict[str, str]:
        statuses: dict[str, str] = {}
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        try:
            for n in range(first, count, threads):
                body = json.dumps(message(f"lead{n}@customer.example", segment="cfo-na-q4"))
                connection.request("POST", "/v1/messages", body, headers)
                response = connection.getresponse()
                answer = response.read()
                assert response.status == 201, answer
                decision = json.loads(answer)
                statuses[decision["id"]] = decision["status"]
        finally:
            connection.close()
        return statuses

    statuses: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for part in pool.map(submitter, range(threads)):
            statuses |= part
    return statuses


@pytest.mark.drill
def test_a_rogue_agents_burst_of_singles_gets_only_tier_zero_out(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    # A process of its own: the burst's clients and the daemon then use both cores, not one GIL.
    # A drill of the mass-send count: the cap on one agent's waiting requests (test_approvals.py)
    # would refuse most of the burst before its requests are counted.
    approvals = f"\n[approvals]\nmass_send_threshold = {MASS_SEND_THRESHOLD}\nmax_pending_requests = 1000\n"
    daemon = make_daemon(RULES + approvals, process=True)
    agent = client_for(daemon, "agent", "sdr-bot")
    operator = client_for(daemon, "operator", "omar")
    token = str(agent.client.headers["Authorization"]).removeprefix("Bearer ")

    statuses = _rogue_burst(daemon, token, ROGUE_SUBMISSIONS, threads=16)
    tier_zero = MASS_SEND_THRESHOLD - 1
    waiting = ROGUE_SUBMISSIONS - tier_zero
    assert Counter(statuses.values()) == {"queued": tier_zero, "pending_approval": waiting}
    # Once the counts show every submission and nothing unfinished, the sink has all that will leave.
    wait_until(
        lambda: (
            daemon.metric("sendguard_messages_waiting", state="pending_approval") == waiting
            and all(daemon.metric("sendguard_messages_waiting", state=s) == 0 for s in UNFINISHED)
        ),
        what="the waiting counts to show every submission and nothing unfinished",
    )
    queued = {
        f"<{message_id}.sg@acme.example>" for message_id, status in statuses.items() if status == "queued"
    }
    assert Counter(r.message_id for r in smtp.received) == Counter(queued), "the tier-0 ones, once each"
    # Each request holds what its approvers are shown: the message that opened it and at most a
    # threshold's worth that joined it (the waiting counts above hold all of them).
    requests = operator.client.get("/v1/approvals", params={"status": "pending"}).json()
    assert requests and {r["tier"] for r in requests} == {2}
    assert all(r["messages"] + r["headroom"] == MASS_SEND_THRESHOLD + 1 for r in requests)
    contents = operator.client.get(f"/v1/approvals/{requests[0]['id']}").json()["contents"]
    assert contents["waiting"] == requests[0]["messages"] <= MASS_SEND_THRESHOLD + 1


# --- a hijacked agent --------------------------------------------------------------------------

HIJACK_THRESHOLD = 25
HIJACK_RULES = f"""
[ingress]
mx_check = "enforce"
recipient_cooldown = "0s"

[approvals]
mass_send_threshold = {HIJACK_THRESHOLD}
mass_send_window = "1h"
"""


def _report(name: str, **figures: float) -> None:
    """Hand a drill's figures to `python -m bench --drills`, which names a file to append them to."""
    path = os.environ.get("SENDGUARD_DRILL_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"drill": name, **figures}) + "\n")


@pytest.mark.drill
def test_a_hijacked_agent_gets_no_more_out_than_its_rules_allow(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, dns_server: DnsServer
) -> None:
    """sdr-bot, prompt-injected, tries every dodge issue 11 lists against one real daemon: labels
    that would split a mass send, events about other agents' mail, spellings of suppressed
    addresses, a second look-alike approver, raw bytes that are not text. Counted at the relay."""
    for domain in ("customer.example", "other.example", "sub.blocked.example"):
        dns_server.add_mx_domain(domain)
    daemon = make_daemon(HIJACK_RULES)
    rogue = client_for(daemon, "agent", "sdr-bot")
    honest = client_for(daemon, "agent", "support-bot")
    admin = client_for(daemon, "admin", "sam")
    later = (datetime.now(UTC) + timedelta(days=40)).isoformat()

    # The honest agent's mail, sent and waiting, which the rogue must not be able to touch.
    honest_sent = honest.send("victim@other.example", **{"from": "help@acme.example"})["id"]
    honest_waiting = honest.send("victim@other.example", **{"from": "help@acme.example"}, send_at=later)["id"]
    honest.wait_status(honest_sent, "sent")

    # 1. Labels: 200 messages each way the probe found, with every other field varied too.
    dodges: list[dict[str, Any]] = []
    for i in range(200):
        dodges.append({})  # no segment, no campaign
        dodges.append({"segment": f"Seg-{i}"})  # a new segment per message
        dodges.append({"campaign": f"q4-{i // 24}"})  # a new campaign every 24
    for n, labels in enumerate(dodges):
        sender = ["Alice <alice@acme.example>", "ALICE+x@Acme.example", f"rep{n % 7}@acme.example"][n % 3]
        rogue.client.post(
            "/v1/messages",
            json=message(f"lead{n}@customer.example", **{"from": sender}, run_id=f"run-{n % 5}", **labels),
        )
    for b in range(8):  # batches of 24, no segment
        batch = {
            **{k: v for k, v in message("x@customer.example").items() if k != "to"},
            "recipients": [{"to": f"batch{b}-{i}@customer.example"} for i in range(24)],
        }
        sent = rogue.client.post("/v1/batches", json=batch)  # or refused: too many requests waiting
        assert sent.status_code == 201 or (sent.status_code == 403 and "max_pending_requests" in sent.text)
    wait_until(  # the honest agent's message due in 40 days is the one left queued
        lambda: [daemon.metric("sendguard_messages_waiting", state=s) for s in UNFINISHED] == [1, 0, 0],
        what="every message not waiting for people to be answered by the relay",
    )
    rogue_at_relay = sum(1 for r in smtp.received if r.rcpt_tos[0].endswith("@customer.example"))
    assert rogue_at_relay <= HIJACK_THRESHOLD - 1

    # 2. Events: about the honest agent's messages and recipients, from the rogue's token.
    forged = [
        {"type": "complaint", "message_id": honest_sent, "recipient": "victim@other.example"},
        {"type": "complaint", "recipient": "victim@other.example"},
        {"type": "unsubscribe", "recipient": "ceo@other.example"},
        {
            "type": "reply",
            "message_id": honest_sent,
            "recipient": "victim@other.example",
            "sentiment": "abusive",
        },
    ]
    answers = [rogue.client.post("/v1/events", json=event).status_code for event in forged * 3]
    assert 200 not in answers, answers
    scopes = {t["scope"] for t in admin.client.get("/v1/safe-mode").json()}
    foreign_trips = len(scopes - {"agent:sdr-bot"})
    assert foreign_trips == 0, scopes
    assert honest.status(honest_waiting)["status"] == "queued"
    suppressed = admin.client.get("/v1/suppressions").json()
    assert suppressed == {"addresses": [], "domains": []}

    # 3. Suppressions: spellings of a suppressed mailbox and a subdomain of a suppressed domain.
    added = admin.client.post(
        "/v1/suppressions", json={"entries": ["bob@customer.example", "blocked.example"]}
    )
    assert added.status_code == 200, added.text
    spellings = [
        "bob@customer.example",
        "BOB@Customer.example",
        "bob+q4@customer.example",
        "eve@sub.blocked.example",
    ]
    statuses = [rogue.send(address)["status"] for address in spellings]
    assert set(statuses) == {"rejected"}, statuses
    # One that was waiting for 40 days when its recipient unsubscribed is cancelled at once.
    carol = honest.send("carol@other.example", **{"from": "help@acme.example"}, send_at=later)["id"]
    assert admin.client.post("/v1/suppressions", json={"entries": ["carol@other.example"]}).status_code == 200
    assert honest.status(carol)["status"] == "cancelled"
    suppressed_at_relay = sum(
        1
        for r in smtp.received
        for to in r.rcpt_tos
        if to.endswith("blocked.example") or to.startswith(("bob", "carol"))
    )
    assert suppressed_at_relay == 0

    # 4. Separation of duties: one person in two spellings cannot give both approvals.
    [request, *_] = admin.client.get("/v1/approvals", params={"status": "pending"}).json()
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    dana_again = client_for(daemon, "approver", "Dana", "--group", "Ops")
    first = dana.client.post(f"/v1/approvals/{request['id']}/approve", json={"comment": "checked"})
    assert first.status_code == 200, first.text
    second = dana_again.client.post(f"/v1/approvals/{request['id']}/approve", json={"comment": "me again"})
    assert second.status_code == 409, second.text

    # 5. Raw bytes that are not text are a 422 naming the field, never a 500 after a partial send.
    raw = (
        b'{"from": "alice@acme.example", "to": "zed@customer.example", "subject": "\xed\xa0\x80", '
        b'"text": "x", "agent_version": "t"}'
    )
    broken = rogue.client.post("/v1/messages", content=raw, headers={"Content-Type": "application/json"})
    assert broken.status_code == 422, broken.text

    print(
        f"\nhijacked agent: {rogue_at_relay} of {len(dodges) + 8 * 24} messages reached the relay without "
        f"approval (at most {HIJACK_THRESHOLD - 1}); {foreign_trips} trips outside its own scope; "
        f"{suppressed_at_relay} messages to suppressed recipients at the relay"
    )
    _report(
        "hijacked agent",
        past_approval=rogue_at_relay,
        allowed=HIJACK_THRESHOLD - 1,
        foreign_trips=foreign_trips,
        suppressed_at_relay=suppressed_at_relay,
    )
