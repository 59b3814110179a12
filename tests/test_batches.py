"""Batches on real daemons: one template, a decision per recipient, one approval request per batch."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sendguard.governance.audit import content_hash
from sendguard.intake.batches import MAX_BATCH_CONTENT
from sendguard.templates import Template
from tests.conftest import Api, Daemon, healthz_latencies, wait_until
from tests.peers import DnsServer, SmtpSink

ClientFor = Callable[..., Api]
RULES = """
[ingress]
recipient_cooldown = "0s"

[approvals]
mass_send_threshold = 5
"""


def batch(recipients: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": "Alice <alice@acme.example>",
        "subject": "A question for {{company}}",
        "text": "Hi {{ first_name }},\n\nare you the right person at {{company}}?\n",
        "html": "<p>Hi {{first_name}}, are you the right person at {{company}}?</p>",
        "segment": "cfo-na-q4",
        "agent_version": "test-1",
        "recipients": recipients,
    }
    body.update(overrides)
    return body


def post(agent: Api, body: dict[str, Any], expect: int = 201) -> dict[str, Any]:
    response = agent.client.post("/v1/batches", json=body, timeout=60)
    assert response.status_code == expect, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_a_batch_fills_each_recipient_checks_each_and_says_why_per_recipient(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    auditor = client_for(daemon, "auditor", "ana")
    answer = post(
        agent,
        batch(
            [
                {"to": "ann@customer.example", "vars": {"first_name": "Ann", "company": "Initech"}},
                {"to": "bob@customer.example", "vars": {"first_name": "<b>Bob</b>", "company": "A&B"}},
                {"to": "info@customer.example", "vars": {"first_name": "Info", "company": "X"}},
                {"to": "ANN@customer.example", "vars": {"first_name": "Ann", "company": "Initech"}},
                {"to": "cy@customer.example", "vars": {"first_name": "Cy"}},
                {"to": "not an address", "vars": {"first_name": "Dee", "company": "Y"}},
                {"to": "eve@customer.example", "vars": {"first_name": "4111 1111 1111 1111", "company": "Z"}},
            ]
        ),
    )
    assert answer["recipients"] == 7 and answer["approval"] is None
    assert [(r["index"], r["to"], r["status"]) for r in answer["accepted"]] == [
        (0, "ann@customer.example", "queued"),
        (1, "bob@customer.example", "queued"),
    ]
    rejected = {r["index"]: [reason["code"] for reason in r["reasons"]] for r in answer["rejected"]}
    assert rejected == {
        2: ["role_account"],
        3: ["duplicate_recipient"],
        4: ["unrendered_template"],
        5: ["invalid_address"],
        6: ["sensitive_content"],
    }
    duplicate = next(r for r in answer["rejected"] if r["index"] == 3)
    assert "already recipient 0" in duplicate["reasons"][0]["detail"]
    assert "4111" not in str(answer), "a reason names the kind of secret, never the value"
    assert all(r["id"] for r in answer["accepted"] + answer["rejected"])

    arrived = {r.rcpt_tos[0]: r.message for r in smtp.wait_for(2)}
    ann = arrived["ann@customer.example"]
    assert ann["Subject"] == "A question for Initech"
    text = ann.get_body(("plain",))
    html = ann.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().replace("\r\n", "\n") == "Hi Ann,\n\nare you the right person at Initech?\n"
    bob_html = arrived["bob@customer.example"].get_body(("html",))
    assert bob_html is not None
    # Values are text: in the HTML part they are escaped, never markup.
    assert "Hi &lt;b&gt;Bob&lt;/b&gt;, are you the right person at A&amp;B?" in bob_html.get_content()

    record = agent.status(answer["accepted"][0]["id"])
    assert record["batch"] == answer["id"] and record["subject"] == "A question for Initech"

    def decided() -> list[dict[str, Any]]:
        return [e for e in auditor.audit(batch=answer["id"]) if e["kind"] == "submission.decided"]

    wait_until(lambda: len(decided()) == 7, what="every recipient's decision in the audit trail")
    by_index = {r["id"]: r["index"] for r in answer["accepted"] + answer["rejected"]}
    outcomes = {by_index[e["fields"]["message_id"]]: e["fields"] for e in decided()}
    assert (outcomes[0]["status"], outcomes[0]["reasons"], outcomes[0]["held_by"]) == ("queued", [], None)
    assert (outcomes[2]["status"], outcomes[2]["reasons"]) == ("rejected", ["role_account"])
    assert "Initech" not in str(decided()), "the trail holds a hash of the content, not the content"
    # The hash is of what the recipient gets, filled in, though the record keeps only its values.
    filled = (
        "Hi Ann,\n\nare you the right person at Initech?\n",
        "<p>Hi Ann, are you the right person at Initech?</p>",
    )
    assert outcomes[0]["content_hash"] == content_hash("A question for Initech", *filled)
    assert outcomes[5]["content_hash"] != outcomes[0]["content_hash"]
    # Counted a chunk at a time, each decision once, by its status and first reason.
    assert daemon.metric("sendguard_submissions_total", outcome="queued", reason="none") == 2
    assert daemon.metric("sendguard_submissions_total", outcome="rejected", reason="role_account") == 1
    wait_until(
        lambda: [e["kind"] for e in auditor.audit(batch=answer["id"])][-1] == "batch.submitted",
        what="the batch's own entry",
    )
    summary = auditor.audit(batch=answer["id"])[-1]["fields"]
    assert summary["recipients"] == 7 and summary["by_status"] == {"queued": 2, "rejected": 5}


def test_spellings_of_one_mailbox_are_one_recipient_of_a_batch(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    """Case and a `+tag` aside, two recipients of one batch that reach one mailbox are the same
    recipient twice, refused as an exact repeat is (`duplicate_recipient`), whatever the cooldown
    (here none): a made-up tag gets no second message into one batch."""
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    spellings = [
        "bob@customer.example",
        "Bob+1@customer.example",
        "bob+x.y@Customer.Example",
        "bob@customer.example",
        "cy@customer.example",
    ]
    values = {"first_name": "Bob", "company": "Initech"}
    answer = post(agent, batch([{"to": to, "vars": values} for to in spellings]))
    assert [(r["index"], r["status"]) for r in answer["accepted"]] == [(0, "queued"), (4, "queued")]
    rejected = {r["index"]: r["reasons"] for r in answer["rejected"]}
    assert {index: [reason["code"] for reason in reasons] for index, reasons in rejected.items()} == {
        1: ["duplicate_recipient"],
        2: ["duplicate_recipient"],
        3: ["duplicate_recipient"],
    }
    assert "bob+1@customer.example reaches the mailbox of recipient 0" in rejected[1][0]["detail"]
    assert "is already recipient 0" in rejected[3][0]["detail"]
    assert sorted(r.rcpt_tos[0] for r in smtp.wait_for(2)) == ["bob@customer.example", "cy@customer.example"]


def test_a_mass_batch_is_one_tier_two_request_and_small_batches_add_up_to_a_run(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    finn = client_for(daemon, "approver", "finn", "--group", "sales")

    # Splitting a mass send into batches under the threshold does not dodge it: the agent's
    # messages add up, whatever segment or campaign each batch names.
    small = [{"to": f"s{i}@customer.example", "vars": {"first_name": "S", "company": "C"}} for i in range(6)]
    first = post(agent, batch(small[:3], segment=None, campaign="split"))
    second = post(agent, batch(small[3:], segment="smb", campaign="other"))
    assert first["approval"] is None and {r["status"] for r in first["accepted"]} == {"queued"}
    assert second["approval"]["tier"] == 2 and "makes 5 or more messages" in second["approval"]["why"]
    assert {r["status"] for r in second["accepted"]} == {"pending_approval"}

    people = [{"to": f"p{i}@customer.example", "vars": {"first_name": "P", "company": "C"}} for i in range(6)]
    mass = post(agent, batch(people, segment="smb"))
    assert mass["approval"]["tier"] == 2 and "batch of 6 recipients" in mass["approval"]["why"]
    assert {r["status"] for r in mass["accepted"]} == {"pending_approval"}
    request_id = mass["approval"]["id"]
    assert request_id != second["approval"]["id"]  # a batch is shown to its approvers on its own
    shown = dana.client.get(f"/v1/approvals/{request_id}").json()
    assert shown["kind"] == "batch" and shown["contents"]["messages"] == 6
    assert shown["contents"]["samples"][0]["subject"] == "A question for C"

    for approver in (dana, finn):
        response = approver.client.post(f"/v1/approvals/{request_id}/approve", json={"comment": "ok"})
        assert response.status_code == 200, response.text
    for row in mass["accepted"] + first["accepted"]:
        agent.wait_status(row["id"], "sent")
    arrived = {r.rcpt_tos[0] for r in smtp.snapshot()}
    assert arrived == {row["to"] for row in mass["accepted"] + first["accepted"]}


def test_ten_thousand_recipients_are_decided_in_one_request_and_recalled_by_batch(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, dns_server: DnsServer
) -> None:
    for n in range(50):
        dns_server.add_mx_domain(f"customer{n}.example")
    daemon = make_daemon(RULES.replace("mass_send_threshold = 5", "mass_send_threshold = 25"))
    agent = client_for(daemon, "agent", "sdr-bot")
    operator = client_for(daemon, "operator", "omar")
    people = [
        {"to": f"lead{i}@customer{i % 50}.example", "vars": {"first_name": f"L{i}", "company": f"Co{i}"}}
        for i in range(10_000)
    ]
    started = time.perf_counter()
    answer = post(agent, batch(people, idempotency_key="q4-launch"))
    took = time.perf_counter() - started
    print(f"10,000-recipient batch decided in {took:.2f} s")
    assert len(answer["accepted"]) == 10_000 and answer["rejected"] == []
    assert answer["approval"]["tier"] == 2
    assert {r["status"] for r in answer["accepted"]} == {"pending_approval"}
    ids = [r["id"] for r in answer["accepted"]]
    assert len(set(ids)) == 10_000 and all(re.fullmatch(r"[0-9a-f]{23}", one) for one in ids)

    # A retry with the same idempotency key gets the same messages back, not 10,000 more.
    again = post(agent, batch(people, idempotency_key="q4-launch"))
    assert again["id"] == answer["id"] and again["approval"] == answer["approval"]
    assert [r["id"] for r in again["accepted"]] == [r["id"] for r in answer["accepted"]]
    conflict = agent.client.post("/v1/batches", json=batch(people[:10], idempotency_key="q4-launch"))
    assert conflict.status_code == 409 and "different batch" in conflict.text

    recalled = operator.client.post("/v1/recall", json={"batch": answer["id"], "reason": "wrong list"})
    assert recalled.status_code == 200, recalled.text
    assert recalled.json() == {"cancelled": 10_000, "by_state": {"pending_approval": 10_000}}
    assert agent.status(answer["accepted"][-1]["id"])["status"] == "cancelled"
    assert smtp.snapshot() == [], "nothing of a tier-2 batch leaves without two approvals"


def test_a_batch_recalled_before_it_is_due_counts_by_state(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    operator = client_for(daemon, "operator", "omar")
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    people = [{"to": f"m{i}@customer.example", "vars": {"first_name": "M", "company": "C"}} for i in range(3)]
    answer = post(agent, batch(people, send_at=later, segment="smb"))
    other = post(agent, batch(people[:1], send_at=later))
    recalled = operator.client.post("/v1/recall", json={"batch": answer["id"], "reason": "hold it"}).json()
    assert recalled == {"cancelled": 3, "by_state": {"queued": 3}}
    assert agent.status(other["accepted"][0]["id"])["status"] == "queued"


def test_bad_batches_get_an_error_that_names_the_field(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    one = [{"to": "ann@customer.example", "vars": {"first_name": "Ann"}}]
    cases = {
        "recipients": batch([]),
        "recipients.0.vars.first name.[key]": batch([{"to": "a@x.example", "vars": {"first name": "A"}}]),
        "recipients.0.vars.first_name": batch([{"to": "a@x.example", "vars": {"first_name": "A\nB"}}]),
        "recipients.0.cc": batch([{"to": "a@customer.example", "cc": "b@customer.example"}]),
        "from": batch(one, **{"from": "two@acme.example, three@acme.example"}),
        # The send windows are searched 400 days past it: the year 9999 overflowed into a 500.
        "send_at": batch(one, send_at="9999-12-31T23:00:00Z"),
    }
    for field, body in cases.items():
        response = agent.client.post("/v1/batches", json=body)
        assert response.status_code == 422, (field, response.text)
        assert field in [e["field"] for e in response.json()["errors"]], (field, response.text)
    refused = agent.client.post("/v1/batches", json=batch(one, **{"from": "Mallory <ceo@elsewhere.example>"}))
    assert refused.status_code == 403 and refused.json()["reasons"][0]["code"] == "inbox_not_allowed"


def test_a_batch_whose_filled_content_is_over_the_budget_is_refused_before_any_check(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    """Every recipient's filled content is checked, so a 1 MiB template to a few hundred recipients
    (a 1 MB request) would cost the daemon minutes of checking: refused, naming the budget."""
    agent = client_for(make_daemon(RULES), "agent", "sdr-bot")
    text = "{{first_name}}, " + "a line of an ordinary cold email.\n" * (MAX_BATCH_CONTENT // 2**20 * 120)
    count = MAX_BATCH_CONTENT // len(text) + 10
    people = [{"to": f"p{i}@customer.example", "vars": {"first_name": "P"}} for i in range(count)]
    started = time.process_time()
    response = agent.client.post("/v1/batches", json=batch(people, text=text, html=None), timeout=60)
    assert response.status_code == 422, response.text[:300]
    [error] = response.json()["errors"]
    assert error["field"] == "recipients" and f"{MAX_BATCH_CONTENT:,} (256 MiB)" in error["message"], error
    assert time.process_time() - started < 5  # refused before checking hundreds of MB


def test_a_batch_of_many_placeholders_is_refused_by_the_same_budget(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    """Tens of thousands of empty placeholders to a few hundred recipients fill to nothing, but
    filling them is the work: the probe's 0.5 MB request held the loop 24 s. Sizing it costs each
    recipient its values, not the template."""
    agent = client_for(make_daemon(RULES), "agent", "sdr-bot")
    people = [{"to": f"e{i}@customer.example", "vars": {"first_name": ""}} for i in range(300)]
    started = time.process_time()
    response = agent.client.post(
        "/v1/batches", json=batch(people, text="{{first_name}}" * 70_000, html=None), timeout=60
    )
    assert response.status_code == 422, response.text[:300]
    [error] = response.json()["errors"]
    assert error["field"] == "recipients" and "21,000,300 placeholders to fill" in error["message"], error
    assert time.process_time() - started < 5


@settings(max_examples=200)
@given(
    pieces=st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["{{a}}", "{{ b }}", "{{c}}", "{{a }}"]))),
    values=st.dictionaries(
        st.sampled_from(["a", "b", "d"]), st.text(alphabet="x<&>\"'é\U0001f600", max_size=6)
    ),
    escape=st.booleans(),
)
def test_a_template_knows_its_filled_size_without_filling(
    pieces: list[str], values: dict[str, str], escape: bool
) -> None:
    template = Template("".join(pieces), escape=escape)
    assert template.size(values) == len(template.fill(values).encode("utf-8", "surrogatepass"))


def test_a_large_batch_lets_other_requests_through_while_its_content_is_checked(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    """The event loop is yielded every few milliseconds of content checking, not only every 500
    recipients: a batch of 150 recipients with a 200 KB HTML body (a second or more of checking)
    does not hold /healthz for its whole length."""
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    html = (
        "<p>Hi {{first_name}}</p>"
        + '<p>Our <b>offer</b>, see <a href="https://x.example/a">it</a>.</p>' * 3000
    )
    people = [{"to": f"h{i}@customer.example", "vars": {"first_name": f"H{i}"}} for i in range(150)]
    started = time.perf_counter()
    with healthz_latencies(daemon) as gaps:
        post(agent, batch(people, html=html))
        took = time.perf_counter() - started
    print(f"batch {took:.2f} s; /healthz answered {len(gaps)} times, the slowest in {max(gaps):.3f} s")
    assert max(gaps) < took / 4, (took, sorted(gaps)[-5:])
