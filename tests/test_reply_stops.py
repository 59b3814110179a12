"""Company-wide reply stops and out-of-office return dates.

With `[reply_stops] by = "domain"`, a reply from bob@co.example stops the agent whose message he
answered from mailing carol@co.example too: what waits is cancelled and new mail refused
(`company_replied`) for the cooldown; free-mail domains are never one company. An out-of-office
reply naming a return date moves the agent's waiting follow-ups to 09:00 UTC on that day.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import redis

from sendguard.submission import message_id_header
from tests.conftest import Api, Daemon
from tests.peers import DnsServer, SmtpSink

RULES = """
[ingress]
block_free_domains = false
recipient_cooldown = "0s"

[reply_stops]
by = "domain"
"""


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon], dns_server: DnsServer) -> Daemon:
    dns_server.add_mx_domain("co.example")
    return make_daemon(RULES)


@pytest.fixture
def due_ms(redis_url: str, prefix: str) -> Iterator[Callable[[str], float | None]]:
    """When a message is due, from the due queue itself."""
    client = redis.Redis.from_url(redis_url)
    yield lambda message_id: client.zscore(f"{prefix}:due", message_id)
    client.close()


def _later() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


def _reply(admin: Api, message_id: str) -> None:
    event = {"type": "reply", "message_id": message_id, "text": "Thanks, we are not interested right now."}
    response = admin.client.post("/v1/events", json=event)
    assert response.status_code == 200, response.text


def _codes(message: dict[str, Any]) -> list[str]:
    return [reason["code"] for reason in message["reasons"]]


def test_a_reply_stops_the_agent_mailing_the_company_but_not_a_free_mail_domain(
    daemon: Daemon, client_for: Callable[..., Api], smtp: SmtpSink
) -> None:
    agent, support, admin = (
        client_for(daemon, "agent", "sdr-bot"),
        client_for(daemon, "agent", "support-bot"),
        client_for(daemon, "admin", "dana"),
    )
    to_bob = agent.send("bob@co.example")["id"]
    to_x = agent.send("x@gmail.com")["id"]
    agent.wait_status(to_bob, "sent")
    agent.wait_status(to_x, "sent")
    to_carol = agent.send("carol@co.example", send_at=_later())["id"]
    to_y = agent.send("y@gmail.com", send_at=_later())["id"]
    other_agent = support.send("dave@co.example", send_at=_later(), **{"from": "help@acme.example"})["id"]

    _reply(admin, to_bob)
    _reply(admin, to_x)

    carol = agent.status(to_carol)
    assert carol["status"] == "cancelled" and _codes(carol) == ["company_replied"], carol
    assert agent.status(to_y)["status"] == "queued"  # gmail.com is not one company
    assert support.status(other_agent)["status"] == "queued"  # another agent's conversation
    refused = agent.send("erin@co.example")
    assert (refused["status"], _codes(refused)) == ("rejected", ["company_replied"])
    assert "someone at co.example replied to agent sdr-bot" in refused["reasons"][0]["detail"]
    assert agent.send("z@gmail.com")["status"] == "queued"
    checked = agent.client.post("/v1/recipients/check", json={"to": ["frank@co.example", "z@gmail.com"]})
    assert [(row["verdict"], _codes(row)) for row in checked.json()["recipients"]] == [
        ("rejected", ["company_replied"]),
        ("would_queue", []),
    ]


def test_a_reply_while_the_stop_is_in_force_extends_it_without_walking_the_queue(
    daemon: Daemon, client_for: Callable[..., Api], redis_url: str
) -> None:
    """The stop refuses the company's new messages, so the first reply's recall left none waiting:
    a later one (another recipient there, or the same one again) only extends the stop. Each
    walked the whole queue, 0.25 s at 10,000 waiting messages, and a recipient can answer every
    message it got; the walk is counted here by Redis itself."""
    agent, admin = client_for(daemon, "agent", "sdr-bot"), client_for(daemon, "admin", "dana")
    to_bob, to_bea = (agent.send(to)["id"] for to in ("bob@co.example", "bea@co.example"))
    agent.wait_status(to_bob, "sent")
    agent.wait_status(to_bea, "sent")
    for n in range(3):  # waiting for others, which a walk would read
        agent.send(f"lead{n}@elsewhere.example", send_at=_later())
    server = redis.Redis.from_url(redis_url)

    def walks() -> int:
        return int(server.info("commandstats").get("cmdstat_zscan", {}).get("calls", 0))

    before = walks()
    _reply(admin, to_bob)
    assert walks() > before  # the stop began: what waited for the company was recalled
    before = walks()
    _reply(admin, to_bea)
    assert walks() == before
    refused = agent.send("erin@co.example")
    assert (refused["status"], _codes(refused)) == ("rejected", ["company_replied"])
    server.close()


def test_an_out_of_office_reply_with_a_return_date_moves_the_follow_up(
    daemon: Daemon, client_for: Callable[..., Api], due_ms: Callable[[str], float | None]
) -> None:
    agent, admin = client_for(daemon, "agent", "sdr-bot"), client_for(daemon, "admin", "dana")
    first = agent.send("bob@co.example")["id"]
    agent.wait_status(first, "sent")
    follow_up = agent.send("bob@co.example", send_at=_later())["id"]
    later_still = agent.send("bob@co.example", send_at=(datetime.now(UTC) + timedelta(days=20)).isoformat())
    back = datetime.now(UTC).date() + timedelta(days=10)
    raw = (
        "From: Bob <bob@co.example>\r\nTo: alice@acme.example\r\n"
        "Subject: Automatic reply: Quick question\r\nAuto-Submitted: auto-replied\r\n"
        f"In-Reply-To: {message_id_header(first, 'alice@acme.example')}\r\n"
        "Message-ID: <ooo-1@co.example>\r\n\r\n"
        f"Thank you for your message. I am out of the office and back on {back.day} {back:%B}.\r\n"
    ).encode()
    response = admin.client.post("/v1/inbound", content=raw, headers={"Content-Type": "message/rfc822"})
    assert response.status_code == 200, response.text

    moved = agent.status(follow_up)
    assert moved["status"] == "queued"  # moved, not cancelled
    assert moved["history"][-1]["cause"] == "recipient_away"
    due = due_ms(follow_up)
    # Due by Redis' clock, as every due time is: the daemon's and Redis' may differ by a moment.
    assert due == pytest.approx(
        datetime(back.year, back.month, back.day, 9, tzinfo=UTC).timestamp() * 1000, abs=1000
    )
    assert (
        agent.status(later_still["id"])["history"][-1]["cause"] != "recipient_away"
    )  # never brought forward
    assert agent.send("carol@co.example")["status"] == "queued"  # an auto-reply is no reply


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("I am out of the office and back on 3 December.", date(2026, 12, 3)),
        ("Returning 2026-12-03 with limited access", date(2026, 12, 3)),
        ("I'm away until December 3rd, 2026.", date(2026, 12, 3)),
        ("Ich bin ab dem 03.12.2026 wieder im Büro.", date(2026, 12, 3)),
        ("Ich bin bis zum 3. Dezember nicht erreichbar.", date(2026, 12, 3)),
        ("Je serai de retour le 3 décembre.", date(2026, 12, 3)),
        ("Absent jusqu'au 03/12.", date(2026, 12, 3)),
        ("Back on 3 December 2025.", None),  # past
        ("Back on 3 March.", None),  # more than 60 days ahead
        ("I will answer your note of 12/03 soon.", None),  # no return phrase; 12/03 is ambiguous in English
        ("Thanks for your mail of 25 November.", None),
    ],
)
def test_return_dates_are_read_conservatively(text: str, back: date | None) -> None:
    from sendguard.feedback.return_date import return_date

    assert return_date(text, date(2026, 11, 28)) == back
