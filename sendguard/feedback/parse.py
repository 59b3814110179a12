"""Raw inbound mail to events: delivery reports (RFC 3464), complaints (RFC 5965) and replies.

Inbound mail is written by strangers, so `parse_inbound` raises `UnparsableMail` and nothing else,
whatever the bytes. Mail is parsed with the compat32 policy: unlike the default policy it never
raises when a malformed header is read, it hands back the raw text. Only the first MiB is parsed:
reports and a reply's text come first, attachments after them. Mail of more than `MAX_PARTS`
MIME parts is not read at all: no report or reply has that many.

Anyone can write such mail, so parsing decides nothing about which message it is about: it
reports every reference it found and where (`Inbound.references`), and the address each event
names (a report's recipient, a reply's From), and the daemon checks them (feedback/apply.py):
- a signed bounce address `bounces+{id}.{mac}@{bounce_domain}`: one the mail was delivered to,
  or the envelope sender of a report's original (its Return-Path, or an ARF report's
  Original-Mail-From). Only its shape is read here; its mac takes the secret, which parsing never
  holds, so it can run in a process of its own;
- the returned original's Message-ID (reports) or In-Reply-To / References (replies).
An `Inbound` is plain frozen data, so it crosses a process boundary by pickle.

Each of those the daemon checks costs it an HMAC or a Redis read on its own loop, and a stranger
decides how many there are: one DSN with 12,000 badly signed addresses in To: and 90 per-recipient
groups once stalled the daemon for 3 s, a reply with 30,000 References cost it 3.5 s of CPU. So
what one mail may make the daemon look at is capped here, in the inbound mail process
(`_within_budgets`): `MAX_MESSAGE_IDS` Message-IDs (In-Reply-To first, then the newest of
References), `MAX_SIGNED_PER_PLACE` signed bounce addresses from each place they are read from
(the envelope, each header), so junk in one cannot crowd out the genuine one in another, and
`MAX_EVENTS` per-recipient groups of a DSN. No genuine report or reply comes near them. What is cut
is named in `Inbound.trimmed`, for the daemon to count and log; the mail is not refused for it.

Reading addresses costs the parser too, and the one parser process serves every sender: a 1 MiB
reply whose folded To: listed 130,000 addresses took 1.3 s (under the parse timeout) and a few
clients sending it over and over held up genuine reports for a minute. So `_addresses` reads at
most the first `MAX_ADDRESS_BYTES` of each address header (all its fields together) and keeps at
most its first `MAX_ADDRESSES` addresses (see there for why those suffice); what is cut is
`addresses` in `Inbound.trimmed`.
"""

from __future__ import annotations

import email
import html
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from email.errors import HeaderParseError
from email.header import Header, decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr
from enum import StrEnum

from sendguard.feedback.events import (
    MAX_DETAIL,
    MAX_TEXT,
    BounceType,
    EventIn,
    EventType,
    sendguard_id,
    signed_bounce,
)
from sendguard.feedback.return_date import return_date
from sendguard.feedback.sentiment import reply_text
from sendguard.model import folded_address

MAX_PARSED_BYTES = 1 << 20
MAX_PARTS = 100
MAX_MESSAGE_IDS = 20
MAX_SIGNED_PER_PLACE = 5
MAX_EVENTS = 50
# Per address header (To, Delivered-To, ..., From, Return-Path; every field of that name together).
# What real mail puts there: one address in From, Return-Path, Original-Mail-From and each
# Delivered-To / X-Original-To / Envelope-To field (a relay adds one a hop, a handful at most);
# in a report's To: its one recipient, the envelope sender; in a reply's To: whom it answers (a
# reply to all of one of ours: the agent and a few colleagues). 10 addresses is twice the signed
# addresses kept from one place (MAX_SIGNED_PER_PLACE); 4 KiB holds 10 addresses of the longest
# length read (320) with display names, and parses in well under a millisecond.
MAX_ADDRESSES = 10
MAX_ADDRESS_BYTES = 4096
# `Inbound.trimmed` names, and the label values of sendguard_inbound_trimmed_total.
TRIMMED = ("message_ids", "bounce_addresses", "recipients", "addresses")
_MAX_DEPTH = 16
# What `_addresses` cut while one mail is parsed (it is read deep inside the readers).
_CUT: ContextVar[dict[str, None] | None] = ContextVar("_CUT", default=None)

_VERP_HEADERS = ("To", "Delivered-To", "X-Original-To", "Envelope-To")
_RETURNED = ("message/rfc822", "message/global", "message/global-headers", "text/rfc822-headers")
_BOUNCED = frozenset({"failed", "delayed"})
_DELIVERED = frozenset({"delivered", "relayed", "expanded"})
# Feedback that is not a recipient's complaint: mail rescued from the spam folder, or a DMARC
# failure report (RFC 6591) meant for the domain's owner.
_NO_COMPLAINT = frozenset({"not-spam", "auth-failure"})
_DAEMONS = frozenset({"mailer-daemon", "postmaster"})

_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_FIELD_TYPE = re.compile(r"^\s*[\w.+-]+\s*;")
_ANGLED = re.compile(r"<([^<>\s]{1,398})>")
_AUTO_SUBJECT = re.compile(r"\s*(?:out of (?:the )?office|automatic reply|auto[- ]?reply)\b", re.IGNORECASE)
_TAG = re.compile(r"<(/?)([a-zA-Z][\w:-]*)?[^<>]*>")
_BLOCK_TAGS = frozenset(
    {"br", "p", "div", "tr", "li", "blockquote", "table", "hr", "h1", "h2", "h3", "h4", "h5", "h6"}
)
_HIDDEN_TAGS = frozenset({"head", "script", "style", "title"})


class InboundKind(StrEnum):
    DSN = "dsn"
    ARF = "arf"
    REPLY = "reply"


@dataclass(frozen=True)
class Reference:
    """Something in the mail that names a sendguard message, unchecked, and where it was found.

    `mac` is set for a signed bounce address (`where` is then "envelope recipient" or the header
    it was in) and empty for a Message-ID ("returned Message-ID", "In-Reply-To", "References").
    """

    message_id: str
    where: str
    mac: str = ""


@dataclass(frozen=True)
class Away:
    """An out-of-office reply's sender and the return date it names (return_date.py)."""

    sender: str
    until: date


@dataclass(frozen=True)
class Inbound:
    """What one inbound mail said, and what it referred to.

    `events` is empty for mail that was understood but carries no signal (auto-replies, not-spam
    feedback): callers record nothing and do not count it as unparsable. Its events name no
    message (`message_id` is None): `references` hold every candidate, in the order found, and
    each event's `recipient` is the address it names (a reply's is its From).
    """

    kind: InboundKind
    events: list[EventIn]
    summary: str
    references: tuple[Reference, ...] = ()
    away: Away | None = None  # an out-of-office reply that names when its sender is back
    trimmed: tuple[str, ...] = ()  # what the budgets cut (TRIMMED names), for the daemon to count


class UnparsableMail(ValueError):
    """The mail cannot be turned into events; the message says what is wrong with it."""


def parse_inbound(
    raw: bytes, *, envelope_recipients: Sequence[str] = (), bounce_domain: str | None = None
) -> Inbound:
    """Read a DSN, an ARF report or a reply; `envelope_recipients` are its RCPT TO addresses."""
    cut: dict[str, None] = {}
    token = _CUT.set(cut)
    try:
        msg = email.message_from_bytes(raw[:MAX_PARSED_BYTES], policy=compat32)
        if not msg.keys():
            raise UnparsableMail("not an email message: no headers")
        if next(itertools.islice(msg.walk(), MAX_PARTS, None), None) is not None:
            raise UnparsableMail(f"more than {MAX_PARTS} MIME parts")
        delivered_to = [
            *((address, "envelope recipient") for address in envelope_recipients),
            *((address, name) for name in _VERP_HEADERS for address in _addresses(msg, name)),
        ]
        inbound = _within_budgets(_read(msg, delivered_to, bounce_domain))
    except UnparsableMail:
        raise
    except Exception as exc:  # the email package has many ways to fail on hostile input
        raise UnparsableMail(f"malformed mail ({type(exc).__name__}: {exc})") from exc
    finally:
        _CUT.reset(token)
    return replace(inbound, trimmed=(*inbound.trimmed, *cut)) if cut else inbound


def _read(msg: Message, delivered_to: list[tuple[str, str]], bounce_domain: str | None) -> Inbound:
    report = _report_type(msg)
    if report == "delivery-status":
        return _dsn(msg, _report_references(_returned(msg), delivered_to, bounce_domain))
    if report == "feedback-report":
        return _arf(msg, delivered_to, bounce_domain)
    if report is not None:
        raise UnparsableMail(
            f"a report of type {report or 'unknown'!r}: only delivery-status and feedback-report are read"
        )
    return _reply(msg, (*_reply_references(msg), *_signed(delivered_to, bounce_domain)))


def _within_budgets(inbound: Inbound) -> Inbound:
    """`inbound` with no more references and events than the daemon is to check (module docstring).

    References keep their order, so the first Message-IDs kept are In-Reply-To's and the newest of
    References (`_reply_references`), and a report's first signed addresses from each place. An
    address is counted in each place before it is kept once: junk that pushes the genuine address
    out of To: cannot hide it in Delivered-To, where it is also.
    """
    kept: list[Reference] = []
    message_ids = 0
    signed: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    trimmed: dict[str, None] = {}
    for ref in inbound.references:
        if ref.mac:
            if (ref.message_id, ref.mac) in seen:
                continue  # listed once, where first seen among those kept
            signed[ref.where] = signed.get(ref.where, 0) + 1
            if signed[ref.where] > MAX_SIGNED_PER_PLACE:
                trimmed["bounce_addresses"] = None
                continue
            seen.add((ref.message_id, ref.mac))
        else:
            message_ids += 1
            if message_ids > MAX_MESSAGE_IDS:
                trimmed["message_ids"] = None
                continue
        kept.append(ref)
    if len(inbound.events) > MAX_EVENTS:
        trimmed["recipients"] = None
    return replace(
        inbound, events=inbound.events[:MAX_EVENTS], references=tuple(kept), trimmed=tuple(trimmed)
    )


def _dsn(msg: Message, references: tuple[Reference, ...]) -> Inbound:
    part = _first_part(msg, "message/delivery-status")
    if part is None:
        raise UnparsableMail("a delivery-status report with no message/delivery-status part")
    # The email package splits message/delivery-status into one Message per field group.
    groups = _subparts(part)
    recipients = [group for group in groups if "Action" in group or "Final-Recipient" in group]
    if not recipients:
        raise UnparsableMail("a delivery-status report with no per-recipient fields")
    if all(_action(group) is None for group in recipients):
        raise UnparsableMail("a delivery-status report whose recipients have no known Action")
    events = [event for group in recipients if (event := _dsn_event(group, bool(references))) is not None]
    if not events:
        raise _untied()
    mta = next((_field(group, "Reporting-MTA") for group in groups if "Reporting-MTA" in group), "")
    summary = f"DSN from {_untyped(mta) or _sender(msg)}: {_tally(events)}"
    return Inbound(InboundKind.DSN, events, summary, references)


def _dsn_event(group: Message, referenced: bool) -> EventIn | None:
    """The event for one per-recipient group; None when its Action is unknown or nothing could tie it.

    Original-Recipient comes first: it is the address sendguard sent to, before any forwarding.
    """
    action = _action(group)
    recipient = _address(_untyped(_field(group, "Original-Recipient"))) or _address(
        _untyped(_field(group, "Final-Recipient"))
    )
    if action is None or not (referenced or recipient):
        return None
    raw_status = next(iter(_field(group, "Status").split()), "")
    status = raw_status if _STATUS.fullmatch(raw_status) else None
    malformed = f"Status: {raw_status}" if raw_status and status is None else ""
    detail = "; ".join(filter(None, (malformed, _field(group, "Diagnostic-Code"))))[:MAX_DETAIL] or None
    if action in _DELIVERED:
        return EventIn(type=EventType.DELIVERED, recipient=recipient, status=status, detail=detail)
    hard = action == "failed" and (raw_status or "5").startswith("5")
    return EventIn(
        type=EventType.BOUNCE,
        bounce_type=BounceType.HARD if hard else BounceType.SOFT,
        recipient=recipient,
        status=status,
        detail=detail,
    )


def _action(group: Message) -> str | None:
    action = next(iter(_field(group, "Action").lower().split()), "")
    return action if action in _BOUNCED or action in _DELIVERED else None


def _tally(events: list[EventIn]) -> str:
    """'2 hard bounces (5.1.1, 5.2.2), 1 delivered', for a summary."""
    hard = [event for event in events if event.hard]
    soft = [event for event in events if event.bounce_type is BounceType.SOFT]
    delivered = sum(event.type is EventType.DELIVERED for event in events)
    counts = (_bounces(hard, "hard"), _bounces(soft, "soft"), f"{delivered} delivered" if delivered else "")
    return ", ".join(filter(None, counts))


def _bounces(events: list[EventIn], kind: str) -> str:
    if not events:
        return ""
    statuses = ", ".join(dict.fromkeys(event.status for event in events if event.status))
    plural = "s" if len(events) > 1 else ""
    return f"{len(events)} {kind} bounce{plural}" + (f" ({statuses})" if statuses else "")


def _arf(msg: Message, delivered_to: list[tuple[str, str]], bounce_domain: str | None) -> Inbound:
    part = _first_part(msg, "message/feedback-report")
    fields = _subparts(part) if part is not None else []
    if not fields:
        raise UnparsableMail("a feedback report with no message/feedback-report part")
    report = fields[0]
    feedback_type = next(iter(_field(report, "Feedback-Type").lower().split()), "")
    if not feedback_type:
        raise UnparsableMail("a feedback report with no Feedback-Type")
    agent = _field(report, "User-Agent")
    reporter = agent or _sender(msg)
    if feedback_type in _NO_COMPLAINT:
        return Inbound(InboundKind.ARF, [], f"ARF from {reporter}: {feedback_type} report, not a complaint")
    senders = [*delivered_to, *((a, "Original-Mail-From") for a in _addresses(report, "Original-Mail-From"))]
    returned = _returned(msg)
    references = _report_references(returned, senders, bounce_domain)
    recipient = _address(_field(report, "Original-Rcpt-To"))
    if recipient is None and returned is not None:
        recipient = next(iter(_addresses(returned, "To")), None)
    if not (references or recipient):
        raise _untied()
    detail = f"Feedback-Type: {feedback_type}" + (f"; User-Agent: {agent}" if agent else "")
    event = EventIn(type=EventType.COMPLAINT, recipient=recipient, detail=detail[:MAX_DETAIL])
    return Inbound(InboundKind.ARF, [event], f"ARF from {reporter}: {feedback_type} complaint", references)


def _reply(msg: Message, references: tuple[Reference, ...]) -> Inbound:
    sender = next(iter(_addresses(msg, "From")), None)
    if _is_auto_reply(msg):
        said = f"{_decoded_header(msg, 'Subject')}\n{_body_text(msg) or ''}"
        until = return_date(said, datetime.now(UTC).date())
        if sender is None or until is None:
            return Inbound(InboundKind.REPLY, [], "auto-reply ignored")
        summary = f"auto-reply from {sender}: back on {until.isoformat()}"
        return Inbound(InboundKind.REPLY, [], summary, references, Away(sender, until))
    if sender is not None and sender.partition("@")[0] in _DAEMONS:
        raise UnparsableMail(f"a bounce from {sender} that is not a delivery-status report")
    text = _body_text(msg)
    if text is None:
        raise UnparsableMail("a reply with no text: no text/plain or text/html part")
    if sender is None:
        raise UnparsableMail("a reply with no From address")
    event = EventIn(type=EventType.REPLY, recipient=sender, text=reply_text(text)[:MAX_TEXT])
    about = next((f" to {ref.message_id}" for ref in references if not ref.mac), "")
    return Inbound(InboundKind.REPLY, [event], f"reply from {sender}{about}", references)


def _is_auto_reply(msg: Message) -> bool:
    """RFC 3834's Auto-Submitted, the common vendor headers, or an out-of-office subject."""
    auto_submitted = _field(msg, "Auto-Submitted").lower()
    return (
        auto_submitted not in ("", "no")
        or "X-Autoreply" in msg
        or "X-Autorespond" in msg
        or _field(msg, "Precedence").lower() == "auto_reply"
        or _AUTO_SUBJECT.match(_decoded_header(msg, "Subject")) is not None
    )


def _body_text(msg: Message) -> str | None:
    """The first inline text/plain part, else the first text/html part as text; None if neither."""
    html_part = None
    for part in _parts(msg):
        disposition = _field(part, "Content-Disposition").lower()
        if part.get_content_maintype() != "text" or disposition.startswith("attachment"):
            continue
        if part.get_content_subtype() == "plain":
            return _decoded(part)
        if part.get_content_subtype() == "html" and html_part is None:
            html_part = part
    return _html_text(_decoded(html_part)) if html_part is not None else None


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        return payload.decode(part.get_content_charset() or "utf-8", errors="replace")
    except (LookupError, ValueError):  # an unknown charset, or a name codecs cannot even look up
        return payload.decode("utf-8", errors="replace")


def _html_text(markup: str) -> str:
    """Crude but linear: tags dropped, block tags made line breaks, head/script/style hidden."""
    chunks: list[str] = []
    hidden: str | None = None
    end = 0
    for tag in _TAG.finditer(markup):
        closing, name = tag.group(1), (tag.group(2) or "").lower()
        if hidden is None:
            chunks.append(_inline(markup[end : tag.start()]))
        end = tag.end()
        if hidden is not None:
            hidden = None if closing and name == hidden else hidden
        elif name in _HIDDEN_TAGS and not closing:
            hidden = name
        elif name in _BLOCK_TAGS:
            chunks.append("\n")
    if hidden is None:
        chunks.append(_inline(markup[end:]))
    return re.sub(r"[ \t]*\n\s*", "\n", "".join(chunks))


def _inline(text: str) -> str:
    """HTML text between tags: each run of whitespace is one space, entities are decoded."""
    return html.unescape(re.sub(r"\s+", " ", text))


def _report_type(msg: Message) -> str | None:
    """'delivery-status' or 'feedback-report' by the parts present, else multipart/report's
    report-type ('' when it has none), else None: the mail is not a report."""
    types = {part.get_content_type() for part in _parts(msg)}
    if "message/delivery-status" in types:
        return "delivery-status"
    if "message/feedback-report" in types:
        return "feedback-report"
    report = _first_part(msg, "multipart/report")
    if report is None:
        return None
    declared = report.get_param("report-type")
    return declared.lower() if isinstance(declared, str) else ""


def _returned(msg: Message) -> Message | None:
    """The headers of the original message a report returns, if it returns them."""
    for part in _parts(msg):
        if part.get_content_type() not in _RETURNED:
            continue
        if part.is_multipart():  # message/*: parsed already
            return next(iter(_subparts(part)), None)
        data = part.get_payload(decode=True)
        return BytesHeaderParser(policy=compat32).parsebytes(data) if isinstance(data, bytes) else None
    return None


def _report_references(
    returned: Message | None, addresses: list[tuple[str, str]], bounce_domain: str | None
) -> tuple[Reference, ...]:
    """Signed bounce addresses among `addresses` and the returned original's Return-Path, then
    the returned original's Message-ID."""
    if returned is None:
        return _signed(addresses, bounce_domain)
    return_path = [(a, "returned Return-Path") for a in _addresses(returned, "Return-Path")]
    return (
        *_signed([*addresses, *return_path], bounce_domain),
        *_message_ids([(_field(returned, "Message-ID"), "returned Message-ID")]),
    )


def _reply_references(msg: Message) -> tuple[Reference, ...]:
    """In-Reply-To first, then References newest first."""
    references = [(f"<{ref}>", "References") for ref in reversed(_ANGLED.findall(_field(msg, "References")))]
    return _message_ids([(_field(msg, "In-Reply-To"), "In-Reply-To"), *references])


def _message_ids(values: Iterable[tuple[str, str]]) -> tuple[Reference, ...]:
    """Each distinct sendguard id named by a `<...>` Message-ID token in `values` (value, where)."""
    found: dict[str, Reference] = {}
    for value, where in values:
        for token in _ANGLED.findall(value):
            message_id = sendguard_id(f"<{token}>")
            if message_id is not None and message_id not in found:
                found[message_id] = Reference(message_id, where)
    return tuple(found.values())


def _signed(addresses: Iterable[tuple[str, str]], bounce_domain: str | None) -> tuple[Reference, ...]:
    """Each address shaped `bounces+{id}.{mac}@{bounce_domain}` in (address, where), once in each
    place: `_within_budgets` caps each place, then keeps each address once, where first seen."""
    if not bounce_domain:
        return ()
    found: dict[tuple[str, str, str], Reference] = {}
    for address, where in addresses:
        parts = signed_bounce(address)
        if parts is not None and parts[2] == bounce_domain.lower() and (*parts[:2], where) not in found:
            found[(*parts[:2], where)] = Reference(parts[0], where, parts[1])
    return tuple(found.values())


def _parts(msg: Message, depth: int = 0) -> Iterator[Message]:
    """msg and its parts, depth first, not descending into attached messages (message/*)."""
    yield msg
    if msg.get_content_maintype() == "multipart" and depth < _MAX_DEPTH:
        for part in _subparts(msg):
            yield from _parts(part, depth + 1)


def _subparts(msg: Message) -> list[Message]:
    """The parts of a multipart or the message in a message/*; [] for a leaf.

    is_multipart() first: compat32's get_payload() decodes a leaf by its charset, and fails on some.
    """
    payload = msg.get_payload() if msg.is_multipart() else None
    return [part for part in payload if isinstance(part, Message)] if isinstance(payload, list) else []


def _first_part(msg: Message, content_type: str) -> Message | None:
    return next((part for part in _parts(msg) if part.get_content_type() == content_type), None)


def _field(msg: Message, name: str) -> str:
    """A header's raw value unfolded, '' if absent; compat32 gives 8-bit headers as Header objects."""
    value = msg.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def _decoded_header(msg: Message, name: str) -> str:
    """A header with RFC 2047 encoded words decoded, or its raw value if they are malformed."""
    value = msg.get(name)
    if value is None or isinstance(value, Header):
        return _field(msg, name)
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, HeaderParseError):
        return _field(msg, name)


def _addresses(msg: Message, name: str) -> list[str]:
    """The email addresses in the `name` headers, lowercased: at most the first `MAX_ADDRESSES`,
    read from the first `MAX_ADDRESS_BYTES` of them (every field of that name, in order).

    A field cut short loses its last address read, which may be a part of a longer one. A cut is
    noted for `Inbound.trimmed` ("addresses").
    """
    whole: list[str] = []
    pairs: list[tuple[str, str]] = []
    left, cut = MAX_ADDRESS_BYTES, False
    for field in msg.get_all(name, []):
        value = str(field)
        if len(value) > left:  # this field is read in part, and none after it
            pairs = getaddresses([value[:left]])[:-1] if left > 0 else []
            cut = True
            break
        whole.append(value)
        left -= len(value)
    pairs = [*getaddresses(whole), *pairs]
    found = [address for _, raw in pairs if (address := _address(raw))]
    if cut or len(found) > MAX_ADDRESSES:
        noted = _CUT.get()
        if noted is not None:
            noted["addresses"] = None
    return found[:MAX_ADDRESSES]


def _address(value: str) -> str | None:
    """The email address in a header value, lowercased; None when there is none."""
    address = folded_address(parseaddr(value)[1])
    return address if "@" in address and len(address) <= 320 else None


def _untyped(value: str) -> str:
    """A DSN field without its type: 'rfc822; a@b' is 'a@b', 'dns; mx.example' is 'mx.example'."""
    return _FIELD_TYPE.sub("", value, count=1).strip()


def _sender(msg: Message) -> str:
    return next(iter(_addresses(msg, "From")), "an unknown sender")


def _untied() -> UnparsableMail:
    return UnparsableMail("cannot tie it to a message: no Message-ID, bounce address or recipient")
