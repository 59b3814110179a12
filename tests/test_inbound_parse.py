"""parse_inbound over hand-written DSNs, ARF reports and replies, and over broken versions of them.

Parsing checks no reference (it holds no secret): it lists what it found and where, and the
daemon decides (tests/test_signals_in.py, tests/test_forged_mail.py). The samples' bounce
addresses carry a made-up mac, `MAC`.
"""

from __future__ import annotations

import email
import pickle
import random
from collections.abc import Sequence
from email.message import Message
from email.policy import compat32
from pathlib import Path

import pytest

from sendguard.feedback import parse as parse_module
from sendguard.feedback.events import BounceType, EventType, Sentiment
from sendguard.feedback.parse import (
    MAX_ADDRESS_BYTES,
    MAX_ADDRESSES,
    MAX_EVENTS,
    MAX_MESSAGE_IDS,
    MAX_PARSED_BYTES,
    MAX_SIGNED_PER_PLACE,
    Inbound,
    InboundKind,
    Reference,
    UnparsableMail,
    parse_inbound,
)
from sendguard.feedback.sentiment import classify

SAMPLES = Path(__file__).parent / "samples"
BOUNCE_DOMAIN = "bounce.acme.example"
ID_1D, ID_2E, ID_3F, ID_4A = (
    "0192a3b4c5d6e7f8a9b0c1d",
    "0192a3b4c5d6e7f8a9b0c2e",
    "0192a3b4c5d6e7f8a9b0c3f",
    "0192a3b4c5d6e7f8a9b0c4a",
)

MAC = "0f1e2d3c4b5a69788796a5b4"


def signed(message_id: str, where: str) -> Reference:
    """A signed bounce address as parsing reports it: with the mac it found, unchecked."""
    return Reference(message_id, where, MAC)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def parse(
    raw: bytes, *, envelope_recipients: Sequence[str] = (), bounce_domain: str | None = BOUNCE_DOMAIN
) -> Inbound:
    return parse_inbound(raw, envelope_recipients=envelope_recipients, bounce_domain=bounce_domain)


def swap(raw: bytes, old: bytes, new: bytes) -> bytes:
    """raw with `old` replaced, failing loudly if the sample no longer contains it."""
    assert old in raw, old
    return raw.replace(old, new)


def reply(headers: str, body: str = "Sounds good, talk Thursday.\n") -> bytes:
    return f"{headers.strip()}\nMIME-Version: 1.0\n\n{body}".encode()


# --- delivery-status reports ------------------------------------------------------------------


def test_postfix_hard_bounce() -> None:
    raw = sample("dsn_postfix_hard.eml")
    assert b"Auto-Submitted: auto-replied" in raw  # a report, even though it is an automatic reply

    inbound = parse(raw)

    assert inbound.kind is InboundKind.DSN
    assert inbound.summary == "DSN from mx.customer.example: 1 hard bounce (5.1.1)"
    [event] = inbound.events
    assert event.type is EventType.BOUNCE
    assert event.bounce_type is BounceType.HARD
    assert event.hard
    assert event.status == "5.1.1"
    assert event.recipient == "dana@customer.example"
    assert event.message_id is None  # the daemon ties it, by checking the references
    # To and Delivered-To hold the address, so does the returned Return-Path: listed once, first seen.
    assert inbound.references == (signed(ID_1D, "To"), Reference(ID_1D, "returned Message-ID"))
    assert event.detail == (
        "smtp; 550 5.1.1 <dana@customer.example>: Recipient address rejected: "
        "User unknown in virtual mailbox table"
    )


def test_a_report_lists_signed_addresses_only_at_the_bounce_domain_and_the_returned_message_id() -> None:
    raw = sample("dsn_postfix_hard.eml")
    assert parse(raw, bounce_domain=None).references == (Reference(ID_1D, "returned Message-ID"),)

    foreign = swap(raw, f"<{ID_1D}.sg@acme.example>".encode(), b"<CAF=x7Ym2k@mail.example>")
    assert parse(foreign).references == (signed(ID_1D, "To"),)
    untied = parse(foreign, bounce_domain=None)
    assert untied.references == ()
    assert untied.events[0].recipient == "dana@customer.example"


def test_exchange_delayed_is_a_soft_bounce_tied_by_the_returned_message() -> None:
    inbound = parse(sample("dsn_exchange_delayed.eml"), bounce_domain=None)

    assert inbound.kind is InboundKind.DSN
    assert inbound.summary == "DSN from AM0PR06MB6321.eurprd06.prod.outlook.com: 1 soft bounce (4.4.7)"
    [event] = inbound.events
    assert event.type is EventType.BOUNCE
    assert event.bounce_type is BounceType.SOFT
    assert not event.hard
    assert event.status == "4.4.7"
    assert event.recipient == "lee@customer.example"
    assert inbound.references == (Reference(ID_2E, "returned Message-ID"),)
    assert event.detail == "smtp;400 4.4.7 Message delayed"


def test_multi_recipient_dsn_names_its_signed_address() -> None:
    inbound = parse(sample("dsn_multi_recipient.eml"))

    assert inbound.kind is InboundKind.DSN
    assert inbound.summary == "DSN from mail.partner.example: 1 hard bounce (5.2.2), 1 delivered"
    bounce, delivered = inbound.events
    assert bounce.type is EventType.BOUNCE
    assert bounce.bounce_type is BounceType.HARD
    assert bounce.status == "5.2.2"
    assert bounce.recipient == "ops@partner.example"
    assert bounce.detail == "SMTP; 552 5.2.2 <Ops@Partner.example>... Mailbox full"
    assert delivered.type is EventType.DELIVERED
    assert delivered.bounce_type is None
    assert delivered.status == "2.0.0"
    assert delivered.recipient == "priya@partner.example"
    assert inbound.references == (signed(ID_3F, "To"),)
    assert [event.message_id for event in inbound.events] == [None, None]


@pytest.mark.parametrize("bounce_domain", [None, "bounce.other.example"])
def test_bounce_addresses_count_only_at_the_bounce_domain(bounce_domain: str | None) -> None:
    inbound = parse(sample("dsn_multi_recipient.eml"), bounce_domain=bounce_domain)

    assert inbound.references == ()
    assert [event.recipient for event in inbound.events] == ["ops@partner.example", "priya@partner.example"]


def test_signed_address_from_the_envelope_recipients_in_any_case() -> None:
    verp = f"bounces+{ID_3F}.{MAC}@{BOUNCE_DOMAIN}".encode()
    raw = swap(sample("dsn_multi_recipient.eml"), verp, b"bounces@acme.example")

    assert parse(raw).references == ()
    upper = f"bounces+{ID_3F.upper()}.{MAC.upper()}@Bounce.Acme.Example"
    assert parse(raw, envelope_recipients=[upper]).references == (signed(ID_3F, "envelope recipient"),)


@pytest.mark.parametrize(
    "address",
    [
        f"bounces+{ID_3F}@{BOUNCE_DOMAIN}",  # unsigned, as earlier versions sent it
        f"bounces+{ID_3F}.{MAC[:-1]}@{BOUNCE_DOMAIN}",  # a mac one digit short
        f"bounces+{ID_3F}.{MAC}x@{BOUNCE_DOMAIN}",
        f"bounces+{ID_3F}.{MAC}@{BOUNCE_DOMAIN}.evil.example",
        f"other+{ID_3F}.{MAC}@{BOUNCE_DOMAIN}",
    ],
)
def test_only_the_signed_shape_at_the_bounce_domain_is_a_bounce_address(address: str) -> None:
    verp = f"bounces+{ID_3F}.{MAC}@{BOUNCE_DOMAIN}".encode()
    raw = swap(sample("dsn_multi_recipient.eml"), verp, b"bounces@acme.example")

    assert parse(raw, envelope_recipients=[address]).references == ()


def test_an_inbound_crosses_a_process_boundary_by_pickle() -> None:
    for name in ("dsn_multi_recipient.eml", "arf_abuse.eml", "reply_positive.eml"):
        inbound = parse(sample(name))
        assert pickle.loads(pickle.dumps(inbound)) == inbound


def test_original_recipient_is_the_address_we_sent_to() -> None:
    forwarded = b"Final-Recipient: rfc822; dana.whitfield@mailstore.customer.example"
    raw = swap(sample("dsn_postfix_hard.eml"), b"Final-Recipient: rfc822; dana@customer.example", forwarded)
    assert parse(raw).events[0].recipient == "dana@customer.example"

    without_original = swap(raw, b"Original-Recipient: rfc822;dana@customer.example\n", b"")
    assert parse(without_original).events[0].recipient == "dana.whitfield@mailstore.customer.example"


def test_malformed_status_goes_into_detail() -> None:
    raw = swap(sample("dsn_postfix_hard.eml"), b"Status: 5.1.1\n", b"Status: 5.1\n")

    [event] = parse(raw).events

    assert event.status is None
    assert event.bounce_type is BounceType.HARD
    assert event.detail is not None
    assert event.detail.startswith("Status: 5.1; smtp; 550 5.1.1")


def test_failed_with_a_4xx_status_is_soft() -> None:
    raw = swap(sample("dsn_postfix_hard.eml"), b"Status: 5.1.1\n", b"Status: 4.4.7\n")

    [event] = parse(raw).events

    assert event.bounce_type is BounceType.SOFT
    assert parse(raw).summary == "DSN from mx.customer.example: 1 soft bounce (4.4.7)"


def test_diagnostic_code_is_trimmed_to_2000_chars() -> None:
    long_code = b"smtp; 550 5.1.1 " + b"x" * 5000
    raw = swap(sample("dsn_exchange_delayed.eml"), b"smtp;400 4.4.7 Message delayed", long_code)

    [event] = parse(raw).events

    assert event.detail is not None
    assert len(event.detail) == 2000


# --- feedback reports --------------------------------------------------------------------------


def test_arf_abuse_complaint() -> None:
    inbound = parse(sample("arf_abuse.eml"))

    assert inbound.kind is InboundKind.ARF
    assert inbound.summary == "ARF from Yahoo!-Mail-Feedback/2.0: abuse complaint"
    [event] = inbound.events
    assert event.type is EventType.COMPLAINT
    assert event.recipient == "riley@mailprovider.example"
    # Original-Mail-From and the returned Return-Path hold the same address: listed once.
    assert inbound.references == (
        signed(ID_4A, "Original-Mail-From"),
        Reference(ID_4A, "returned Message-ID"),
    )
    assert event.detail == "Feedback-Type: abuse; User-Agent: Yahoo!-Mail-Feedback/2.0"


def test_arf_not_spam_is_understood_but_records_nothing() -> None:
    raw = swap(sample("arf_abuse.eml"), b"Feedback-Type: abuse", b"Feedback-Type: not-spam")

    inbound = parse(raw)

    assert inbound.kind is InboundKind.ARF
    assert inbound.events == []
    assert "not-spam" in inbound.summary


def test_arf_recipient_falls_back_to_the_returned_to() -> None:
    raw = swap(sample("arf_abuse.eml"), b"Original-Rcpt-To: <Riley@MailProvider.example>\n", b"")

    [event] = parse(raw).events

    assert event.recipient == "riley@mailprovider.example"


def test_arf_without_message_id_or_recipient_still_names_its_signed_address() -> None:
    raw = swap(sample("arf_abuse.eml"), f"Message-ID: <{ID_4A}.sg@acme.example>\n".encode(), b"")
    # Providers often redact the complainant: no Original-Rcpt-To, and the returned To blanked.
    redacted = swap(
        swap(raw, b"Original-Rcpt-To: <Riley@MailProvider.example>\n", b""),
        b"To: riley@mailprovider.example",
        b"To: redacted",
    )

    for mail in (raw, redacted):
        inbound = parse(mail)
        assert inbound.references == (signed(ID_4A, "Original-Mail-From"),)
    assert parse(redacted).events[0].recipient is None


# --- replies -----------------------------------------------------------------------------------

# Each sample's quote or signature holds words that would change the verdict if they were kept.
REPLIES = [
    (
        "reply_positive.eml",
        ID_2E,
        "dana@customer.example",
        Sentiment.POSITIVE,
        False,
        "Could you send over a few times next week for a 30-minute call?\n\nBest,\nDana",
        "If this isn't a fit, reply \"unsubscribe\" and I'll stop emailing you.",
    ),
    (
        "reply_unsubscribe.eml",
        ID_3F,
        "lee@customer.example",
        Sentiment.NEUTRAL,
        True,
        "Please remove me from your mailing list.\n\nLee",
        "Not interested in a full rollout yet?",
    ),
    (
        "reply_abusive.eml",
        ID_4A,
        "riley@mailprovider.example",
        Sentiment.ABUSIVE,
        False,
        "This is a scam and I'm reporting you to your provider.",
        'If not, just reply "remove me" and I\'ll take you off the list.',
    ),
    (
        "reply_negative.eml",
        ID_1D,
        "jordan@partner.example",
        Sentiment.NEGATIVE,
        False,
        "Not interested, please don't follow up.\n\nJordan",
        "Setup is idiot-proof and takes ten minutes.",
    ),
]


@pytest.mark.parametrize(
    ("name", "sent_id", "sender", "sentiment", "unsubscribe", "ending", "quoted"), REPLIES
)
def test_reply(
    name: str, sent_id: str, sender: str, sentiment: Sentiment, unsubscribe: bool, ending: str, quoted: str
) -> None:
    inbound = parse(sample(name))

    assert inbound.kind is InboundKind.REPLY
    assert inbound.summary == f"reply from {sender} to {sent_id}"
    [event] = inbound.events
    assert event.type is EventType.REPLY
    assert inbound.references[0] == Reference(sent_id, "In-Reply-To")
    assert event.recipient == sender
    assert event.sentiment is None
    assert event.text is not None
    assert event.text.endswith(ending)
    assert "wrote:" not in event.text
    assert "Sent:" not in event.text
    verdict = classify(event.text)
    assert (verdict.sentiment, verdict.unsubscribe) == (sentiment, unsubscribe)
    # The quoted text was there, and would have changed the verdict had it been kept.
    unwrapped = " ".join(sample(name).decode("latin-1").replace("=\n", "").replace("> ", " ").split())
    assert " ".join(quoted.split()) in unwrapped
    kept = classify(f"{event.text}\n{quoted}")
    assert (kept.sentiment, kept.unsubscribe) != (sentiment, unsubscribe)


def test_html_only_reply_is_read_from_its_html() -> None:
    alternative = email.message_from_bytes(sample("reply_unsubscribe.eml"), policy=compat32)
    parts = alternative.get_payload()
    assert isinstance(parts, list)
    html_part = parts[1]
    assert isinstance(html_part, Message)
    assert html_part.get_content_type() == "text/html"
    markup = html_part.get_payload()
    assert isinstance(markup, str)
    raw = reply(
        f"""
From: Lee Chen <lee@customer.example>
In-Reply-To: <{ID_3F}.sg@acme.example>
Content-Type: text/html; charset="iso-8859-1"
Content-Transfer-Encoding: quoted-printable
""",
        markup,
    )

    [event] = parse(raw).events

    assert event.text == "Please remove me from your mailing list.\nLee"


def test_reply_id_from_references_newest_first() -> None:
    raw = reply(
        f"""
From: priya@partner.example
In-Reply-To: <CAF=x7Ym2k@mail.example>
References: <{ID_1D}.sg@acme.example> <CAF=x7Ym2k@mail.example>
 <{ID_2E}.sg@acme.example>
"""
    )

    assert parse(raw).references == (Reference(ID_2E, "References"), Reference(ID_1D, "References"))


def _ids(count: int) -> list[str]:
    return [f"0192a3b4c5d6e7f8a9{n:05x}" for n in range(count)]


def test_a_reply_names_in_reply_to_and_the_newest_references_only() -> None:
    older = " ".join(f"<{i}.sg@acme.example>" for i in _ids(1_000))
    raw = reply(f"From: priya@partner.example\nIn-Reply-To: <{ID_1D}.sg@acme.example>\nReferences: {older}")

    inbound = parse(raw)

    kept = _ids(1_000)[-(MAX_MESSAGE_IDS - 1) :]
    assert inbound.references == (
        Reference(ID_1D, "In-Reply-To"),
        *(Reference(i, "References") for i in reversed(kept)),
    )
    assert inbound.trimmed == ("message_ids",)
    assert parse(reply(f"From: p@partner.example\nIn-Reply-To: <{ID_1D}.sg@acme.example>")).trimmed == ()


def test_junk_bounce_addresses_in_one_place_do_not_crowd_out_the_genuine_one_in_another() -> None:
    raw = sample("dsn_postfix_hard.eml")
    junk = ", ".join(f"bounces+{i}.{MAC}@{BOUNCE_DOMAIN}" for i in _ids(3_000))
    raw = swap(raw, b"\nTo: ", f"\nTo: {junk},\n ".encode())
    raw = swap(
        raw,
        b"Final-Recipient:",
        b"Final-Recipient: rfc822; dana@customer.example\nAction: failed\n\n" * 80 + b"Final-Recipient:",
    )

    inbound = parse(raw, envelope_recipients=[f"bounces+{ID_2E}.{MAC}@{BOUNCE_DOMAIN}"])

    assert inbound.references == (
        signed(ID_2E, "envelope recipient"),
        *(signed(i, "To") for i in _ids(MAX_SIGNED_PER_PLACE)),
        signed(ID_1D, "Delivered-To"),
        Reference(ID_1D, "returned Message-ID"),
    )
    assert len(inbound.events) == MAX_EVENTS
    assert inbound.trimmed == ("bounce_addresses", "recipients", "addresses")  # To: read in part


def test_a_header_listing_130000_addresses_is_read_only_in_part(monkeypatch: pytest.MonkeyPatch) -> None:
    # The probe's mail: a 1 MiB reply whose folded To: lists ~130,000 addresses, which took the one
    # inbound parser 1.3 s (so a few clients sending it over and over held up genuine reports).
    # Only the first MAX_ADDRESS_BYTES of an address header are parsed as addresses.
    flood = b"From: a@b.example\r\nIn-Reply-To: <x@y>\r\nTo: " + b"a@b,\r\n " * (MAX_PARSED_BYTES // 8 - 10)
    raw = flood + b"x@y\r\n\r\nhi\r\n"
    read: list[int] = []
    real_getaddresses = parse_module.getaddresses

    def counted(values: list[str]) -> list[tuple[str, str]]:
        read.append(sum(len(value) for value in values))
        return real_getaddresses(values)

    monkeypatch.setattr(parse_module, "getaddresses", counted)
    inbound = parse(raw)

    assert max(read) <= MAX_ADDRESS_BYTES, f"{max(read)} bytes of one header parsed as addresses"
    assert sum(read) <= 8 * MAX_ADDRESS_BYTES  # one budget for each header read, not for the mail
    assert (inbound.kind, inbound.summary) == (InboundKind.REPLY, "reply from a@b.example")
    assert inbound.trimmed == ("addresses",)


def test_only_the_first_addresses_of_a_header_are_read_and_a_genuine_one_elsewhere_still_is() -> None:
    junk = ",\n ".join(f"someone{n}@partner.example" for n in range(MAX_ADDRESSES))
    genuine = f"bounces+{ID_1D}.{MAC}@{BOUNCE_DOMAIN}"
    raw = reply(f"From: dana@customer.example\nTo: {junk},\n {genuine}\nDelivered-To: {genuine}")

    inbound = parse(raw)

    assert inbound.references == (signed(ID_1D, "Delivered-To"),)  # the 11th address in To: unread
    assert inbound.trimmed == ("addresses",)
    # As many as a genuine header holds are read whole, and nothing is counted as cut.
    headers = f"From: dana@customer.example\nTo: {genuine}, sam@acme.example\nDelivered-To: {genuine}"
    fits = parse(reply(headers))
    assert fits.references == (signed(ID_1D, "To"),)  # kept once, where first seen
    assert fits.trimmed == ()


def test_an_address_cut_short_by_the_byte_budget_is_not_read_as_a_shorter_one() -> None:
    # `Name <bob@example.com.evil>` cut after `bob@example.com` must not name bob@example.com.
    padding = "x" * (MAX_ADDRESS_BYTES - len("Bob <bob@example.com"))
    raw = reply(f"From: {padding} Bob <bob@example.com.evil>\nIn-Reply-To: <{ID_1D}.sg@acme.example>")
    with pytest.raises(UnparsableMail, match="no From address"):
        parse(raw)


def test_a_bare_id_is_not_a_message_id() -> None:
    assert parse(reply(f"From: dana@customer.example\nIn-Reply-To: <{ID_1D}>")).references == ()


def test_reply_without_any_reference_names_only_its_sender() -> None:
    inbound = parse(reply("From: Priya N <Priya@Partner.example>"))

    assert inbound.references == ()
    [event] = inbound.events
    assert event.recipient == "priya@partner.example"
    assert event.text == "Sounds good, talk Thursday."


def test_reply_that_is_all_quote_is_an_empty_reply() -> None:
    body = "On Tue, 3 Nov 2026 at 10:02, Sam Rivera <sam@acme.example> wrote:\n> Worth a call?\n"
    [event] = parse(
        reply(f"From: dana@customer.example\nIn-Reply-To: <{ID_1D}.sg@acme.example>", body)
    ).events

    assert event.text == ""


def test_reply_text_is_trimmed_to_100000_chars() -> None:
    [event] = parse(reply("From: dana@customer.example", "yes " * 40_000)).events

    assert event.text is not None
    assert len(event.text) == 100_000


def test_attachments_past_the_parse_budget_do_not_matter() -> None:
    attachment = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\n" * 60_000
    body = f"""--b
Content-Type: text/plain; charset=utf-8

Happy to talk, send me some times.
--b
Content-Type: application/pdf; name="deck.pdf"
Content-Disposition: attachment; filename="deck.pdf"
Content-Transfer-Encoding: base64

{attachment}--b--
"""
    raw = reply('From: dana@customer.example\nContent-Type: multipart/mixed; boundary="b"', body)
    assert len(raw) > 3 * MAX_PARSED_BYTES

    [event] = parse(raw).events

    assert event.text == "Happy to talk, send me some times."


def test_auto_reply_sample_is_ignored() -> None:
    inbound = parse(sample("auto_reply.eml"))

    assert inbound.kind is InboundKind.REPLY
    assert inbound.events == []
    assert inbound.summary == "auto-reply ignored"


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-replied",
        "Auto-Submitted: auto-generated",
        "X-Autoreply: yes",
        "X-Autorespond: Out of office",
        "Precedence: auto_reply",
        "Subject: Out of Office: Quick question",
        "Subject: Automatic reply: Quick question",
        "Subject: =?utf-8?q?Automatic_reply=3A_Quick_question?=",
        "Subject: Autoreply: Quick question",
    ],
)
def test_auto_reply_markers(header: str) -> None:
    person = parse(reply("From: dana@customer.example\nSubject: Re: Quick question"))
    auto = parse(reply(f"From: dana@customer.example\n{header}"))

    assert len(person.events) == 1
    assert auto.events == []
    assert auto.summary == "auto-reply ignored"


def test_auto_submitted_no_is_a_person() -> None:
    assert len(parse(reply("From: dana@customer.example\nAuto-Submitted: no")).events) == 1


# --- what cannot be read ------------------------------------------------------------------------

DSN_HEAD = """From: MAILER-DAEMON@mx.customer.example
To: bounces+{id}@bounce.acme.example
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain

Delivery failed.
--b
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.customer.example
"""


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        pytest.param(sample("not_mail.txt"), "not an email message: no headers", id="not-mail"),
        pytest.param(b"", "not an email message: no headers", id="empty"),
        pytest.param(
            DSN_HEAD.format(id=ID_1D).encode() + b"--b--\n",
            "a delivery-status report with no per-recipient fields",
            id="dsn-no-recipients",
        ),
        pytest.param(
            DSN_HEAD.format(id=ID_1D).encode()
            + b"\nFinal-Recipient: rfc822; dana@customer.example\nAction: bounced\nStatus: 5.1.1\n--b--\n",
            "a delivery-status report whose recipients have no known Action",
            id="dsn-unknown-action",
        ),
        pytest.param(
            DSN_HEAD.format(id="not-an-id").encode()
            + b"\nFinal-Recipient: rfc822; dana\nAction: failed\n--b--\n",
            "cannot tie it to a message: no Message-ID, bounce address or recipient",
            id="dsn-untied",
        ),
        pytest.param(
            b"From: MAILER-DAEMON@mx.example\nContent-Type: multipart/report; report-type=delivery-status; "
            b'boundary="b"\n\n--b\nContent-Type: text/plain\n\nFailed.\n--b--\n',
            "a delivery-status report with no message/delivery-status part",
            id="dsn-no-status-part",
        ),
        pytest.param(
            swap(sample("arf_abuse.eml"), b"Feedback-Type: abuse\n", b""),
            "a feedback report with no Feedback-Type",
            id="arf-no-type",
        ),
        pytest.param(
            b"From: lee@customer.example\n"
            b'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\n'
            b"\n--b\nContent-Type: text/plain\n\nRead.\n--b--\n",
            "a report of type 'disposition-notification'",
            id="read-receipt",
        ),
        pytest.param(
            b"From: MAILER-DAEMON@mail.partner.example\nSubject: failure notice\n\n"
            b"Sorry, I couldn't deliver your message to <ops@partner.example>.\n",
            "a bounce from mailer-daemon@mail.partner.example that is not a delivery-status report",
            id="plain-text-bounce",
        ),
        pytest.param(
            b"From: dana@customer.example\nContent-Type: image/png\n"
            b"Content-Transfer-Encoding: base64\n\niVBORw0K\n",
            "a reply with no text",
            id="reply-no-text",
        ),
        pytest.param(
            b"Subject: hello\n\nIs this thing on?\n",
            "a reply with no From address",
            id="reply-untied",
        ),
    ],
)
def test_unparsable_mail_says_what_is_wrong(raw: bytes, says: str) -> None:
    with pytest.raises(UnparsableMail) as caught:
        parse(raw)

    assert says in str(caught.value)


def test_unparsable_mail_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no headers"):
        parse_inbound(b"\x00\x01\x02")


# --- robustness ---------------------------------------------------------------------------------

HOSTILE = [
    b"Content-Type: multipart/mixed; boundary=a\n\n"
    + b"--a\nContent-Type: multipart/mixed; boundary=a\n\n" * 500,
    b"From: dana@customer.example\nContent-Type: text/plain; charset=zlib\n\nhello\n",
    b'From: dana@customer.example\nContent-Type: text/plain; charset="utf\x00-8"\n\nhello \xff\n',
    b"Content-Type: multipart/report; boundary=b\n\n"
    b'--b\nContent-Type: text/plain; charset="a\x00"\n\n\xff\n--b--\n',
    b"From: dana@customer.example\nContent-Type: text/plain; charset*=utf-8''%ff%fe\n\nhello\n",
    b"From: dana@customer.example\nContent-Transfer-Encoding: base64\n\n!!!not base64===\n",
    b"From: \xff\xfe <\xff@\xfe>\nSubject: =?x-unknown?q?caf=E9?=\n\nhello\n",
    b"From: dana@customer.example\nContent-Type: text/html\n\n" + b"<script>" * 20_000,
    b"From: dana@customer.example\nContent-Type: text/html\n\n" + b"<!--" * 50_000,
    b"From: dana@customer.example\nIn-Reply-To: " + b"<" * 10_000 + b"\n\nhi\n",
    b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\n\n--b\n"
    b"Content-Type: message/feedback-report\nContent-Transfer-Encoding: base64\n\nRmVlZGJhY2s=\n--b--\n",
]


def mutations() -> list[bytes]:
    """About 200 truncated and byte-flipped versions of the samples, the same on every run."""
    rng = random.Random(20261103)
    variants: list[bytes] = []
    for path in sorted(SAMPLES.iterdir()):
        raw = path.read_bytes()
        variants += [raw[:offset] for offset in range(0, len(raw), 37)]
        for _ in range(10):
            flipped = bytearray(raw)
            for _ in range(rng.randint(1, 12)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            variants.append(bytes(flipped))
    return variants


def test_broken_mail_gives_an_inbound_or_unparsable_mail() -> None:
    variants = mutations() + HOSTILE
    assert len(variants) >= 200
    outcomes: dict[str, int] = {}
    for raw in variants:
        try:
            inbound = parse(raw)
        except UnparsableMail as exc:
            # The catch-all is a safety net; the parser itself should understand every failure.
            assert not str(exc).startswith("malformed mail"), (str(exc), raw[:200])
            outcomes["unparsable"] = outcomes.get("unparsable", 0) + 1
        else:
            assert isinstance(inbound, Inbound)
            assert inbound.summary
            outcomes[inbound.kind] = outcomes.get(inbound.kind, 0) + 1
    # The mutations exercise every path, not just the error paths.
    assert set(outcomes) == {"unparsable", *InboundKind}
