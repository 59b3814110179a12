"""The agent's side of the API and the typed client: a recipient check that agrees with admission
and takes nothing, an agent's own list of messages, what it may send now, and `sendguard.client`
(sync and async) answering with typed models and typed errors carrying reason codes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis

from sendguard.client import (
    AsyncClient,
    BatchEmail,
    BatchRecipient,
    Client,
    Email,
    Forbidden,
    NotFound,
    TokenRefused,
)
from sendguard.state import store
from sendguard.state.keys import Keys
from tests.conftest import Api, Daemon
from tests.peers import DnsServer

ClientFor = Callable[..., Api]
RULES = """
[approvals]
mass_send_threshold = 3

[[throttle]]
scope = "agent"
limit = 100
per = "1h"

[[throttle]]
scope = "inbox"
match = "help@acme.example"
limit = 40
per = "24h"

[[throttle]]
scope = "sender_domain"
limit = 200
per = "24h"

[[throttle]]
scope = "recipient_domain"
limit = 5
per = "1h"
"""


def codes(row: dict[str, object]) -> list[str]:
    reasons = row["reasons"]
    assert isinstance(reasons, list)
    return [reason["code"] for reason in reasons]


def test_a_recipient_check_gives_admissions_verdict_and_takes_nothing(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, dns_server: DnsServer
) -> None:
    dns_server.add_mx_domain("customer.example")
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "root")
    assert admin.client.post("/v1/suppressions", json={"entries": ["gone@customer.example"]}).is_success
    held = agent.send("taken@customer.example")["id"]  # holds this recipient's cooldown
    cases = [
        "new@customer.example",
        "info@customer.example",
        "Gone+tag@customer.example",
        "taken@customer.example",
        "Taken+tag@customer.example",
        "someone@nowhere.example",
        "not an address",
    ]
    checked = agent.client.post("/v1/recipients/check", json={"to": cases})
    assert checked.status_code == 200, checked.text
    rows = checked.json()["recipients"]
    assert [row["to"] for row in rows] == cases
    assert [(row["verdict"], codes(row)) for row in rows] == [
        ("would_queue", []),
        ("rejected", ["role_account"]),
        ("rejected", ["suppressed"]),
        ("rejected", ["recipient_cooldown"]),
        ("rejected", ["recipient_cooldown"]),
        ("rejected", ["domain_not_found"]),
        ("rejected", ["invalid_address"]),
    ]
    # The cooldown is the mailbox's, and its reason never names the message holding it.
    assert held not in checked.text and "the cooldown, which ends at" in rows[3]["reasons"][0]["detail"]
    # Admission decides each the same, and the check took nothing: no cooldown, no message.
    assert agent.client.get("/v1/messages").json()["messages"][0]["id"] == held
    for row in rows:
        decided = agent.send(row["to"], subject=f"to {row['to']}")
        assert (decided["status"], codes(decided)) == (
            "queued" if row["verdict"] == "would_queue" else row["verdict"],
            codes(row),
        ), row
    too_many = agent.client.post("/v1/recipients/check", json={"to": ["a@b.example"] * 101})
    assert too_many.status_code == 422 and "to" in too_many.json()["detail"]


def test_an_agent_lists_its_own_messages_newest_first(
    make_daemon: Callable[..., Daemon],
    client_for: ClientFor,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    prefix: str,
) -> None:
    monkeypatch.setattr(store, "AGENT_INDEX_SIZE", 4)  # the cap, small enough to reach here
    daemon = make_daemon('[ingress]\nmx_check = "off"\n')
    mine = client_for(daemon, "agent", "sdr-bot")
    other = client_for(daemon, "agent", "list-bot")
    sent = [mine.send(f"lead{i}@customer.example")["id"] for i in range(4)]
    rejected = mine.send("info@customer.example")["id"]
    theirs = other.send("x@customer.example", segment="smb")["id"]
    listed = mine.client.get("/v1/messages").json()["messages"]
    assert [m["id"] for m in listed] == [rejected, *reversed(sent[1:])], "the newest 4, newest first"
    assert theirs not in {m["id"] for m in listed}
    only = mine.client.get("/v1/messages", params={"status": "rejected"}).json()["messages"]
    assert [(m["id"], codes(m)) for m in only] == [(rejected, ["role_account"])]
    assert [m["id"] for m in mine.client.get("/v1/messages?limit=2").json()["messages"]] == [
        rejected,
        sent[3],
    ]
    assert mine.client.get("/v1/messages?status=lost").status_code == 422
    with redis.Redis.from_url(redis_url) as client:
        index = Keys(prefix).agent_messages("sdr-bot")
        assert client.zcard(index) == 4 and client.pttl(index) > 0, "bounded in count and in time"
    operator = client_for(daemon, "operator", "oncall")
    assert operator.client.get("/v1/messages").status_code == 403, "an agent's own list, for agents"


def test_a_batch_admitted_in_calls_of_several_keeps_the_agent_index_to_its_cap(
    make_daemon: Callable[..., Daemon],
    client_for: ClientFor,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    prefix: str,
) -> None:
    """The admission script trims an agent's index once a call, after all its recipients: the
    newest that fit are kept, as they were when each recipient trimmed it."""
    monkeypatch.setattr(store, "AGENT_INDEX_SIZE", 4)
    monkeypatch.setattr(store, "ADMIT_GROUP", 3)  # 7 recipients: calls of 3, 3 and 1
    daemon = make_daemon('[ingress]\nmx_check = "off"\n')
    mine = client_for(daemon, "agent", "sdr-bot")
    answer = mine.client.post(
        "/v1/batches",
        json={
            "from": "alice@acme.example",
            "subject": "Hello",
            "text": "Hi",
            "agent_version": "test-1",
            "send_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat(),  # all still queued below
            "recipients": [{"to": f"p{i}@customer.example"} for i in range(7)],
        },
    ).json()
    ids = [row["id"] for row in answer["accepted"]]
    assert len(ids) == 7
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        index = Keys(prefix).agent_messages("sdr-bot")
        kept = client.zrange(index, 0, -1)
        assert len(kept) == 4 and client.pttl(index) > 0, "bounded in count and in time"
        # Those kept are the newest by the index's own order (its time, then its id).
        assert set(kept) == set(
            sorted(ids, key=lambda i: (client.hget(Keys(prefix).msg(i), "created"), i))[3:]
        )
        assert client.zcard(Keys(prefix).due) == 7 and client.hget(Keys(prefix).count, "queued") == "7"


def test_a_recipient_whose_admission_fails_leaves_those_before_it_in_its_call_queued(
    make_daemon: Callable[..., Daemon],
    client_for: ClientFor,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    prefix: str,
) -> None:
    """The admission script finishes the recipients before one that fails in the same call (their
    queue entries and counts are written once a call, after them), and a retry completes the batch:
    none is found by its idempotency key, admitted, with nothing queued."""
    monkeypatch.setattr(store, "ADMIT_GROUP", 5)
    daemon = make_daemon('[ingress]\nmx_check = "off"\nrecipient_cooldown = "0s"\n')
    mine = client_for(daemon, "agent", "sdr-bot")
    body = {
        "from": "alice@acme.example",
        "subject": "Hello",
        "text": "Hi",
        "agent_version": "test-1",
        "idempotency_key": "the-one-batch",
        "send_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat(),
        "recipients": [{"to": f"p{i}@customer.example"} for i in range(5)],
    }
    keys = Keys(prefix)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        client.set(keys.waiting("p2@customer.example"), "not a hash")  # the third recipient's write fails
        failed = mine.client.post("/v1/batches", json=body)
        assert failed.status_code == 503, failed.text
        assert client.zcard(keys.due) == 2 and client.hget(keys.count, "queued") == "2"
        client.delete(keys.waiting("p2@customer.example"))
        retried = mine.client.post("/v1/batches", json=body)
        assert retried.status_code == 201, retried.text
        assert len(retried.json()["accepted"]) == 5
        assert client.zcard(keys.due) == 5 and client.hget(keys.count, "queued") == "5"


def test_sending_status_says_what_the_agent_may_send_now(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, dns_server: DnsServer
) -> None:
    dns_server.add_mx_domain("customer.example")
    daemon = make_daemon(RULES)
    support = client_for(daemon, "agent", "support-bot")
    operator = client_for(daemon, "operator", "oncall")
    support.wait_status(support.send("ann@customer.example", **{"from": "help@acme.example"})["id"], "sent")
    for scope in ("agent:list-bot", "inbox:help@acme.example", "segment:other"):
        assert operator.client.post("/v1/safe-mode", json={"scope": scope, "reason": "test"}).is_success
    batch = support.client.post(
        "/v1/batches",
        json={
            "from": "help@acme.example",
            "subject": "Hello",
            "text": "Hi",
            "agent_version": "test-1",
            "recipients": [{"to": f"p{i}@customer.example"} for i in range(3)],
        },
    ).json()
    status = support.client.get("/v1/sending-status").json()
    assert status["agent"] == "support-bot"
    assert {w["scope"]: (w["limit"], w["used"], w["remaining"]) for w in status["throttles"]} == {
        "agent:support-bot": (100, 1, 99),
        "inbox:help@acme.example": (40, 1, 39),
        "sender_domain:acme.example": (200, 1, 199),
        "mass_send:support-bot": (2, 1, 1),  # one under mass_send_threshold; the batch is not out yet
    }
    [request] = status["approvals"]
    assert request["id"] == batch["approval"]["id"] and request["messages"] == 3
    assert (request["approvals_given"], request["approvals_needed"]) == (0, 2) and request["expires"]
    # Trips that would hold its messages: its inbox, a segment it may use; not another agent's.
    assert status["safe_mode"] == ["inbox:help@acme.example", "segment:other"]
    lister = client_for(daemon, "agent", "list-bot").client.get("/v1/sending-status").json()
    # list-bot may send as anyone at acme.example, and only to its own segments.
    assert lister["safe_mode"] == ["agent:list-bot", "inbox:help@acme.example"] and lister["approvals"] == []


async def test_the_typed_client_sync_and_async(
    make_daemon: Callable[..., Daemon], mint: Callable[..., str]
) -> None:
    daemon = make_daemon('[ingress]\nmx_check = "off"\n\n[approvals]\nmass_send_threshold = 3\n')
    daemon.listen()
    url = f"http://127.0.0.1:{daemon.env['SENDGUARD_API_PORT']}"
    token = mint("agent", "sdr-bot")
    email = Email(
        from_="Alice <alice@acme.example>",
        to="bob@customer.example",
        subject="Hi",
        text="Hello",
        agent_version="test-1",
    )
    with Client(url, token) as api:
        queued = api.send(email)
        assert queued.status == "queued" and queued.reasons == []
        rejected = api.send(email.model_copy(update={"to": "info@customer.example"}))
        assert rejected.status == "rejected" and [r.code for r in rejected.reasons] == ["role_account"]
        with pytest.raises(Forbidden) as forbidden:
            api.send(email.model_copy(update={"from_": "mallory@evil.example"}))
        assert forbidden.value.reasons == ["inbox_not_allowed"] and forbidden.value.status == 403
        with pytest.raises(NotFound):
            api.get_message("0192a3b4c5d6e7f8a9b0c1d")
    async with AsyncClient(url, token) as api:
        read = await api.get_message(queued.id)
        assert (read.id, read.from_, read.to) == (queued.id, "alice@acme.example", "bob@customer.example")
        recipients = [BatchRecipient(to=f"p{i}@customer.example") for i in range(3)]
        batch = await api.send_batch(
            BatchEmail(
                from_=email.from_,
                subject=email.subject,
                text=email.text,
                agent_version=email.agent_version,
                recipients=recipients,
            )
        )
        assert batch.approval is not None and batch.approval.approvals_needed == 2
        listed = await api.list_messages(status="rejected")
        assert [m.id for m in listed.messages] == [rejected.id]
        verdicts = await api.check_recipients(["carol@customer.example"])
        assert verdicts.recipients[0].verdict == "would_queue"
        assert (await api.sending_status()).approvals[0].id == batch.approval.id
        cancelled = await api.cancel(batch.accepted[0].id)
        assert cancelled.status == "cancelled"
    async with AsyncClient(url, "sg_abc_forged") as api:
        with pytest.raises(TokenRefused) as refused:
            await api.sending_status()
        assert refused.value.status == 401 and "sg_abc_forged" not in str(refused.value)
