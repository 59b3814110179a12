"""classify() over realistic sales and service replies, and reply_text()'s cutting of quotes."""

from __future__ import annotations

import pytest

from sendguard.feedback.events import Sentiment
from sendguard.feedback.sentiment import Classification, classify, reply_text

POSITIVE, NEUTRAL, NEGATIVE, ABUSIVE = (
    Sentiment.POSITIVE,
    Sentiment.NEUTRAL,
    Sentiment.NEGATIVE,
    Sentiment.ABUSIVE,
)

REPLIES = [
    # Interest, including plain yeses VADER scores as neutral.
    ("Sounds great, can we talk Thursday at 2pm?", POSITIVE, False),
    ("Yes, I'd love to learn more. Send me some times.", POSITIVE, False),
    ("Thanks, this looks interesting. Let's set up a call next week.", POSITIVE, False),
    ("Absolutely, sign us up.", POSITIVE, False),
    ("Can you send pricing?", POSITIVE, False),
    ("I'm interested. What does onboarding look like?", POSITIVE, False),
    ("Sure, happy to chat.", POSITIVE, False),
    # Neither yes nor no.
    ("I've forwarded this to our CTO.", NEUTRAL, False),
    ("What is this regarding?", NEUTRAL, False),
    ("I'm not the right person, try Bob in procurement.", NEUTRAL, False),
    ("Not right now, maybe next quarter.", NEUTRAL, False),
    ("Interesting, but the timing isn't right. Circle back in Q3.", NEUTRAL, False),
    # Refusals, however polite; VADER alone would call several of these positive.
    ("Not interested.", NEGATIVE, False),
    ("No.", NEGATIVE, False),
    ("No thanks, we're all set. Thanks for reaching out!", NEGATIVE, False),
    ("We're happy with our current vendor.", NEGATIVE, False),
    ("Thanks for the note, but we already use Salesforce and are not looking to switch.", NEGATIVE, False),
    ("We went with another provider.", NEGATIVE, False),
    ("We don't have budget for this.", NEGATIVE, False),
    ("Not a good fit for us.", NEGATIVE, False),
    ("Appreciate it, but we\u2019re not interested.", NEGATIVE, False),
    # Unsubscribe requests: never positive, never abusive on their own.
    ("Please remove me from your mailing list.", NEUTRAL, True),
    ("Please take me off your list. Thanks!", NEUTRAL, True),
    ("Unsubscribe", NEUTRAL, True),
    ("UNSUBSCRIBE ME", NEUTRAL, True),
    ("Please do not contact me again.", NEUTRAL, True),
    ("Don\u2019t email me.", NEUTRAL, True),
    ("I'd like to opt out, thank you.", NEUTRAL, True),
    ("No more emails please.", NEUTRAL, True),
    ("Stop emailing me.", NEGATIVE, True),
    ("Please stop contacting me, I am not interested.", NEGATIVE, True),
    ("Leave me alone.", NEGATIVE, True),
    # Abuse: insults, profanity, threats, spam and harassment accusations.
    ("You're an idiot.", ABUSIVE, False),
    ("This is a scam and I've reported you.", ABUSIVE, False),
    ("Who the f*ck gave you my address?", ABUSIVE, False),
    ("Piss off.", ABUSIVE, False),
    ("Stop spamming me.", ABUSIVE, True),
    ("Please stop emailing me, this is harassment.", ABUSIVE, True),
    ("Go to hell and take me off your list.", ABUSIVE, True),
    ("I marked this as spam. If it happens again we will take legal action.", ABUSIVE, False),
]


@pytest.mark.parametrize(("text", "sentiment", "unsubscribe"), REPLIES)
def test_classify(text: str, sentiment: Sentiment, unsubscribe: bool) -> None:
    verdict = classify(text)

    assert (verdict.sentiment, verdict.unsubscribe) == (sentiment, unsubscribe)
    assert -1.0 <= verdict.score <= 1.0


def test_table_covers_every_sentiment() -> None:
    assert len(REPLIES) >= 25
    assert {sentiment for _, sentiment, _ in REPLIES} == set(Sentiment)


def test_score_is_vaders_compound_even_when_a_rule_decides() -> None:
    polite_no = classify("No thanks, we're all set. Thanks for reaching out!")

    assert polite_no.sentiment is NEGATIVE
    assert polite_no.score > 0.05
    assert isinstance(polite_no.score, float)


def test_words_inside_other_words_do_not_count() -> None:
    assert classify("We had scampi at the offsite and the team loved it!").sentiment is POSITIVE
    assert not classify("We can remove memory limits, let's talk.").unsubscribe


def test_empty_reply_is_neutral() -> None:
    assert classify("") == Classification(sentiment=NEUTRAL, unsubscribe=False, score=0.0)


def test_classify_ignores_the_quote() -> None:
    text = (
        "Sounds great, send me some times.\n\n"
        "On Tue, 3 Nov 2026 at 10:02, Sam Rivera <sam@acme.example> wrote:\n"
        "Not interested? Reply unsubscribe and I'll stop emailing you, no hard feelings.\n"
    )

    assert classify(text) == classify("Sounds great, send me some times.")
    assert classify(text).sentiment is POSITIVE


def test_abuse_past_the_scored_length_still_counts() -> None:
    verdict = classify("Thanks for the offer. " * 5_000 + "You idiots.")

    assert verdict.sentiment is ABUSIVE


# --- reply_text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "own"),
    [
        pytest.param("Yes please.\n\n> Worth a call?\n> Sam\n", "Yes please.", id="quoted-lines"),
        pytest.param(
            "Yes please.\n\nOn Tue, 3 Nov 2026 at 10:02, Alice <a@x.example> wrote:\nWorth a call?\n",
            "Yes please.",
            id="gmail",
        ),
        pytest.param(
            "Yes please.\n\nOn Tue, 3 Nov 2026 at 10:02, Alice Example <\na@x.example> wrote:\nCall?\n",
            "Yes please.",
            id="gmail-wrapped",
        ),
        pytest.param(
            "Yes please.\r\n\r\n-----Original Message-----\r\nFrom: Sam\r\nWorth a call?\r\n",
            "Yes please.",
            id="original-message-crlf",
        ),
        pytest.param(
            "Yes please.\n\n________________________________\nFrom: Sam Rivera <sam@acme.example>\n"
            "Sent: Tuesday, November 3, 2026 10:08 AM\nTo: Lee\nWorth a call?\n",
            "Yes please.",
            id="outlook",
        ),
        pytest.param(
            "Yes please.\n\nAm Di., 3. Nov. 2026 um 10:02 Uhr schrieb Sam <sam@acme.example>:\nHallo\n",
            "Yes please.",
            id="german",
        ),
        pytest.param(
            "Yes please.\n-- \nDana | VP Ops | Not interested in spam\n", "Yes please.", id="signature"
        ),
        pytest.param(
            "From: the top of my head, no.\nSee you Tuesday.",
            "From: the top of my head, no.\nSee you Tuesday.",
            id="from-without-sent",
        ),
        pytest.param(
            "Yes.\n\nOn balance I think we should talk.\n",
            "Yes.\n\nOn balance I think we should talk.",
            id="on-without-wrote",
        ),
        pytest.param("> all of it quoted\n", "", id="all-quote"),
    ],
)
def test_reply_text(text: str, own: str) -> None:
    assert reply_text(text) == own
