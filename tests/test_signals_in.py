"""Signals in, end to end: events, DSNs, ARF reports and replies reaching a real daemon.

They arrive by `POST /v1/events`, by `POST /v1/inbound` and by the inbound SMTP listener. The
mail is built from the samples in tests/samples, rewritten to be about a message the daemon
really sent to the SMTP sink: its id, its Message-ID, its recipient and its signed bounce address.
Mail that does not prove which message it is about is tried in tests/test_forged_mail.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import aiosmtplib
import httpx
import pytest
import redis.asyncio as aioredis

from sendguard.governance.audit import entry as audit_entry
from sendguard.state.keys import Keys
from sendguard.state.store import Store
from tests.conftest import Api, Daemon, free_port, wait_until
from tests.peers import SmtpSink

MakeDaemon = Callable[..., Daemon]

SAMPLES = Path(__file__).parent / "samples"
BOUNCE_DOMAIN = "bounce.acme.example"
FEEDBACK_ADDRESS = f"fbl@{BOUNCE_DOMAIN}"
GLOBAL = {"scope_kind": "global", "scope": "global"}
NO_COOLDOWN = '[ingress]\nrecipient_cooldown = "0s"\n'
# The fake sendguard id each sample is about, and the address it was sent to (or replies from).
FAKES = {
    "dsn_postfix_hard.eml": ("0192a3b4c5d6e7f8a9b0c1d", "dana@customer.example"),
    "dsn_multi_recipient.eml": ("0192a3b4c5d6e7f8a9b0c3f", "ops@partner.example"),
    "arf_abuse.eml": ("0192a3b4c5d6e7f8a9b0c4a", "riley@mailprovider.example"),
    "reply_positive.eml": ("0192a3b4c5d6e7f8a9b0c2e", "dana@customer.example"),
    "reply_unsubscribe.eml": ("0192a3b4c5d6e7f8a9b0c3f", "lee@customer.example"),
    "reply_abusive.eml": ("0192a3b4c5d6e7f8a9b0c4a", "riley@mailprovider.example"),
}
UNKNOWN_ID = "0192a3b4c5d6e7f8a9b0fff"
FAKE_MAC = "0f1e2d3c4b5a69788796a5b4"  # the samples' bounce addresses carry this made-up mac


@dataclasses.dataclass(frozen=True)
class Sent:
    """A message the relay accepted: sendguard's id, its recipient, the Message-ID it carried and
    its envelope sender (the signed bounce address, with a bounce domain)."""

    id: str
    to: str
    header: str
    envelope_sender: str


def at_relay(smtp: SmtpSink, message_id: str, to: str) -> Sent:
    """The message `message_id`, sent to `to`, as the relay received it."""
    found = next((r for r in smtp.received if f"<{message_id}." in (r.message_id or "")), None)
    assert found is not None and found.message_id, f"message {message_id} is sent but not at the relay"
    return Sent(message_id, to, found.message_id, found.mail_from)


class Gateway(NamedTuple):
    """A running daemon with an agent client (sdr-bot) and an admin client (dana)."""

    daemon: Daemon
    agent: Api
    admin: Api


Start = Callable[..., Gateway]


@pytest.fixture
def start(make_daemon: MakeDaemon, client_for: Callable[..., Api]) -> Callable[..., Gateway]:
    """Start a daemon (rules, settings) with its two clients."""

    def run(rules: str = "", **settings: str) -> Gateway:
        daemon = make_daemon(rules, **settings)
        return Gateway(daemon, client_for(daemon, "agent", "sdr-bot"), client_for(daemon, "admin", "dana"))

    return run


# --- helpers -------------------------------------------------------------------------------------


def _deliver(agent: Api, smtp: SmtpSink, to: str) -> Sent:
    """Submit a message and wait until the relay has it; each call sends one of its own, the same
    content to the same recipient included (its own idempotency key, not one derived from it)."""
    message_id = agent.send(to, idempotency_key=secrets.token_hex(8))["id"]
    agent.wait_status(message_id, "sent")
    return at_relay(smtp, message_id, to)


def _waiting(agent: Api, to: str) -> str:
    """A message to `to` that waits in the queue for an hour; its id."""
    later = agent.send(to, send_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    assert later["status"] == "queued", later
    return str(later["id"])


def _about(sample: str, sent: Sent, *, untraceable: bool = False) -> bytes:
    """A sample rewritten to be about `sent`: its id, its recipient and, when it was sent with
    one, its signed bounce address swapped in.

    `untraceable` first drops every line naming the id (the returned Message-ID, Return-Path and
    all bounce addresses), so only the recipient is left to tie the mail back.
    """
    fake_id, fake_to = (value.encode() for value in FAKES[sample])
    raw = (SAMPLES / sample).read_bytes()
    assert fake_id in raw and fake_to in raw.lower(), f"{sample} no longer has {fake_id!r}, {fake_to!r}"
    if untraceable:
        raw = b"".join(line for line in raw.splitlines(keepends=True) if fake_id not in line)
    raw = re.sub(re.escape(fake_to), sent.to.encode(), raw, flags=re.IGNORECASE)
    if sent.envelope_sender.startswith("bounces+"):
        raw = raw.replace(
            f"bounces+{FAKES[sample][0]}.{FAKE_MAC}@{BOUNCE_DOMAIN}".encode(), sent.envelope_sender.encode()
        )
    return raw.replace(fake_id, sent.id.encode())


def _inbound(api: Api, raw: bytes | Iterator[bytes]) -> httpx.Response:
    return api.client.post("/v1/inbound", content=raw, headers={"Content-Type": "message/rfc822"})


def _applied(api: Api, raw: bytes) -> dict[str, Any]:
    """POST raw mail that must be understood; the daemon's account of it."""
    response = _inbound(api, raw)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _event(api: Api, **fields: str) -> dict[str, Any]:
    response = api.client.post("/v1/events", json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _suppressed(admin: Api) -> list[str]:
    addresses: list[str] = admin.client.get("/v1/suppressions").json()["addresses"]
    return addresses


def _history(api: Api, message_id: str) -> list[tuple[str, str]]:
    """(cause, detail) of each recorded step of a message."""
    return [(step["cause"], step["detail"]) for step in api.status(message_id)["history"]]


def _causes(api: Api, message_id: str) -> list[str]:
    return [cause for cause, _ in _history(api, message_id)]


def _global_bounce_rate(daemon: Daemon, sent: int, bounced: bool = False) -> float | None:
    """The global bounce-rate gauge, once the maintenance loop has counted `sent` in the window
    (and, if `bounced`, a bounce too: a refresh from before the bounce shows the sends alone)."""
    wait_until(
        lambda: (
            daemon.metric("sendguard_window_sent", **GLOBAL) == sent
            and (not bounced or bool(daemon.metric("sendguard_bounce_rate", **GLOBAL)))
        ),
        what="the maintenance loop to refresh the per-scope gauges",
    )
    return daemon.metric("sendguard_bounce_rate", **GLOBAL)


def _unparsed(admin: Api) -> list[dict[str, Any]]:
    response = admin.client.get("/v1/inbound/unparsed")
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


async def _over_smtp(port: int, recipient: str, raw: bytes) -> aiosmtplib.SMTPResponse:
    """Hand raw mail to the inbound listener as a remote MTA returns a bounce: MAIL FROM:<>."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
        await client.mail("")
        await client.rcpt(recipient)
        return await client.data(raw)


# --- POST /v1/events -----------------------------------------------------------------------------


def test_a_hard_bounce_event_bounces_suppresses_and_counts_once(start: Start, smtp: SmtpSink) -> None:
    # 1 hard bounce of 2 sent stays under 75 %; the same bounce counted twice would trip.
    daemon, agent, admin = start("[safe_mode]\nmin_sent = 2\nbounce_rate = 0.75\n")
    bounced = _deliver(agent, smtp, "dana@customer.example")
    _deliver(agent, smtp, "lee@customer.example")
    report = {"type": "bounce", "message_id": bounced.header, "status": "5.1.1", "detail": "user unknown"}

    first = _event(agent, **report)
    assert first == {
        "type": "bounce",
        "message_id": bounced.id,
        "sentiment": None,
        "unsubscribe": False,
        "suppressed": "dana@customer.example",
        "cancelled": 0,
        "tripped": [],
        "repeated": False,
    }
    assert daemon.metric("sendguard_bounces_total", type="hard") == 1
    assert _event(agent, **report)["repeated"]  # the agent's report again: nothing done, nothing written
    assert not _event(admin, **report)["repeated"]  # the same report from an admin proves more

    assert admin.client.get("/v1/safe-mode").json() == []
    assert _global_bounce_rate(daemon, sent=2, bounced=True) == 0.5
    # The agent's own report counted on its own scope alone; the admin's added the others once.
    assert daemon.metric("sendguard_bounce_rate", scope_kind="agent", scope="sdr-bot") == 0.5
    assert agent.status(bounced.id)["status"] == "bounced"
    assert _causes(agent, bounced.id).count("bounce_report") == 1
    assert _suppressed(admin) == ["dana@customer.example"]
    again = agent.send("dana@customer.example", subject="Another question")
    assert again["status"] == "rejected"
    assert [reason["code"] for reason in again["reasons"]] == ["suppressed"]


def test_a_bounce_reported_twice_is_one_bounce_on_the_counter_too(start: Start, smtp: SmtpSink) -> None:
    daemon, agent, _ = start()
    sent = _deliver(agent, smtp, "dana@customer.example")

    for _ in range(2):
        _event(agent, type="bounce", message_id=sent.id, status="5.1.1")

    assert daemon.metric("sendguard_bounces_total", type="hard") == 1


def test_a_soft_bounce_and_a_delivery_are_recorded_without_consequences(start: Start, smtp: SmtpSink) -> None:
    # One message sent: a soft bounce counted as hard would make the bounce rate 100 %.
    daemon, agent, admin = start("[safe_mode]\nmin_sent = 1\nbounce_rate = 0.5\n")
    sent = _deliver(agent, smtp, "dana@customer.example")

    soft = _event(agent, type="bounce", bounce_type="soft", message_id=sent.id, status="4.2.2")
    delivered = _event(agent, type="delivered", message_id=sent.id, detail="250 2.0.0 stored")

    assert (soft["message_id"], soft["suppressed"], soft["tripped"]) == (sent.id, None, [])
    assert (delivered["message_id"], delivered["suppressed"]) == (sent.id, None)
    assert agent.status(sent.id)["status"] == "sent"
    assert _history(agent, sent.id)[-2:] == [
        ("bounce", "soft bounce 4.2.2 (via api (sdr-bot))"),
        ("delivered", "delivered 250 2.0.0 stored (via api (sdr-bot))"),
    ]
    assert _suppressed(admin) == []
    assert admin.client.get("/v1/safe-mode").json() == []
    assert daemon.metric("sendguard_bounces_total", type="soft") == 1
    assert daemon.metric("sendguard_bounces_total", type="hard") == 0  # exported at 0, never counted
    assert _global_bounce_rate(daemon, sent=1) == 0


def test_complaints_and_unsubscribes_suppress_and_cancel_what_waits(start: Start, smtp: SmtpSink) -> None:
    daemon, agent, admin = start(NO_COOLDOWN)
    complained = _deliver(agent, smtp, "riley@other.example")
    unsubscribed = _deliver(agent, smtp, "lee@customer.example")
    waiting = _waiting(agent, "lee@customer.example")

    complaint = _event(admin, type="complaint", message_id=complained.header, detail="Feedback-Type: abuse")
    # Only the address is known: tied to the last message sent there, whatever its case.
    unsubscribe = _event(admin, type="unsubscribe", recipient="Lee@Customer.example")

    assert (complaint["message_id"], complaint["suppressed"]) == (complained.id, "riley@other.example")
    assert unsubscribe["message_id"] == unsubscribed.id
    assert (unsubscribe["suppressed"], unsubscribe["cancelled"]) == ("lee@customer.example", 1)
    assert _suppressed(admin) == ["lee@customer.example", "riley@other.example"]
    cancelled = agent.status(waiting)
    assert cancelled["status"] == "cancelled"
    assert cancelled["reasons"][0]["code"] == "recipient_suppressed"
    assert _causes(agent, complained.id)[-1] == "complaint"
    assert _causes(agent, unsubscribed.id)[-1] == "unsubscribe"
    assert daemon.metric("sendguard_complaints_total") == 1
    assert daemon.metric("sendguard_unsubscribes_total") == 1


@pytest.mark.parametrize("kind", ["bounce", "complaint", "reply", "unsubscribe"])
def test_an_event_that_matches_no_message_is_counted_and_moves_nothing(
    start: Start, client_for: Callable[..., Api], kind: str
) -> None:
    # Even from an operator: only an event about a message sendguard sent may suppress or cancel.
    # (It used to suppress the recipient it named; POST /v1/suppressions is the route for that.)
    daemon, agent, admin = start(NO_COOLDOWN)
    operator = client_for(daemon, "operator", "olive")
    waiting = _waiting(agent, "gone@third.example")
    text = {"text": "Stop emailing me, remove me from your list."} if kind == "reply" else {}

    by_id = _event(operator, type=kind, message_id=UNKNOWN_ID, recipient="gone@third.example", **text)
    by_recipient = _event(operator, type=kind, recipient="Gone@Third.example", **text)

    assert (by_id["message_id"], by_id["suppressed"], by_id["cancelled"]) == (UNKNOWN_ID, None, 0)
    assert (by_recipient["message_id"], by_recipient["suppressed"], by_recipient["cancelled"]) == (
        None,
        None,
        0,
    )
    assert daemon.metric("sendguard_events_unmatched_total", type=kind) == 2
    assert _suppressed(admin) == []
    assert agent.status(waiting)["status"] == "queued"
    assert admin.client.get("/v1/safe-mode").json() == []


def test_a_malformed_event_gets_422_naming_the_field(start: Start) -> None:
    _, agent, admin = start()
    cases = [
        ({"type": "bounce"}, "message_id or recipient"),
        ({"type": "bounce", "message_id": "<not-ours@acme.example>"}, "message_id"),
        ({"type": "reply", "message_id": UNKNOWN_ID, "bounce_type": "hard"}, "bounce_type"),
        ({"type": "opened", "message_id": UNKNOWN_ID}, "type"),
    ]

    answers = [agent.client.post("/v1/events", json=body) for body, _ in cases]

    for (body, field), answer in zip(cases, answers, strict=True):
        assert answer.status_code == 422, (body, answer.text)
        assert field in answer.json()["detail"], (body, answer.json())
    assert answers[-1].json()["errors"][0]["field"] == "type"
    assert _suppressed(admin) == []


# --- POST /v1/inbound: reports ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "settings"),
    [
        pytest.param("dsn_postfix_hard.eml", {}, id="by-returned-message-id"),
        pytest.param("dsn_multi_recipient.eml", {"bounce_domain": BOUNCE_DOMAIN}, id="by-signed-address"),
    ],
)
def test_a_dsn_ties_back_to_its_message_bounces_it_and_suppresses(
    start: Start, smtp: SmtpSink, sample: str, settings: dict[str, str]
) -> None:
    daemon, agent, admin = start(NO_COOLDOWN, **settings)
    # Two messages to one address: only the one the DSN names may bounce.
    messages = [_deliver(agent, smtp, "dana@customer.example") for _ in range(2)]

    out = _applied(agent, _about(sample, messages[0]))

    assert out["kind"] == "dsn"
    assert "1 hard bounce (5." in out["summary"], out["summary"]
    bounce = out["events"][0]
    assert (bounce["type"], bounce["message_id"]) == ("bounce", messages[0].id)
    assert bounce["suppressed"] == "dana@customer.example"
    assert [agent.status(m.id)["status"] for m in messages] == ["bounced", "sent"]
    assert "bounce_report" in _causes(agent, messages[0].id)
    assert _suppressed(admin) == ["dana@customer.example"]  # not the report's other recipients
    assert daemon.metric("sendguard_inbound_messages_total", kind="dsn") == 1
    assert daemon.metric("sendguard_inbound_messages_total", kind="unreferenced") == 0


def test_a_dsn_that_names_only_a_recipient_is_kept_and_moves_nothing(
    start: Start, client_for: Callable[..., Api], smtp: SmtpSink
) -> None:
    # Even from an operator: raw mail is a stranger's word, whoever hands it in. (A recipient
    # alone used to tie it to the last message sent there; POST /v1/events still does that.)
    daemon, agent, admin = start(NO_COOLDOWN)
    sent = _deliver(agent, smtp, "dana@customer.example")
    operator = client_for(daemon, "operator", "olive")

    response = _inbound(operator, _about("dsn_postfix_hard.eml", sent, untraceable=True))

    assert response.status_code == 422, response.text
    refused = response.json()
    assert refused["error"] == "unreferenced"
    assert "no valid reference" in refused["detail"]
    assert agent.status(sent.id)["status"] == "sent"
    assert _causes(agent, sent.id)[-1] == "relay_accepted"
    assert _suppressed(admin) == []
    [kept] = _unparsed(admin)
    assert (kept["id"], kept["kind"], kept["source"]) == (refused["kept_as"], "unreferenced", "api (olive)")
    assert daemon.metric("sendguard_inbound_messages_total", kind="unreferenced") == 1
    assert daemon.metric("sendguard_inbound_messages_total", kind="dsn") == 0
    assert daemon.metric("sendguard_bounces_total", type="hard") == 0


def test_an_arf_abuse_report_is_a_complaint_that_suppresses(start: Start, smtp: SmtpSink) -> None:
    daemon, agent, admin = start()
    sent = _deliver(agent, smtp, "riley@other.example")

    out = _applied(agent, _about("arf_abuse.eml", sent))

    assert (out["kind"], out["summary"]) == ("arf", "ARF from Yahoo!-Mail-Feedback/2.0: abuse complaint")
    [complaint] = out["events"]
    assert (complaint["type"], complaint["message_id"]) == ("complaint", sent.id)
    assert complaint["suppressed"] == "riley@other.example"
    assert agent.status(sent.id)["status"] == "sent"
    assert _causes(agent, sent.id)[-1] == "complaint"
    assert _suppressed(admin) == ["riley@other.example"]
    assert daemon.metric("sendguard_complaints_total") == 1
    assert daemon.metric("sendguard_inbound_messages_total", kind="arf") == 1


# --- replies ---------------------------------------------------------------------------------------


def test_a_reply_is_classified_and_cancels_the_sends_waiting_for_its_author(
    start: Start, smtp: SmtpSink
) -> None:
    daemon, agent, admin = start(NO_COOLDOWN)
    sent = _deliver(agent, smtp, "dana@customer.example")
    follow_up = _waiting(agent, "dana@customer.example")

    out = _applied(agent, _about("reply_positive.eml", sent))

    assert (out["kind"], out["summary"]) == ("reply", f"reply from dana@customer.example to {sent.id}")
    [reply] = out["events"]
    assert (reply["type"], reply["message_id"], reply["sentiment"]) == ("reply", sent.id, "positive")
    assert (reply["unsubscribe"], reply["suppressed"], reply["cancelled"]) == (False, None, 1)
    cancelled = agent.status(follow_up)
    assert cancelled["status"] == "cancelled"
    assert cancelled["reasons"][0]["code"] == "recipient_replied"
    assert agent.status(sent.id)["status"] == "sent"
    assert _history(agent, sent.id)[-1] == ("reply", "reply: positive (via api (sdr-bot))")
    assert _suppressed(admin) == []
    assert daemon.metric("sendguard_replies_total", sentiment="positive") == 1


def test_a_reply_from_another_address_than_the_one_mailed_is_kept_and_cancels_nothing(
    start: Start, smtp: SmtpSink
) -> None:
    # Dana may answer from her other address, but anyone can write a From: the reply must come
    # from the address the message it names went to, or a person looks at it.
    daemon, agent, admin = start(NO_COOLDOWN)
    sent = _deliver(agent, smtp, "dana@customer.example")
    follow_up = _waiting(agent, "dana@customer.example")
    alias = dataclasses.replace(sent, to="dana.whitfield@customer.example")

    response = _inbound(agent, _about("reply_positive.eml", alias))

    assert (response.status_code, response.json()["error"]) == (422, "unreferenced"), response.text
    assert "not sent to dana.whitfield@customer.example" in response.json()["detail"]
    assert agent.status(follow_up)["status"] == "queued"
    assert _causes(agent, sent.id)[-1] == "relay_accepted"
    assert [kept["kind"] for kept in _unparsed(admin)] == ["unreferenced"]
    assert daemon.metric("sendguard_replies_total", sentiment="positive") == 0


def test_an_unsubscribe_reply_suppresses_the_replier(start: Start, smtp: SmtpSink) -> None:
    daemon, agent, admin = start()
    sent = _deliver(agent, smtp, "lee@customer.example")

    [reply] = _applied(agent, _about("reply_unsubscribe.eml", sent))["events"]

    assert (reply["message_id"], reply["unsubscribe"]) == (sent.id, True)
    assert reply["suppressed"] == "lee@customer.example"
    assert _suppressed(admin) == ["lee@customer.example"]
    assert agent.send("lee@customer.example", subject="Another question")["status"] == "rejected"
    assert daemon.metric("sendguard_unsubscribes_total") == 1


def test_the_callers_sentiment_wins_over_the_classifier(
    start: Start, client_for: Callable[..., Api], smtp: SmtpSink
) -> None:
    # Half of two replies negative trips the agent; the classifier alone finds none negative.
    # An operator reports: an agent's own positive reply would count nothing (test_signal_privileges).
    daemon, agent, _ = start("[safe_mode]\nmin_replies = 2\nnegative_reply_rate = 0.5\n")
    operator = client_for(daemon, "operator", "olive")
    first, second = (_deliver(agent, smtp, to) for to in ("dana@customer.example", "lee@customer.example"))
    text = "Thanks, sounds great. Let's talk Thursday."

    classified = _event(operator, type="reply", message_id=first.id, text=text)
    decided = _event(operator, type="reply", message_id=second.id, text=text, sentiment="negative")

    assert (classified["sentiment"], classified["tripped"]) == ("positive", [])
    assert (decided["sentiment"], decided["tripped"]) == ("negative", ["agent:sdr-bot"])
    assert daemon.metric("sendguard_replies_total", sentiment="negative") == 1
    assert daemon.metric("sendguard_replies_total", sentiment="positive") == 1


def test_an_abusive_burst_trips_the_agent(start: Start, smtp: SmtpSink) -> None:
    daemon, agent, admin = start("[safe_mode]\nabusive_replies = 3\n")
    sent = [_deliver(agent, smtp, f"lead{i}@customer.example") for i in range(3)]

    tripped = [_applied(admin, _about("reply_abusive.eml", m))["events"][0]["tripped"] for m in sent]

    assert tripped == [[], [], ["agent:sdr-bot"]]
    trips = admin.client.get("/v1/safe-mode").json()
    assert [(t["scope"], t["cause"], t["value"], t["threshold"]) for t in trips] == [
        ("agent:sdr-bot", "abusive_replies", 3, 3)
    ]
    late = agent.send("lead9@customer.example")
    assert (late["status"], late["reasons"][0]["code"]) == ("held", "safe_mode")
    assert daemon.metric("sendguard_replies_total", sentiment="abusive") == 3
    assert daemon.metric("sendguard_safe_mode_trips_total", cause="abusive_replies") == 1


def test_a_reply_counts_once_per_message_whatever_its_sentiment(start: Start, smtp: SmtpSink) -> None:
    # Two abusive replies trip the agent, but not two replies to one message: a third in another
    # tone is recorded on the message and counts in no window; the same reply again (a replay) is
    # neither counted nor recorded, so replaying it cannot grow the history or the audit trail.
    daemon, agent, admin = start(NO_COOLDOWN + "[safe_mode]\nabusive_replies = 2\n")
    sent = _deliver(agent, smtp, "riley@other.example")
    abusive, positive = (_about(sample, sent) for sample in ("reply_abusive.eml", "reply_positive.eml"))

    answers = [_applied(admin, raw)["events"][0] for raw in (abusive, abusive, positive, abusive)]

    assert [(a["message_id"], a["sentiment"], a["tripped"], a["repeated"]) for a in answers] == [
        (sent.id, "abusive", [], False),
        (sent.id, "abusive", [], True),
        (sent.id, "positive", [], False),
        (sent.id, "abusive", [], True),
    ]
    assert admin.client.get("/v1/safe-mode").json() == []
    assert _causes(agent, sent.id)[-3:] == ["relay_accepted", "reply", "reply"]
    # An entry written after them all, once chained, has every one of theirs chained before it.
    assert admin.client.post("/v1/safe-mode", json={"scope": "segment:after", "reason": "mark"}).is_success
    wait_until(lambda: admin.audit(kind="safe_mode.tripped"), what="the marking entry to be chained")
    assert len(admin.audit(kind="event.reply", message_id=sent.id)) == 2
    assert daemon.metric("sendguard_replies_total", sentiment="abusive") == 1
    assert daemon.metric("sendguard_replies_total", sentiment="positive") == 0
    assert daemon.metric("sendguard_inbound_messages_total", kind="reply") == 4


# --- what cannot be parsed, or is too big -----------------------------------------------------------


def test_unparsable_mail_is_refused_and_kept_byte_for_byte(start: Start) -> None:
    daemon, agent, admin = start()
    raw = (SAMPLES / "not_mail.txt").read_bytes()

    response = _inbound(agent, raw)

    assert response.status_code == 422, response.text
    refused = response.json()
    assert refused["error"] == "unparsable" and refused["detail"]
    assert agent.client.get("/v1/inbound/unparsed").status_code == 403
    [kept] = _unparsed(admin)
    assert (kept["id"], kept["reason"], kept["size"]) == (refused["kept_as"], refused["detail"], len(raw))
    assert kept["source"] == "api (sdr-bot)"
    assert "raw" not in kept and kept["truncated"] is False
    one = admin.client.get(f"/v1/inbound/unparsed/{kept['id']}")
    assert one.status_code == 200
    assert (one.content, one.headers["content-type"]) == (raw, "message/rfc822")
    assert admin.client.get("/v1/inbound/unparsed/0000").status_code == 404
    assert daemon.metric("sendguard_inbound_messages_total", kind="unparsed") == 1


async def test_oversized_inbound_mail_is_refused_over_http_and_smtp(start: Start) -> None:
    port = free_port()
    _, agent, admin = start(
        inbound_max_bytes="2048", bounce_domain=BOUNCE_DOMAIN, inbound_smtp=f"127.0.0.1:{port}"
    )
    big = (b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n") * 40

    declared = _inbound(agent, big)
    streamed = _inbound(agent, iter([big[:1000], big[1000:]]))  # chunked: no Content-Length
    with pytest.raises(aiosmtplib.SMTPResponseException) as over_smtp:
        await _over_smtp(port, FEEDBACK_ADDRESS, big)

    assert (declared.status_code, declared.json()["error"]) == (413, "body_too_large")
    assert (streamed.status_code, streamed.json()["error"]) == (413, "body_too_large")
    assert over_smtp.value.code == 552
    assert _inbound(agent, big[:2000]).status_code == 422  # under the limit: read, and kept
    assert len(_unparsed(admin)) == 1


# --- the inbound SMTP listener -----------------------------------------------------------------------


async def test_the_smtp_listener_takes_every_message_in_and_ties_back_what_it_understands(
    start: Start, smtp: SmtpSink
) -> None:
    port = free_port()
    daemon, agent, admin = start(NO_COOLDOWN, bounce_domain=BOUNCE_DOMAIN, inbound_smtp=f"127.0.0.1:{port}")
    first, second = (_deliver(agent, smtp, "dana@customer.example") for _ in range(2))
    # Nothing in the DSN names the message: only the envelope recipient, its signed bounce address.
    dsn = _about("dsn_postfix_hard.eml", first, untraceable=True)
    garbage = b"this is not an email\r\njust some bytes\r\n"

    understood = await _over_smtp(port, first.envelope_sender, dsn)
    kept = await _over_smtp(port, FEEDBACK_ADDRESS, garbage)

    assert (understood.code, understood.message) == (
        250,
        "2.0.0 DSN from mx.customer.example: 1 hard bounce (5.1.1)",
    )
    assert [agent.status(m.id)["status"] for m in (first, second)] == ["bounced", "sent"]
    assert "bounce_report" in _causes(agent, first.id)
    assert _suppressed(admin) == ["dana@customer.example"]
    # An MTA told anything but 250 would retry, or bounce the bounce: what is not understood is kept.
    assert kept.code == 250
    [entry] = _unparsed(admin)
    assert kept.message == f"2.0.0 kept for inspection as {entry['id']}"
    assert entry["source"] == "smtp"
    assert admin.client.get(f"/v1/inbound/unparsed/{entry['id']}").content == garbage
    assert daemon.metric("sendguard_inbound_messages_total", kind="unparsed") == 1
    assert daemon.metric("sendguard_inbound_messages_total", kind="dsn") == 1


def test_with_a_bounce_domain_mail_leaves_with_a_signed_envelope_sender(start: Start, smtp: SmtpSink) -> None:
    _, agent, _ = start(NO_COOLDOWN, bounce_domain=BOUNCE_DOMAIN)

    sent = [_deliver(agent, smtp, "dana@customer.example") for _ in range(2)]

    macs = []
    for message in sent:
        local, _, domain = message.envelope_sender.partition("@")
        assert re.fullmatch(rf"bounces\+{message.id}\.[0-9a-f]{{24}}", local), local  # lowercase hex
        assert (domain, len(local) <= 64) == (BOUNCE_DOMAIN, True)
        macs.append(local.rpartition(".")[2])
    assert macs[0] != macs[1]


async def test_copies_of_one_event_recorded_at_once_write_one_history_line_and_one_entry(
    redis_url: str, prefix: str
) -> None:
    """Copies that all passed the early look for a recorded event (they came in together) are
    settled by the recording script itself: one writes the history line and the audit entry, the
    others nothing, and each is told which it was."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    try:
        await client.hset(keys.msg("m1"), mapping={"status": "sent"})
        entry = audit_entry("event.bounce", "mx", {"message_id": "m1"})
        written = await asyncio.gather(
            *(
                Store(client, keys).record_event("m1", "bounce:hard_bounce", "bounce", "hard", entry)
                for _ in range(5)
            )
        )
        assert sorted(written) == [False, False, False, False, True]
        assert (await client.llen(keys.hist("m1")), await client.llen(keys.audit_pending)) == (1, 1)
    finally:
        await client.aclose()
