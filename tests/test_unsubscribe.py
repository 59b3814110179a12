"""One-click unsubscribe (RFC 8058) on a real daemon: the headers, the link, and suppression at once."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis
from pydantic import ValidationError

from sendguard.config import Settings
from tests.conftest import Api, Daemon, free_port
from tests.peers import SmtpSink

ClientFor = Callable[..., Api]
RULES = '[ingress]\nrecipient_cooldown = "0s"\n'


def test_every_message_carries_a_one_click_link_that_suppresses_the_recipient_at_once(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, redis_url: str, prefix: str
) -> None:
    public = f"http://127.0.0.1:{free_port()}"
    daemon = make_daemon(RULES, public_url=public)
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "root")
    own = {"List-Unsubscribe": "<mailto:unsubscribe@acme.example>", "List-Unsubscribe-Post": "x"}
    sent = agent.send("lead@customer.example", headers=own)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    waiting = agent.send("lead@customer.example", send_at=later)
    agent.send("other@customer.example")
    agent.wait_status(sent["id"], "sent")

    [mail] = [r.message for r in smtp.wait_for(2) if r.rcpt_tos == ("lead@customer.example",)]
    header = " ".join(mail["List-Unsubscribe"].split())  # unfolded: a long header is folded on the wire
    match = re.fullmatch(
        rf"<({re.escape(public)}/v1/unsubscribe/[^>]+)>, <mailto:unsubscribe@acme\.example>", header
    )
    assert match, header
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = match[1]
    [other] = [r.message for r in smtp.snapshot() if r.rcpt_tos == ("other@customer.example",)]
    assert other["List-Unsubscribe"] != header, "each recipient gets a link of their own"

    with daemon.client() as browser:  # no token: anyone with the link
        # Opening the link (or a scanner following it) only shows a button.
        page = browser.get(link)
        assert page.status_code == 200 and '<form method="post">' in page.text
        assert admin.client.get("/v1/suppressions").json()["addresses"] == []
        # A forged or damaged link does nothing.
        token = link.rsplit("/", 1)[1]
        message_id, encoded, mac = token.split(".")
        forged = f"{public}/v1/unsubscribe/{message_id}.{encoded[:-2]}AA.{mac}"
        assert browser.post(forged, content="List-Unsubscribe=One-Click").status_code == 404
        assert browser.post(f"{public}/v1/unsubscribe/not-a-token").status_code == 404
        for odd in (f"{message_id}.{encoded}.%C3%A9", f"%C3%A9.{encoded}.{mac}"):  # not ASCII: 500 once
            assert browser.get(f"{public}/v1/unsubscribe/{odd}").status_code == 404
            assert browser.post(f"{public}/v1/unsubscribe/{odd}").status_code == 404

        done = browser.post(
            link,
            content="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert done.status_code == 200 and "unsubscribed" in done.text
    assert admin.client.get("/v1/suppressions").json()["addresses"] == ["lead@customer.example"]
    cancelled = agent.status(waiting["id"])
    assert cancelled["status"] == "cancelled" and cancelled["reasons"][0]["code"] == "recipient_suppressed"
    assert agent.send("lead@customer.example")["reasons"][0]["code"] == "suppressed"
    assert daemon.metric("sendguard_unsubscribes_total") == 1
    history = agent.status(sent["id"])["history"]
    assert history[-1]["cause"] == "unsubscribe" and "one-click" in history[-1]["detail"]

    # The link is public: posting it again (50 times) answers the same and writes nothing more.
    with redis.Redis.from_url(redis_url) as store:

        def entries() -> int:
            return int(store.llen(f"{prefix}:audit:chain")) + int(store.llen(f"{prefix}:audit:pending"))

        before = entries()
        with daemon.client() as browser:
            for _ in range(50):
                again = browser.post(link, content="List-Unsubscribe=One-Click")
                assert again.status_code == 200 and "unsubscribed" in again.text
        assert entries() == before
    assert agent.status(sent["id"])["history"] == history
    assert daemon.metric("sendguard_unsubscribes_total") == 1


def test_a_one_click_link_still_suppresses_after_its_message_record_expired(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, redis_url: str, prefix: str
) -> None:
    # An event that matches no message moves nothing, but the link's signature proves the address.
    public = f"http://127.0.0.1:{free_port()}"
    daemon = make_daemon(RULES, public_url=public)
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "root")
    sent = agent.send("lead@customer.example")
    agent.wait_status(sent["id"], "sent")
    [mail] = [r.message for r in smtp.wait_for(1)]
    link = re.search(r"<(http[^>]+/v1/unsubscribe/[^>]+)>", " ".join(mail["List-Unsubscribe"].split()))
    assert link
    with redis.Redis.from_url(redis_url) as store:
        assert store.delete(f"{prefix}:msg:{sent['id']}") == 1  # as the 30-day retention would

    with daemon.client() as browser:
        done = browser.post(link[1], content="List-Unsubscribe=One-Click")

    assert done.status_code == 200, done.text
    assert admin.client.get("/v1/suppressions").json()["addresses"] == ["lead@customer.example"]


def test_without_a_public_url_there_is_no_one_click_link(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    agent.wait_status(agent.send("lead@customer.example")["id"], "sent")
    [mail] = [r.message for r in smtp.wait_for(1)]
    assert mail["List-Unsubscribe"] is None and mail["List-Unsubscribe-Post"] is None
    assert agent.client.post("/v1/unsubscribe/abc.def.ghi").status_code == 404


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://mail.acme.example", "https"),
        ("ftp://127.0.0.1", "https"),
        ("https://mail.acme.example/?x=1", "no query"),
        ("https://", "host"),
    ],
)
def test_a_public_url_must_be_https_except_on_loopback(url: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(public_url=url)
    assert Settings(public_url="https://mail.acme.example/sg/").public_url == "https://mail.acme.example/sg"
    assert Settings(public_url="http://localhost:8587").public_url == "http://localhost:8587"


def test_the_unsubscribe_pages_name_sender_and_recipient_escaped_and_a_bad_link_says_so_in_html(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    public = f"http://127.0.0.1:{free_port()}"
    daemon = make_daemon(RULES, public_url=public)
    agent = client_for(daemon, "agent", "sdr-bot")
    hostile = "<script>alert(1)</script>"
    sent = agent.send("lead@customer.example", **{"from": f'"{hostile}" <alice@acme.example>'})
    agent.wait_status(sent["id"], "sent")
    [mail] = [r.message for r in smtp.wait_for(1)]
    link = re.search(r"<(http[^>]+/v1/unsubscribe/[^>]+)>", " ".join(mail["List-Unsubscribe"].split()))
    assert link

    with daemon.client() as browser:
        asked = browser.get(link[1])
        done = browser.post(link[1], content="List-Unsubscribe=One-Click")
        token = link[1].rsplit("/", 1)[1]
        cut_short = f"{public}/v1/unsubscribe/{token[:-3]}"
        bad = [browser.get(cut_short), browser.post(cut_short, content="List-Unsubscribe=One-Click")]

    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; &lt;alice@acme.example&gt;"
    for page in (asked, done):
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert escaped in page.text and "lead@customer.example" in page.text
        assert "<script" not in page.text.lower(), "no scripts, and the sender's name is text"
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text
        assert not re.search(r"\b(src|href)=", page.text), "nothing is loaded from elsewhere"
        assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<form method="post">' in asked.text and "unsubscribed" in done.text
    for page in bad:
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
        assert "link is not valid" in page.text
