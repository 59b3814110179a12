"""Suppression as a property, on a real daemon: what an entry covers, and that it holds to the last step.

An entry covers a recipient by address, by mailbox (case folded, +tag taken off), by domain and
by any parent domain. Adding one, by any route, cancels at once every message still waiting for
what it covers, whatever its due time; and the script that starts a send refuses a covered
recipient, so no message reaches the relay after a suppression was acknowledged.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from sendguard.state.keys import Keys
from tests.conftest import Api, Daemon, free_port, wait_until
from tests.peers import SmtpSink

ClientFor = Callable[..., Api]
MakeDaemon = Callable[..., Daemon]
BASE = '[ingress]\nmx_check = "off"\nrecipient_cooldown = "0s"\n'
_SENDGUARD_ID = re.compile(r"<([0-9a-f]+)\.sg@")


def _after(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


def _codes(decision: dict[str, Any]) -> list[str]:
    return [reason["code"] for reason in decision["reasons"]]


def _covers(entry: str, to: str) -> bool:
    """The oracle, written apart from sendguard's own code: does `entry` cover recipient `to`?"""
    local, _, domain = to.lower().rpartition("@")
    if "@" in entry:
        entry_local, _, entry_domain = entry.lower().rpartition("@")
        return (local.split("+")[0], domain) == (entry_local.split("+")[0], entry_domain)
    return domain == entry.lower() or domain.endswith("." + entry.lower())


def _at_relay(smtp: SmtpSink) -> set[str]:
    """Sendguard ids of the messages the relay accepted."""
    return {found[1] for r in smtp.snapshot() if (found := _SENDGUARD_ID.match(r.message_id or ""))}


def test_an_entry_covers_case_tags_and_every_subdomain_at_admission(
    make_daemon: MakeDaemon, client_for: ClientFor
) -> None:
    daemon = make_daemon(BASE)
    agent, admin = client_for(daemon, "agent", "sdr-bot"), client_for(daemon, "admin", "dana")

    added = admin.client.post(
        "/v1/suppressions", json={"entries": ["Bob+Q4@Customer.example", "blocked.example"]}
    )

    assert added.status_code == 200, added.text
    # Kept as the mailbox: every tag of bob@ is covered, not only +q4.
    assert added.json() == {
        "addresses": ["bob@customer.example"],
        "domains": ["blocked.example"],
        "new": 2,
        "cancelled": 0,
    }
    covered = {
        "bob@customer.example": "bob@customer.example",
        "BOB+q5@customer.example": "bob@customer.example",
        "bob+q4@Customer.Example": "bob@customer.example",
        "x@blocked.example": "blocked.example",
        "x@sub.blocked.example": "blocked.example",
        "x@a.b.BLOCKED.example": "blocked.example",
    }
    for to, entry in covered.items():
        decision = agent.send(to)
        assert (decision["status"], _codes(decision)) == ("rejected", ["suppressed"]), to
        assert f"({entry})" in decision["reasons"][0]["detail"], decision
    for to in (
        "bobby@customer.example",
        "x@notblocked.example",
        "x@blocked.example.org",
        "bob@other.example",
    ):
        assert agent.send(to, send_at=_after(days=1))["status"] == "queued", to
    # Lifting by any spelling of the mailbox lifts it.
    assert admin.client.delete("/v1/suppressions/BOB+other@customer.example").status_code == 204
    assert agent.send("bob+q4@customer.example", send_at=_after(days=1))["status"] == "queued"


# --- every route that suppresses cancels what waits, at once -------------------------------------


def _one_click(daemon: Daemon, smtp: SmtpSink, message_id: str) -> None:
    [mail] = [r.message for r in smtp.snapshot() if f"<{message_id}." in (r.message_id or "")]
    link = re.search(r"<(http[^>]+/v1/unsubscribe/[^>]+)>", " ".join(mail["List-Unsubscribe"].split()))
    assert link, mail["List-Unsubscribe"]
    with daemon.client() as browser:
        done = browser.post(link[1], content="List-Unsubscribe=One-Click")
    assert done.status_code == 200, done.text


def _event(agent: Api, **fields: str) -> None:
    response = agent.client.post("/v1/events", json=fields)
    assert response.status_code == 200, response.text


ROUTES = [
    "admin, an address",
    "admin, a parent domain",
    "one-click unsubscribe",
    "unsubscribe event",
    "complaint event",
    "hard bounce event",
    "reply asking to unsubscribe",
    "the relay's 550",
]


def _ok(response: Any) -> None:
    assert response.status_code == 200, response.text


def _suppress_by(route: str, daemon: Daemon, agent: Api, admin: Api, smtp: SmtpSink, sent: str) -> None:
    """Suppress lee@customer.example by `route`; `sent` is the message it concerns, delivered."""
    if route == "admin, an address":
        _ok(admin.client.post("/v1/suppressions", json={"entries": ["LEE+whatever@customer.example"]}))
    elif route == "admin, a parent domain":
        _ok(admin.client.post("/v1/suppressions", json={"entries": ["customer.example"]}))
    elif route == "one-click unsubscribe":
        _one_click(daemon, smtp, sent)
    elif route == "reply asking to unsubscribe":
        _event(agent, type="reply", message_id=sent, text="Please remove me from your list.")
    elif route == "hard bounce event":
        _event(agent, type="bounce", message_id=sent, status="5.1.1")
    else:
        _event(agent, type=route.removesuffix(" event"), message_id=sent)


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_that_suppresses_cancels_what_waits_at_once_whatever_its_due_time(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink, route: str
) -> None:
    daemon = make_daemon(BASE, public_url=f"http://127.0.0.1:{free_port()}")
    agent, admin = client_for(daemon, "agent", "sdr-bot"), client_for(daemon, "admin", "dana")
    # The sink answers 550 to local parts starting with "bounce": the relay's own hard bounce.
    lead = "bounce-lee" if route == "the relay's 550" else "lee"
    first = None
    if route != "the relay's 550":
        first = agent.send(f"{lead}@customer.example")["id"]
        agent.wait_status(first, "sent")
    # Due in 40 days: past the 30-day retention of an index that once found waiting messages.
    waiting = [
        agent.send(to, send_at=_after(days=40))["id"]
        for to in (f"{lead.upper()}+later@Customer.example", f"{lead}@customer.example")
    ]
    # Another agent's too: a suppression holds for everyone, whoever's report made it.
    other = client_for(daemon, "agent", "support-bot")
    theirs = other.send(
        f"{lead}+support@customer.example", send_at=_after(days=40), **{"from": "help@acme.example"}
    )
    untouched = agent.send(f"{lead}ann@other.example", send_at=_after(days=40))["id"]

    if first is None:
        agent.wait_status(agent.send(f"{lead}@customer.example")["id"], "bounced")
        # The bounce is recorded, then its recipient suppressed: the claim here is about what the
        # suppression does once it is in, so the test waits for it (a busy machine parts the two).
        wait_until(
            lambda: f"{lead}@customer.example" in admin.client.get("/v1/suppressions").json()["addresses"],
            what="the relay's 550 to suppress its recipient",
        )
    else:
        _suppress_by(route, daemon, agent, admin, smtp, first)

    # A reply cancels what waits for its author first, for that reason; it suppresses too.
    code = "recipient_replied" if route.startswith("reply") else "recipient_suppressed"
    for message_id in waiting:  # at once: no waiting, no polling
        found = agent.status(message_id)
        assert (found["status"], _codes(found)) == ("cancelled", [code]), (route, found)
    found = other.status(theirs["id"])
    assert (found["status"], _codes(found)) == ("cancelled", ["recipient_suppressed"]), (route, found)
    assert agent.status(untouched)["status"] == "queued"
    again = agent.send(f"{lead}+new@customer.example")
    assert (again["status"], _codes(again)) == ("rejected", ["suppressed"])


# --- the last step -------------------------------------------------------------------------------


def test_the_start_of_a_send_cancels_a_recipient_suppressed_while_it_waited(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink, redis_url: str, prefix: str
) -> None:
    """Whatever missed the message (a domain entry whose sweep never ran because the daemon stopped
    between the two, a record from an older version), the script that starts the send refuses it."""
    daemon = make_daemon(BASE)
    agent, auditor = client_for(daemon, "agent", "sdr-bot"), client_for(daemon, "auditor", "ana")
    waiting = agent.send("Ann+Trial@Sub.Blocked.example", send_at=_after(seconds=2))["id"]
    later = agent.send("ann@open.example", send_at=_after(seconds=2.5))["id"]
    # The entry alone, as an interrupted `POST /v1/suppressions` leaves it.
    with redis.Redis.from_url(redis_url) as client:
        client.sadd(Keys(prefix).suppressed_domains, "blocked.example")
    assert agent.status(waiting)["status"] == "queued"

    agent.wait_status(later, "sent")

    found = agent.status(waiting)
    assert (found["status"], _codes(found)) == ("cancelled", ["recipient_suppressed"])
    assert "(blocked.example)" in found["reasons"][0]["detail"]
    assert [step["cause"] for step in found["history"]][-1] == "recipient_suppressed"
    assert _at_relay(smtp) == {later}

    def outcome() -> dict[str, Any] | None:
        entries = auditor.client.get("/v1/audit", params={"message_id": waiting}).json()
        return next((entry for entry in entries if entry["kind"] == "delivery.outcome"), None)

    fields = wait_until(outcome, what="the cancellation's audit entry")["fields"]
    assert fields["status"] == "cancelled" and fields["suppressed_by"] == "blocked.example", fields


# --- the property --------------------------------------------------------------------------------

LOCALS = st.sampled_from(["bob", "Bob", "BOB"])
TAGS = st.one_of(st.just(""), st.from_regex(r"\+[a-z0-9]{1,6}", fullmatch=True))
SUBDOMAINS = st.sampled_from(["", "sub.", "a.b.", "MAIL."])
# Seconds from now: at once, while the suppression is added, soon after, and past any index's life.
DUES = st.sampled_from([0.0, 0.3, 0.8, 3600.0, 40 * 86400.0])


@st.composite
def recipients(draw: st.DrawFn, domain: str) -> tuple[str, float]:
    """A spelling of bob@ at `domain` (or of someone else, or nearby), and when it is due."""
    local = draw(st.one_of(LOCALS, st.sampled_from(["bobby", "robert"])))
    where = draw(st.sampled_from([domain, domain.upper(), f"not{domain}", f"{domain}.org"]))
    return f"{local}{draw(TAGS)}@{draw(SUBDOMAINS)}{where}", draw(DUES)


@st.composite
def scenarios(draw: st.DrawFn, domain: str) -> tuple[str, str, list[tuple[str, float]], list[str]]:
    """(route, entry, messages sent before it, recipients tried after it)."""
    route = draw(st.sampled_from(["admin", "unsubscribe event"]))
    if route == "admin" and draw(st.booleans()):
        entry = draw(st.sampled_from([domain, f"sub.{domain}"])).upper()
    else:
        entry = f"{draw(LOCALS)}{draw(TAGS)}@{draw(st.sampled_from([domain, f'sub.{domain}']))}"
    before = draw(st.lists(recipients(domain), min_size=1, max_size=8))
    after = [to for to, _ in draw(st.lists(recipients(domain), max_size=4))]
    return route, entry, before, after


def test_no_message_to_a_suppressed_recipient_reaches_the_relay_after_the_suppression_was_acknowledged(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink
) -> None:
    # Refusals of suppressed recipients add up over the examples; they must not trip the agent, and
    # its sends add up too: they must not wait for a mass-send approval.
    daemon = make_daemon(
        BASE + "[safe_mode]\nmax_denials = 100000\n[approvals]\nmass_send_threshold = 100000\n"
    )
    agent, admin = client_for(daemon, "agent", "sdr-bot"), client_for(daemon, "admin", "dana")
    domains = (f"d{n}.example" for n in itertools.count())  # each example its own recipients

    @settings(max_examples=25, derandomize=True)
    @given(data=st.data())
    def holds(data: st.DataObject) -> None:
        domain = next(domains)
        route, entry, before, after = data.draw(scenarios(domain))
        if route == "unsubscribe event":  # a message sent to the entry's spelling, then unsubscribed
            seed = agent.send(entry)["id"]
            agent.wait_status(seed, "sent")
        sent = {agent.send(to, send_at=_after(seconds=due))["id"]: (to, due) for to, due in before}

        if route == "admin":
            _ok(admin.client.post("/v1/suppressions", json={"entries": [entry]}))
        else:
            _event(agent, type="unsubscribe", message_id=seed)

        # Acknowledged: what it covers is cancelled, or was already in the relay's hands.
        in_hand = set()
        for message_id, (to, _) in sent.items():
            status = agent.status(message_id)["status"]
            if _covers(entry, to):
                assert status in ("cancelled", "sending", "sent"), (entry, to, status)
                if status != "cancelled":
                    in_hand.add(message_id)
            else:
                assert status in ("queued", "sending", "sent"), (entry, to, status)
        for to in after:
            decision = agent.send(to, send_at=_after(seconds=0.3))
            sent[decision["id"]] = (to, 0.3)
            assert (decision["status"] == "rejected") == _covers(entry, to), (entry, to, decision)
        # Everything due within the second that is not covered reaches the relay; by then
        # whatever is covered and was due as soon has had every chance to go too.
        due_soon = {m for m, (to, due) in sent.items() if due < 1 and not _covers(entry, to)}
        wait_until(lambda: due_soon <= _at_relay(smtp), what="the uncovered messages due soon")
        for message_id in in_hand:
            wait_until(lambda m=message_id: agent.status(m)["status"] == "sent", what=f"{message_id} sent")
        covered_at_relay = {m for m in _at_relay(smtp) if m in sent and _covers(entry, sent[m][0])}
        assert covered_at_relay <= in_hand, (entry, {m: sent[m] for m in covered_at_relay - in_hand})

    holds()
