"""The HTTP API against a real daemon: identity, form errors, every ingress reason code."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from sendguard.delivery.deliverer import DEFER_CAUSES
from sendguard.delivery.relay import STAGES
from sendguard.feedback.counters import TRIP_CAUSES
from sendguard.feedback.events import BounceType, EventType, Sentiment
from sendguard.feedback.parse import InboundKind
from sendguard.rules import ScopeKind
from sendguard.state.keys import Keys
from sendguard.submission import parse_sender
from tests.conftest import Api, Daemon, message
from tests.peers import DnsServer, SmtpSink

RULES = """
[ingress]
mx_check = "enforce"
recipient_cooldown = "72h"
"""


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon(RULES)


ClientFor = Callable[[Daemon, str, str], Api]


@pytest.fixture
def api(daemon: Daemon, client_for: ClientFor) -> Api:
    return client_for(daemon, "agent", "sdr-bot")


def test_every_v1_route_needs_a_valid_token(daemon: Daemon) -> None:
    bare = daemon.http.post("/v1/messages", json=message("bob@customer.example"))
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"] == "Bearer"
    forged = daemon.http.get("/v1/suppressions", headers={"Authorization": "Bearer sg_abc_notatoken"})
    assert forged.status_code == 401


def test_roles_limit_what_a_token_may_do(daemon: Daemon, client_for: ClientFor) -> None:
    admin = client_for(daemon, "admin", "dana")
    agent = client_for(daemon, "agent", "sdr-bot")
    assert admin.client.post("/v1/messages", json=message("bob@customer.example")).status_code == 403
    assert agent.client.get("/v1/suppressions").status_code == 403
    assert admin.client.get("/v1/suppressions").status_code == 200


def test_revoked_token_is_refused(daemon: Daemon, client_for: ClientFor) -> None:
    client = client_for(daemon, "agent", "sdr-bot")
    token = client.client.headers["Authorization"].removeprefix("Bearer ")
    assert client.client.get("/v1/messages/0000").status_code == 404
    daemon.cli("token", "revoke", token)
    assert client.client.get("/v1/messages/0000").status_code == 401


@pytest.mark.parametrize("tier", [0, 1])
def test_a_token_revoked_elsewhere_submits_nothing_more(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, redis_url: str, prefix: str, tier: int
) -> None:
    """`POST /v1/messages` knows a token it verified before without asking Redis; the admission
    script (tier 0), or a look-up before any other write (tier 1), checks it is still there. So a
    token revoked by another process is refused at once, whatever its submission, writing nothing."""
    agent = '[[agent]]\nname = "new-bot"\nowner = "sales"\ninboxes = ["*@acme.example"]\n'
    daemon = make_daemon(RULES + "\n" + agent + f"tier = {tier}\n")
    client = client_for(daemon, "agent", "new-bot")
    first = message("bob@customer.example", idempotency_key="first")
    assert client.client.post("/v1/messages", json=first).status_code == 201
    daemon.cli("token", "revoke", client.client.headers["Authorization"].removeprefix("Bearer "))
    for body in (
        message("carol@customer.example"),
        first,  # a retry, which would have been answered with the first decision
        message("dave@customer.example", **{"from": "Eve <eve@evil.example>"}),  # 403, counted
    ):
        refused = client.client.post("/v1/messages", json=body)
        assert refused.status_code == 401, refused.text
        assert refused.json() == {"detail": "invalid or revoked token"}
        assert refused.headers["www-authenticate"] == "Bearer"
    listed = client_for(daemon, "agent", "new-bot").client.get("/v1/messages").json()["messages"]
    assert [line["to"] for line in listed] == ["bob@customer.example"]
    keys = Keys(prefix)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        trail = client.lrange(keys.audit_chain, 0, -1) + client.lrange(keys.audit_pending, 0, -1)
    kinds = [json.loads(entry)["kind"] for entry in trail]
    assert kinds.count("submission.decided") == 1 and "submission.refused" not in kinds


def test_agent_may_only_use_its_inboxes_and_segments(api: Api, daemon: Daemon, client_for: ClientFor) -> None:
    wrong_inbox = api.client.post(
        "/v1/messages", json=message("bob@customer.example", **{"from": "Eve <eve@evil.example>"})
    )
    assert wrong_inbox.status_code == 403
    assert wrong_inbox.json()["reasons"][0]["code"] == "inbox_not_allowed"
    # An agent kept to some segments may neither leave them nor leave the segment out.
    kept = client_for(daemon, "agent", "list-bot")
    for segment, code in (("all-customers", "segment_not_allowed"), ("SMB", "segment_not_allowed")):
        refused = kept.client.post("/v1/messages", json=message("bob@customer.example", segment=segment))
        assert refused.status_code == 403 and refused.json()["reasons"][0]["code"] == code
    unnamed = kept.client.post("/v1/messages", json=message("bob@customer.example"))
    assert unnamed.status_code == 403 and unnamed.json()["reasons"][0]["code"] == "segment_required"
    batch = {k: v for k, v in message("").items() if k != "to"} | {
        "recipients": [{"to": "b@customer.example"}]
    }
    unnamed_batch = kept.client.post("/v1/batches", json=batch)
    assert (
        unnamed_batch.status_code == 403 and unnamed_batch.json()["reasons"][0]["code"] == "segment_required"
    )
    assert kept.send("bob@customer.example", segment="smb")["status"] == "queued"


@pytest.mark.parametrize(
    ("recipient", "code"),
    [
        ("not an address", "invalid_address"),
        ("bob@@customer.example", "invalid_address"),
        ("someone@gmail.com", "free_domain"),
        ("info@customer.example", "role_account"),
        ("sales+eu@customer.example", "role_account"),
        ("x@mailinator.com", "disposable_domain"),
        ("bob@missing.example", "domain_not_found"),
        ("bob@nullmx.example", "null_mx"),
        ("bob@nomail.example", "no_mail_host"),
    ],
)
def test_each_ingress_check_rejects_with_its_reason_code(api: Api, recipient: str, code: str) -> None:
    decision = api.send(recipient)
    assert decision["status"] == "rejected"
    assert [r["code"] for r in decision["reasons"]] == [code]
    assert decision["id"]
    assert api.status(decision["id"])["status"] == "rejected"


def test_suppressed_address_and_domain_are_rejected(api: Api, daemon: Daemon, client_for: ClientFor) -> None:
    admin = client_for(daemon, "admin", "dana")
    added = admin.client.post(
        "/v1/suppressions", json={"entries": ["Gone@Customer.example", "other.example"]}
    )
    assert added.status_code == 200, added.text
    assert api.send("gone@customer.example")["reasons"][0]["code"] == "suppressed"
    assert api.send("anyone@other.example")["reasons"][0]["code"] == "suppressed"
    assert admin.client.delete("/v1/suppressions/other.example").status_code == 204
    assert api.send("anyone@other.example")["status"] == "queued"
    bad = admin.client.post("/v1/suppressions", json={"entries": ["not a domain!"]})
    assert bad.status_code == 422
    assert "not a domain!" in bad.text
    bad_lift = admin.client.delete("/v1/suppressions/not a domain!")
    assert bad_lift.status_code == 422
    assert bad_lift.json()["detail"].startswith("entries: 'not a domain!' is not an address or domain")


def test_a_suppression_cancels_what_the_older_waiting_index_names(
    api: Api, daemon: Daemon, client_for: ClientFor, redis_url: str, prefix: str
) -> None:
    """A mailbox's waiting index as versions before the hash kept it (a set) is still read: a
    suppression cancels the messages it names, and the set empties as they finish."""
    waiting = api.send("erin@customer.example", send_at="2099-01-01T00:00:00+00:00")["id"]
    keys = Keys(prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.hdel(keys.waiting("erin@customer.example"), waiting)
        client.sadd(keys.waiting_legacy("erin@customer.example"), waiting)
        admin = client_for(daemon, "admin", "dana")
        added = admin.client.post("/v1/suppressions", json={"entries": ["Erin@customer.example"]})
        assert added.status_code == 200, added.text
        assert api.status(waiting)["status"] == "cancelled"
        assert client.exists(keys.waiting_legacy("erin@customer.example")) == 0
    finally:
        client.close()


def test_a_record_stores_its_scopes_only_when_its_fields_do_not_give_them(
    api: Api, redis_url: str, prefix: str
) -> None:
    """The scopes are derived from the record's fields (lua/shared/record.lua), so a record keeps
    no long field; a From address not in its canonical form gives another inbox, so those are kept."""
    plain = api.send("fay@customer.example")["id"]
    tagged = api.send("gil@customer.example", **{"from": "Alice <Alice+q4@Acme.example>"})["id"]
    keys = Keys(prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert not client.hexists(keys.msg(plain), "scopes")
        assert client.object("encoding", keys.msg(plain)) in ("ziplist", "listpack")
        assert "inbox:alice@acme.example" in json.loads(client.hget(keys.msg(tagged), "scopes") or "[]")
    finally:
        client.close()


def test_recipient_cooldown_spans_agents_and_spellings_and_names_no_message(
    api: Api, daemon: Daemon, client_for: ClientFor
) -> None:
    """One mailbox gets one message per cooldown, across agents and however its address is
    spelled (case, a made-up `+tag`), as suppressions go by the mailbox. The refusal says when
    the cooldown ends, never which message holds it: it may be another agent's, and an id is what
    a reply quotes to cancel a message and stop its agent."""
    first = api.send("carol@customer.example")
    assert first["status"] == "queued"
    support = client_for(daemon, "agent", "support-bot")
    spellings = ["Carol@customer.example", "carol+q4@customer.example", "Carol+x.y@Customer.Example"]
    refused = [support.send(to, **{"from": "help@acme.example"}) for to in spellings]
    assert [(r["status"], [reason["code"] for reason in r["reasons"]]) for r in refused] == [
        ("rejected", ["recipient_cooldown"])
    ] * 3
    # Nowhere the other agent can read: the answer, its own record of the refusal, the check.
    checked = support.client.post("/v1/recipients/check", json={"to": ["CAROL+check@customer.example"]})
    assert [reason["code"] for reason in checked.json()["recipients"][0]["reasons"]] == ["recipient_cooldown"]
    seen = [json.dumps(r) for r in refused] + [json.dumps(support.status(r["id"])) for r in refused]
    assert all(first["id"] not in text for text in [*seen, checked.text])
    detail = refused[0]["reasons"][0]["detail"]
    ends = datetime.fromisoformat(detail.rpartition(" ")[2])
    assert abs(ends - (datetime.now(UTC) + timedelta(hours=72))) < timedelta(minutes=1), detail


def test_the_cooldown_runs_from_when_the_message_goes(
    api: Api, daemon: Daemon, client_for: ClientFor
) -> None:
    """A message due in 71 h held the cooldown from its admission: in the 72nd hour another agent's
    message to the same mailbox went, a second before it (the probe, at 4 s, saw 0.31 s between
    them). The cooldown now ends a cooldown after the message goes."""
    due = datetime.now(UTC) + timedelta(hours=71)
    assert api.send("dora@customer.example", send_at=due.isoformat())["status"] == "queued"
    support = client_for(daemon, "agent", "support-bot")
    [reason] = support.send("dora@customer.example", **{"from": "help@acme.example"})["reasons"]
    ends = datetime.fromisoformat(reason["detail"].rpartition(" ")[2])
    assert reason["code"] == "recipient_cooldown"
    assert abs(ends - (due + timedelta(hours=72))) < timedelta(minutes=1), reason


def test_domain_with_only_an_a_record_is_deliverable(api: Api, smtp: SmtpSink) -> None:
    """RFC 5321 implicit MX: no MX but an A (or AAAA) record accepts mail."""
    a_only = api.send("bob@aonly.example")
    aaaa_only = api.send("bob@aaaaonly.example")
    assert (a_only["status"], aaaa_only["status"]) == ("queued", "queued")
    api.wait_status(a_only["id"], "sent")
    api.wait_status(aaaa_only["id"], "sent")


def test_dns_temporary_failure_defers_then_delivers(api: Api, dns_server: DnsServer, smtp: SmtpSink) -> None:
    dns_server.add_mx_domain("flaky.example")
    dns_server.set_servfail("flaky.example", True)
    try:
        decision = api.send("bob@flaky.example")
        assert decision["status"] == "deferred"
        assert decision["reasons"][0]["code"] == "dns_temporary"
        slow = api.send("bob@slow.example")
        assert slow["status"] == "deferred"
    finally:
        dns_server.set_servfail("flaky.example", False)
    sent = api.wait_status(decision["id"], "sent")
    assert "dns_resolved" in [h["cause"] for h in sent["history"]]
    assert [r.rcpt_tos for r in smtp.snapshot()] == [("bob@flaky.example",)]


def test_rules_reloaded_with_mx_check_off_stop_the_dns_rechecks(
    api: Api, daemon: Daemon, dns_server: DnsServer, smtp: SmtpSink, client_for: ClientFor
) -> None:
    """A message deferred for DNS is sent once the rules say not to check MX, though DNS still fails."""
    dns_server.add_mx_domain("stuck.example")
    dns_server.set_servfail("stuck.example", True)
    try:
        decision = api.send("bob@stuck.example")
        assert decision["status"] == "deferred"
        rules_path = Path(daemon.env["SENDGUARD_RULES"])
        rules_path.write_text(rules_path.read_text().replace('mx_check = "enforce"', 'mx_check = "off"'))
        reloaded = client_for(daemon, "admin", "dana").client.post("/v1/rules/reload")
        assert reloaded.status_code == 200, reloaded.text
        sent = api.wait_status(decision["id"], "sent")
    finally:
        dns_server.set_servfail("stuck.example", False)
    assert "mx_check_off" in [h["cause"] for h in sent["history"]]
    assert [r.rcpt_tos for r in smtp.snapshot()] == [("bob@stuck.example",)]


def test_same_idempotency_key_returns_the_first_message_and_sends_once(api: Api, smtp: SmtpSink) -> None:
    first = api.send("dave@customer.example", idempotency_key="run-7-step-3")
    again = api.send("dave@customer.example", idempotency_key="run-7-step-3", subject="changed")
    assert again["id"] == first["id"]  # the first message, in whatever state it has reached
    api.wait_status(first["id"], "sent")
    other = api.send("erin@customer.example", idempotency_key="run-7-step-4")
    api.wait_status(other["id"], "sent")
    assert sorted(r.rcpt_tos[0] for r in smtp.snapshot()) == [
        "dave@customer.example",
        "erin@customer.example",
    ]


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"subject": "Hi\r\nBcc: victim@example.com"}, "subject", "CR or LF"),
        ({"headers": {"X-Campaign": "a\nBcc: x@y.z"}}, "headers.X-Campaign", "CR or LF"),
        # Found by tests/test_fuzz.py: line breaks other than CR and LF were accepted, then made
        # rendering raise, which left the message `sending` for good.
        ({"subject": "Hi\u2028Bcc: victim@example.com"}, "subject", "line break (found '\\u2028')"),
        ({"headers": {"X-Campaign": "a\x0bb"}}, "headers.X-Campaign", "line break (found '\\x0b')"),
        ({"from": "Alice\x85 <alice@acme.example>"}, "from", "line break (found '\\x85')"),
        ({"headers": {"Bcc": "x@y.z"}}, "body", "'Bcc' is reserved"),
        ({"headers": {"Received": "from evil"}}, "body", "'Received' is reserved"),
        ({"headers": {"Disposition-Notification-To": "a@b.c"}}, "body", "not a known header"),
        ({"text": None, "html": None}, "body", "one of 'text' or 'html'"),
        ({"agent_version": None}, "agent_version", ""),
        ({"send_at": "tomorrow"}, "send_at", ""),
        ({"send_at": "9999-12-31T23:00:00Z"}, "send_at", "more than 100 years ahead"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
        ({"from": "Alice <alice@acme..example>"}, "from", "not valid"),
        ({"from": "a@acme.example, b@acme.example"}, "from", "exactly one address"),
    ],
)
def test_malformed_submissions_get_422_naming_the_field(
    api: Api, overrides: dict[str, object], field: str, words: str
) -> None:
    body = {k: v for k, v in message("bob@customer.example", **overrides).items() if v is not None}
    response = api.client.post("/v1/messages", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert any(e["field"] == field and words in e["message"] for e in errors), errors


def test_a_from_header_is_parsed_once_and_a_refused_one_each_time() -> None:
    """Parses are remembered (the email package's parser is slow), so what they give is frozen;
    a refusal is not remembered, and says the same each time."""
    first = parse_sender("Alice <Alice@Acme.example>")
    assert parse_sender("Alice <Alice@Acme.example>") is first
    assert (first.display_name, first.address) == ("Alice", "alice@acme.example")
    with pytest.raises(ValidationError, match="frozen"):
        first.address = "eve@evil.example"
    for _ in range(2):
        with pytest.raises(ValueError, match="exactly one address"):
            parse_sender("a@acme.example, b@acme.example")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"text": "Hello \ud800"}, "text"),
        ({"from": "\udfff <alice@acme.example>"}, "from"),
        ({"headers": {"X-Campaign": "\ud800"}}, "headers.X-Campaign"),
        ({"headers": {"X-\ud800": "a"}}, "headers.X-\\ud800"),
    ],
)
def test_lone_surrogates_are_refused_naming_the_field(
    api: Api, overrides: dict[str, object], field: str
) -> None:
    # Found by probing after tests/test_fuzz.py: JSON can spell a lone surrogate ("\ud800"), which
    # is no character; Redis or the email package failed on it, a 500 or a message stuck `sending`.
    raw = json.dumps(message("bob@customer.example", **overrides))  # ASCII, so the escape survives
    response = api.client.post("/v1/messages", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == field
    assert "lone surrogate" in error["message"]


def test_a_lone_surrogate_in_an_alert_trips_nothing(daemon: Daemon, client_for: ClientFor) -> None:
    # It used to trip the scope, fail to write the audit entry, and answer 500.
    admin = client_for(daemon, "admin", "dana")
    alert = {
        "status": "firing",
        "labels": {"sendguard_scope": "segment:smb"},
        "annotations": {"summary": "\ud800"},
    }
    response = admin.client.post(
        "/v1/alerts", content=json.dumps({"alerts": [alert]}), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "alerts.0.annotations.summary"
    assert admin.client.get("/v1/safe-mode").json() == []


def test_non_json_and_oversized_bodies_are_refused(api: Api) -> None:
    not_json = api.client.post("/v1/messages", content=b"to=bob", headers={"content-type": "text/plain"})
    assert not_json.status_code == 422
    assert "JSON" in not_json.json()["detail"]
    huge = api.client.post("/v1/messages", json=message("bob@customer.example", text="x" * 2_000_000))
    assert huge.status_code == 413
    assert huge.json()["error"] == "body_too_large"


def test_agent_sees_only_its_own_messages_and_can_cancel(
    api: Api, daemon: Daemon, client_for: ClientFor
) -> None:
    later = api.send("Frank+later@customer.example", send_at="2099-01-01T00:00:00Z")
    support = client_for(daemon, "agent", "support-bot")
    assert support.client.get(f"/v1/messages/{later['id']}").status_code == 404
    assert support.client.post(f"/v1/messages/{later['id']}/cancel").status_code == 404
    cancelled = api.client.post(f"/v1/messages/{later['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    record = api.status(later["id"])
    assert [h["status"] for h in record["history"]] == ["queued", "cancelled"]
    assert api.client.post(f"/v1/messages/{later['id']}/cancel").status_code == 409
    # Cancelling gave the recipient's cooldown back, to every spelling of its mailbox.
    assert api.send("frank@customer.example")["status"] == "queued"


def test_a_recall_gives_back_the_cooldown_of_the_mailbox(
    api: Api, daemon: Daemon, client_for: ClientFor
) -> None:
    """A recalled message (the scripts' cancellation, as a reply or a suppression cancels) gives the
    mailbox's cooldown back to every agent, whatever spelling it was sent to."""
    api.send("Gina+later@customer.example", send_at="2099-01-01T00:00:00Z")
    support = client_for(daemon, "agent", "support-bot")
    held = support.send("gina@customer.example", **{"from": "help@acme.example"})
    assert [reason["code"] for reason in held["reasons"]] == ["recipient_cooldown"]
    operator = client_for(daemon, "operator", "olga")
    recalled = operator.client.post("/v1/recall", json={"agent": "sdr-bot", "reason": "wrong list"})
    assert recalled.json()["cancelled"] == 1, recalled.text
    again = support.send("gina@customer.example", **{"from": "help@acme.example", "subject": "again"})
    assert (again["status"], again["reasons"]) == ("queued", [])


def test_labelled_counters_start_at_zero(daemon: Daemon) -> None:
    """Every known label value is exported at 0 before its first event, so `increase()` sees the
    first burst: an unparsed-mail or unmatched-event alert fires on the first ones too."""
    metrics = daemon.http.get("/metrics").text
    expected = [
        *(
            f'sendguard_inbound_messages_total{{kind="{kind}"}}'
            for kind in [*InboundKind, "unparsed", "unreferenced"]
        ),
        *(f'sendguard_events_unmatched_total{{type="{kind}"}}' for kind in EventType),
        *(
            f'sendguard_safe_mode_trips_total{{cause="{cause}"}}'
            for cause in [*TRIP_CAUSES, "alert", "manual"]
        ),
        *(f'sendguard_bounces_total{{type="{kind}"}}' for kind in BounceType),
        *(f'sendguard_replies_total{{sentiment="{sentiment}"}}' for sentiment in Sentiment),
        *(f'sendguard_messages_deferred_total{{cause="{cause}"}}' for cause in DEFER_CAUSES),
        *(f'sendguard_throttle_waits_total{{scope="{kind}"}}' for kind in ScopeKind),
        *(
            f'sendguard_smtp_replies_total{{reply_class="{reply_class}",stage="{stage}"}}'
            for reply_class in ("2xx", "4xx", "5xx")
            for stage in STAGES
        ),
    ]
    missing = [series for series in expected if f"{series} 0.0" not in metrics.splitlines()]
    assert missing == []
    assert {"denials", "abusive_replies", "bounce_rate"} <= set(TRIP_CAUSES)


def test_metrics_token_guards_the_metrics_page(make_daemon: Callable[..., Daemon]) -> None:
    token = "scrape-me-0123456789abcdef"
    daemon = make_daemon(RULES, metrics_token=token)
    assert daemon.http.get("/metrics").status_code == 401
    wrong = daemon.http.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789abcdeX"})
    assert wrong.status_code == 401
    scraped = daemon.http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200 and "sendguard_messages_sent_total 0.0" in scraped.text
    assert daemon.http.get("/healthz").status_code == 200  # probes stay open


def test_health_readiness_metrics_and_openapi(api: Api, daemon: Daemon) -> None:
    api.wait_status(api.send("gina@customer.example")["id"], "sent")
    assert daemon.http.get("/healthz").json() == {"status": "ok"}
    assert daemon.http.get("/readyz").json()["status"] == "ready"
    metrics = daemon.http.get("/metrics").text
    assert 'sendguard_submissions_total{outcome="queued",reason="none"} 1.0' in metrics
    assert "sendguard_messages_sent_total 1.0" in metrics
    assert "sendguard_delivery_seconds_bucket" in metrics
    paths = daemon.http.get("/openapi.json").json()["paths"]
    assert {"/v1/messages", "/v1/messages/{message_id}", "/v1/suppressions"} <= set(paths)
