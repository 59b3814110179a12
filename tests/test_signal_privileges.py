"""Who may report what (issue 11, property 4): an agent's events move only its own messages and scope.

A hijacked agent writes every field of the events it posts and of the raw mail it hands in. Two
agents share one daemon, one inbox, one segment and one campaign: whatever `sdr-bot` reports, it
may trip only `agent:sdr-bot`, suppress only the addresses its own sent messages went to, and
cancel or mark only its own messages. `support-bot`'s messages and every shared scope are out of
its reach, and an operator keeps the recipient tie and the full count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import Api, Daemon
from tests.peers import SmtpSink
from tests.test_signals_in import UNKNOWN_ID, Sent, _about, at_relay

ClientFor = Callable[..., Api]

# Every counted bad signal trips the first scope it is counted in at once, so a signal that
# reached a scope it must not reach shows as a trip.
TOUCHY = """
[ingress]
recipient_cooldown = "0s"

[safe_mode]
min_sent = 1
bounce_rate = 0.01
complaint_rate = 0.01
min_replies = 1
negative_reply_rate = 0.01
abusive_replies = 1

[approvals]
mass_send_threshold = 1000
"""
# The two agents share all of these: the inbox, its domain, the segment, the campaign, global.
SHARED = {"from": "help@acme.example", "segment": "smb", "campaign": "q4"}
ATTACKER_SENT = ["a1@customer.example", "a2@customer.example"]
ATTACKER_WAITING = "a3@customer.example"
VICTIM_SENT = ["v1@customer.example", "v2@customer.example"]
VICTIM_WAITING = ["v1@customer.example", "v3@customer.example"]
ADDRESSES = [*ATTACKER_SENT, ATTACKER_WAITING, *VICTIM_SENT, *VICTIM_WAITING, "stranger@elsewhere.example"]
NO_AGENT_WATCHED = """
[safe_mode]
scopes = ["global", "inbox", "sender_domain", "segment", "campaign"]
"""
ABUSIVE = "You idiots, this is spam, stop harassing me."
UNSUBSCRIBE = "Remove me from your list."


class Scene(NamedTuple):
    """Two agents' messages on one daemon, and the clients that act and look."""

    daemon: Daemon
    attacker: Api  # sdr-bot
    victim: Api  # support-bot
    admin: Api
    attacker_sent: list[Sent]
    attacker_waiting: str
    victim_sent: list[Sent]
    victim_waiting: list[str]


def _later() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


def _sent(api: Api, smtp: SmtpSink, to: str) -> Sent:
    message_id = api.send(to, **SHARED)["id"]
    api.wait_status(message_id, "sent")
    return at_relay(smtp, message_id, to)


@pytest.fixture
def scene(make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink) -> Scene:
    daemon = make_daemon(TOUCHY)
    attacker = client_for(daemon, "agent", "sdr-bot")
    victim = client_for(daemon, "agent", "support-bot")
    admin = client_for(daemon, "admin", "dana")
    victim_sent = [_sent(victim, smtp, to) for to in VICTIM_SENT]
    victim_waiting = [victim.send(to, send_at=_later(), **SHARED)["id"] for to in VICTIM_WAITING]
    return Scene(
        daemon,
        attacker,
        victim,
        admin,
        [_sent(attacker, smtp, to) for to in ATTACKER_SENT],
        attacker.send(ATTACKER_WAITING, send_at=_later(), **SHARED)["id"],
        victim_sent,
        victim_waiting,
    )


def _trips(scene: Scene) -> list[str]:
    return [trip["scope"] for trip in scene.admin.client.get("/v1/safe-mode").json()]


def _suppressed(scene: Scene) -> list[str]:
    addresses: list[str] = scene.admin.client.get("/v1/suppressions").json()["addresses"]
    return addresses


def _post(api: Api, **fields: Any) -> httpx.Response:
    return api.client.post("/v1/events", json=fields)


def _history(api: Api, message_id: str) -> list[str]:
    return [step["cause"] for step in api.status(message_id)["history"]]


def _assert_contained(scene: Scene, victim_history: dict[str, list[str]]) -> None:
    """Nothing the attacker did reached beyond its own messages and its own scope."""
    assert set(_trips(scene)) <= {"agent:sdr-bot"}
    assert set(_suppressed(scene)) <= set(ATTACKER_SENT)
    for message_id, history in victim_history.items():
        assert _history(scene.victim, message_id) == history, f"support-bot's {message_id} was touched"
    assert [scene.victim.status(m)["status"] for m in scene.victim_waiting] == ["queued", "queued"]


# --- the agent's tie: its own sent messages, by id ------------------------------------------------


def test_an_agent_reports_only_about_its_own_sent_messages_by_id(scene: Scene) -> None:
    before = {m.id: _history(scene.victim, m.id) for m in scene.victim_sent}
    theirs, own_waiting = scene.victim_sent[0], scene.attacker_waiting

    for kind in ("complaint", "bounce", "unsubscribe", "reply"):
        other = _post(scene.attacker, type=kind, message_id=theirs.header, recipient=theirs.to)
        unknown = _post(scene.attacker, type=kind, message_id=UNKNOWN_ID)
        by_recipient = _post(scene.attacker, type=kind, recipient=theirs.to)
        unsent = _post(scene.attacker, type=kind, message_id=own_waiting)

        assert (other.status_code, unknown.status_code) == (404, 404), (other.text, unknown.text)
        # Another agent's message is answered like an unknown one: its existence is not told.
        assert other.json() == {
            "detail": f"no message {theirs.id} of agent sdr-bot: "
            "an agent reports events only about its own messages"
        }
        assert unknown.json()["detail"].startswith(f"no message {UNKNOWN_ID} of agent sdr-bot")
        assert by_recipient.status_code == 422
        assert by_recipient.json()["detail"].startswith("message_id: an agent reports events")
        assert unsent.status_code == 409
        assert unsent.json()["detail"] == (
            f"message {own_waiting} is queued: events are about messages that were sent, and this one was not"
        )
    # Raw mail an agent hands in is held to the same rule, before any of it is applied.
    forged = _about("arf_abuse.eml", theirs)
    assert scene.attacker.client.post("/v1/inbound", content=forged).status_code == 404
    untraceable = _about("dsn_postfix_hard.eml", theirs, untraceable=True)
    assert scene.attacker.client.post("/v1/inbound", content=untraceable).status_code == 422

    _assert_contained(scene, before)
    assert _trips(scene) == [] and _suppressed(scene) == []
    assert scene.attacker.status(own_waiting)["status"] == "queued"
    assert scene.daemon.metric("sendguard_complaints_total") == 0


def test_an_agents_complaint_about_its_own_message_stops_only_itself(
    scene: Scene, client_for: ClientFor
) -> None:
    own = scene.attacker_sent[0]

    out = _post(scene.attacker, type="complaint", message_id=own.id, recipient="stranger@elsewhere.example")

    assert out.status_code == 200, out.text
    # Its own message's recipient only, never the address it named.
    assert (out.json()["suppressed"], out.json()["tripped"]) == (own.to, ["agent:sdr-bot"])
    assert _suppressed(scene) == [own.to]
    assert _trips(scene) == ["agent:sdr-bot"]
    assert scene.victim.send("v9@customer.example", **SHARED)["status"] == "queued"
    # The same complaint from an operator counts on the shared scopes it has not counted in yet:
    # the list's first one trips.
    operator = client_for(scene.daemon, "operator", "olive")
    assert _post(operator, type="complaint", message_id=own.id).json()["tripped"] == ["segment:smb"]


def test_an_agents_replies_count_on_its_own_scope_and_only_as_bad_news(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    # The agent scope is not even watched; an agent's word still weighs on it, and on nothing else.
    daemon = make_daemon(
        NO_AGENT_WATCHED + "min_replies = 2\nnegative_reply_rate = 0.5\nabusive_replies = 2\n"
    )
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")
    sent = [_sent(agent, smtp, f"lead{i}@customer.example") for i in range(5)]

    # Good news about itself counts nothing: three positive replies would dilute the rate below.
    praised = [_post(agent, type="reply", message_id=m.id, sentiment="positive").json() for m in sent[:3]]
    abusive = _post(agent, type="reply", message_id=sent[3].id, text=ABUSIVE).json()
    negative = _post(agent, type="reply", message_id=sent[4].id, sentiment="negative").json()

    assert [out["tripped"] for out in praised] == [[], [], []]
    assert (abusive["sentiment"], abusive["tripped"]) == ("abusive", [])
    assert negative["tripped"] == ["agent:sdr-bot"]
    trips = admin.client.get("/v1/safe-mode").json()
    assert [(t["scope"], t["cause"], t["value"]) for t in trips] == [
        ("agent:sdr-bot", "negative_reply_rate", 1)
    ]
    assert daemon.metric("sendguard_replies_total", sentiment="positive") == 3


def test_an_agents_reply_cancels_only_its_own_waiting_messages(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(TOUCHY)
    agent = client_for(daemon, "agent", "sdr-bot")
    other = client_for(daemon, "agent", "support-bot")
    sent = _sent(agent, smtp, "lee@customer.example")
    follow_up = agent.send("lee@customer.example", send_at=_later(), **SHARED)["id"]
    theirs = other.send("lee@customer.example", send_at=_later(), **SHARED)["id"]

    out = _post(agent, type="reply", message_id=sent.id, sentiment="positive")

    assert out.json()["cancelled"] == 1
    assert agent.status(follow_up)["status"] == "cancelled"
    assert other.status(theirs)["status"] == "queued"


# --- the property -----------------------------------------------------------------------------------


class Reference(NamedTuple):
    """Which message an attacker's event names, and in what form."""

    whose: str  # attacker_sent, attacker_waiting, victim_sent, victim_waiting, unknown, none
    index: int
    form: str  # id, header, verp


def _message_id(scene: Scene, ref: Reference) -> str | None:
    ids = {
        "attacker_sent": [m.id for m in scene.attacker_sent],
        "attacker_waiting": [scene.attacker_waiting],
        "victim_sent": [m.id for m in scene.victim_sent],
        "victim_waiting": scene.victim_waiting,
        "unknown": [UNKNOWN_ID],
        "none": [],
    }[ref.whose]
    if not ids:
        return None
    found = ids[ref.index % len(ids)]
    return {"id": found, "header": f"<{found}.sg@acme.example>", "verp": f"bounces+{found}@x.example"}[
        ref.form
    ]


REFERENCES = st.builds(
    Reference,
    st.sampled_from(
        ["attacker_sent", "attacker_waiting", "victim_sent", "victim_waiting", "unknown", "none"]
    ),
    st.integers(0, 1),
    st.sampled_from(["id", "header", "verp"]),
)
RECIPIENTS = st.none() | st.sampled_from(ADDRESSES) | st.sampled_from(ADDRESSES).map(str.upper)
EVENTS = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("bounce")},
        optional={
            "bounce_type": st.sampled_from(["hard", "soft"]),
            "status": st.sampled_from(["5.1.1", "4.2.2", "5.7.1"]),
            "detail": st.text(max_size=20),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("reply")},
        optional={
            "sentiment": st.sampled_from(["positive", "neutral", "negative", "abusive"]),
            "text": st.sampled_from([ABUSIVE, UNSUBSCRIBE, "Sounds great, thanks!"]),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["complaint", "unsubscribe", "delivered"])},
        optional={"detail": st.text(max_size=20)},
    ),
)
MAIL = st.tuples(
    st.sampled_from(["dsn_postfix_hard.eml", "arf_abuse.eml", "reply_abusive.eml", "reply_unsubscribe.eml"]),
    st.sampled_from(["attacker", "victim"]),
    st.integers(0, 1),
    st.booleans(),
)


def test_nothing_an_agent_reports_reaches_another_agent_or_a_shared_scope(scene: Scene) -> None:
    """Any events and raw mail from sdr-bot: the trips, suppressions and changes stay its own."""
    victim_history = {
        m: _history(scene.victim, m) for m in [*(s.id for s in scene.victim_sent), *scene.victim_waiting]
    }
    answered: set[int] = set()

    @settings(max_examples=150, derandomize=True)
    @given(
        steps=st.lists(
            st.tuples(EVENTS, REFERENCES, RECIPIENTS) | MAIL,
            min_size=1,
            max_size=4,
        )
    )
    def attack(steps: list[Any]) -> None:
        for step in steps:
            if len(step) == 3:
                fields, ref, recipient = step
                body = dict(fields)
                if (message_id := _message_id(scene, ref)) is not None:
                    body["message_id"] = message_id
                if recipient is not None:
                    body["recipient"] = recipient
                response = _post(scene.attacker, **body)
            else:
                sample, whose, index, untraceable = step
                target = (scene.attacker_sent if whose == "attacker" else scene.victim_sent)[index]
                raw = _about(sample, target, untraceable=untraceable)
                response = scene.attacker.client.post(
                    "/v1/inbound", content=raw, headers={"Content-Type": "message/rfc822"}
                )
            assert response.status_code in (200, 404, 409, 422), response.text
            answered.add(response.status_code)
        _assert_contained(scene, victim_history)

    attack()
    # The examples reached every kind of answer, and the attacker did hurt itself.
    assert answered == {200, 404, 409, 422}
    assert _trips(scene) == ["agent:sdr-bot"]
    assert _suppressed(scene)
