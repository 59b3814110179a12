"""Rules on relay replies, against real replies from the SMTP sink: a defer holds the scope's mail
until it ends and then lets it go by itself, a slow keeps it to the lower limit, a trip holds it
until a person resumes; a storm of matching replies acts once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sendguard.delivery.reply_rules import matches
from sendguard.errors import ConfigError
from sendguard.rules import REPLY_TEXT_SCANNED, ReplyRule, load_rules
from tests.conftest import Api, Daemon, by_domain, max_in_any_window, wait_until
from tests.peers import SmtpSink, Webhook

ClientFor = Callable[..., Api]
# Gmail's published text for its rate limiting (support.google.com/a/answer/3726730).
GMAIL_RATE_LIMITED = (
    "421 4.7.28 Gmail has detected an unusual rate of unsolicited mail. To protect our users from "
    "spam, mail has been temporarily rate limited."
)
GMAIL_UNAUTHENTICATED = (
    "550 5.7.26 Unauthenticated email from acme.example is not accepted due to domain's DMARC policy."
)
BASE = """
[ingress]
recipient_cooldown = "0s"
"""


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


def applied(auditor: Api, count: int = 1) -> list[dict[str, Any]]:
    """The chained `reply_rule.applied` entries, once there are at least `count`."""
    found: list[dict[str, Any]] = wait_until(
        lambda: len(entries := auditor.audit(kind="reply_rule.applied")) >= count and entries,
        what=f"{count} reply_rule.applied entries",
    )
    return found


def test_a_storm_of_rate_limit_replies_defers_the_domain_once_and_it_resumes_at_the_end(
    make_daemon: Callable[..., Daemon],
    client_for: ClientFor,
    smtp: SmtpSink,
    webhook: Webhook,
    redis_url: str,
    prefix: str,
) -> None:
    daemon = make_daemon(
        BASE
        + """
[[reply_rule]]
name = "gmail-rate-limited"
code = "421"
enhanced = "4.7.28"
text = "unusual rate of unsolicited mail"
scope = "recipient_domain"
action = "defer"
duration = "2s"
""",
        notify_url=webhook.url,
        smtp_connections="6",
    )
    agent = client_for(daemon, "agent", "sdr-bot")
    auditor = client_for(daemon, "auditor", "ana")
    # Six deliveries in DATA at once, all answered 421: the replies land together, as in a storm.
    smtp.delay, smtp.data_reply = 0.5, GMAIL_RATE_LIMITED
    storm = [agent.send(f"storm{i}@customer.example")["id"] for i in range(6)]
    wait_until(
        lambda: daemon.metric("sendguard_smtp_replies_total", reply_class="4xx", stage="data") == 6,
        what="six 421 replies",
    )
    smtp.delay, smtp.data_reply = 0.0, None

    [entry] = applied(auditor)
    ends = entry["fields"]["until"] / 1000
    assert entry["fields"]["scope"] == "recipient_domain:customer.example"
    assert entry["fields"]["name"] == "gmail-rate-limited"
    assert entry["fields"]["reply"].startswith("421 4.7.28 Gmail has detected")

    later = agent.send("later@customer.example")["id"]
    other = agent.send("other@other.example")["id"]
    agent.wait_status(other, "sent")  # another domain is not held back
    waiting = agent.status(later)
    assert waiting["status"] in {"queued", "deferred"} and waiting["waiting_for"] == "recipient_domain"
    with redis.Redis.from_url(redis_url) as client:  # due at the end itself: nothing polls meanwhile
        due = client.zscore(f"{prefix}:due", later)
    assert due is not None and abs(due / 1000 - ends) < 0.05
    agent.wait_status(later, "sent")
    for message in storm:
        agent.wait_status(message, "sent")

    arrivals = by_domain(smtp.received)["customer.example"]
    assert len(arrivals) == 7
    assert min(arrivals) >= ends - 0.005, "a message reached the relay before the deferral ended"
    assert max(arrivals) < ends + 2, "the deferred mail did not go soon after the end"
    # One action for the storm: one entry (checked above, after all were recorded), one count, one notice.
    assert len(applied(auditor)) == 1
    assert daemon.metric("sendguard_reply_rule_actions_total", action="defer") == 1
    notices = [b for b in webhook.bodies() if b["sendguard"]["event"] == "reply_rule"]
    assert len(notices) == 1 and "customer.example deferred until" in notices[0]["text"]


def test_a_slow_rule_keeps_the_domain_to_the_lower_limit(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(
        BASE
        + """
[[reply_rule]]
code = "4xx"
text = "rate[ -]limited"
scope = "recipient_domain"
action = "slow"
limit = 2
per = "1s"
duration = "1m"
"""
    )
    agent = client_for(daemon, "agent", "sdr-bot")
    auditor = client_for(daemon, "auditor", "ana")
    smtp.rcpt_replies["first@customer.example"] = GMAIL_RATE_LIMITED.replace("421", "451", 1)
    first = agent.send("first@customer.example")["id"]
    [entry] = applied(auditor)
    assert entry["fields"]["action"] == "slow"
    smtp.rcpt_replies.clear()

    sent = [first] + [agent.send(f"next{i}@customer.example")["id"] for i in range(4)]
    other = agent.send("other@other.example")["id"]
    for message in [*sent, other]:
        agent.wait_status(message, "sent")
    arrivals = by_domain(smtp.received)
    assert len(arrivals["customer.example"]) == 5
    assert max_in_any_window(arrivals["customer.example"], 1.0) <= 2
    assert daemon.metric("sendguard_reply_rule_actions_total", action="slow") == 1


def test_an_authentication_refusal_trips_the_sender_domain_until_a_person_resumes(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(
        BASE
        + """
[[reply_rule]]
name = "gmail-unauthenticated"
code = "550"
enhanced = "5.7.26"
scope = "sender_domain"
action = "trip"
"""
    )
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")
    auditor = client_for(daemon, "auditor", "ana")
    smtp.rcpt_replies["dmarc@customer.example"] = GMAIL_UNAUTHENTICATED
    agent.wait_status(agent.send("dmarc@customer.example")["id"], "bounced")

    [entry] = applied(auditor)
    assert (entry["fields"]["action"], entry["fields"]["scope"]) == ("trip", "sender_domain:acme.example")
    [trip] = admin.client.get("/v1/safe-mode").json()
    assert (trip["scope"], trip["cause"]) == ("sender_domain:acme.example", "reply_rule")
    assert "gmail-unauthenticated" in trip["detail"] and "5.7.26" in trip["detail"]
    held = agent.send("next@customer.example")
    assert held["status"] == "held"

    smtp.rcpt_replies.clear()
    resumed = admin.client.delete(
        "/v1/safe-mode/sender_domain:acme.example", params={"reason": "DKIM key published"}
    )
    assert resumed.status_code == 200, resumed.text
    agent.wait_status(held["id"], "sent")
    assert daemon.metric("sendguard_reply_rule_actions_total", action="trip") == 1


@pytest.mark.parametrize(
    ("rule", "reply", "matched"),
    [
        ({"code": "421"}, "421 4.7.28 slow down", True),
        ({"code": "4xx"}, "451 4.3.0 try later", True),
        ({"code": "4xx"}, "550 5.1.1 unknown", False),
        ({"enhanced": "4.7"}, "421 4.7.28 slow down", True),
        ({"enhanced": "4.7.2"}, "421 4.7.28 slow down", False),  # whole parts, not characters
        ({"enhanced": "5.7.1"}, "550 no enhanced code here", False),
        ({"text": r"\[TS0[1-3]\]"}, "421 4.7.0 [TS02] Messages from 192.0.2.1 temporarily deferred", True),
        ({"text": "S3150"}, "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent (s3150)", True),
        ({"code": "421", "text": "TSS04"}, "451 4.7.0 [TSS04] deferred", False),  # every part must match
    ],
)
def test_a_rule_matches_on_every_part_it_gives(rule: dict[str, str], reply: str, matched: bool) -> None:
    parsed = ReplyRule.model_validate({**rule, "scope": "global", "action": "defer", "duration": "1m"})
    code, _, text = reply.partition(" ")
    assert matches(parsed, int(code), text) is matched


def test_only_the_first_kilobytes_of_a_reply_are_searched() -> None:
    rule = ReplyRule.model_validate({"text": "needle", "scope": "global", "action": "trip"})
    assert matches(rule, 550, "x" * (REPLY_TEXT_SCANNED - 6) + "needle")
    assert not matches(rule, 550, "x" * REPLY_TEXT_SCANNED + "needle")


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('text = "(a+)+$"\naction = "trip"', "key 'text': '(a+)+$' repeats a group that repeats inside"),
        ('text = "[TS01"\naction = "trip"', "key 'text': '[TS01' is not a regular expression"),
        ('code = "421"\naction = "defer"', "a defer rule needs a duration"),
        ('code = "421"\naction = "slow"\nduration = "1h"', "limit and per go together"),
        ('code = "421"\naction = "trip"\nduration = "1h"', "a trip rule takes no duration"),
        ('action = "trip"', "needs at least one of code, enhanced and text"),
        ('code = "421"\nenhanced = "5.7.1"\naction = "trip"', "of different classes"),
    ],
)
def test_a_bad_reply_rule_is_refused_naming_what_is_wrong(tmp_path: Path, table: str, problem: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(f'[[reply_rule]]\nscope = "recipient_domain"\n{table}\n')
    with pytest.raises(ConfigError) as refused:
        load_rules(path)
    assert f"rules file {path}: [[reply_rule]] #1" in str(refused.value)
    assert problem in str(refused.value)


# The providers' published replies (sources in rules/sendguard.toml), and the example rule of the
# shipped rules file each should set off.
GMAIL_NOT_AUTHENTICATED = (
    "550 5.7.1 This message does not have authentication information or fails to pass authentication "
    "checks. To best protect our users from spam, the message has been blocked."
)
PUBLISHED = {
    GMAIL_RATE_LIMITED: "gmail-rate-limited",
    GMAIL_UNAUTHENTICATED: "gmail-unauthenticated",
    GMAIL_NOT_AUTHENTICATED: "gmail-authentication-checks",
    "421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume or user "
    "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes": "yahoo-deferred",
    "421 4.7.0 [TS01] Messages from 192.0.2.10 temporarily deferred due to user complaints": "yahoo-deferred",
    "550 5.7.1 Unfortunately, messages from [192.0.2.10] weren't sent. Please contact your Internet service "
    "provider since part of their network is on our block list (S3150).": "microsoft-blocked-ip",
}


def test_the_commented_examples_of_the_default_rules_load_and_match_the_published_replies(
    tmp_path: Path,
) -> None:
    shipped = (Path(__file__).resolve().parent.parent / "rules" / "sendguard.toml").read_text()
    block = shipped[shipped.index("\n# [[reply_rule]]\n") : shipped.index("\n# Blocklists:")]
    path = tmp_path / "examples.toml"
    path.write_text("\n".join(line.removeprefix("#").removeprefix(" ") for line in block.splitlines()))
    rules = load_rules(path).file.reply_rule
    assert {rule.name for rule in rules} == set(PUBLISHED.values())
    for reply, name in PUBLISHED.items():
        code, _, text = reply.partition(" ")
        assert [rule.name for rule in rules if matches(rule, int(code), text)] == [name], reply
