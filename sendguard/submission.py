"""What an agent submits, how it is checked for form, and the RFC 5322 message built from it.

Form errors (a CR in a header, a reserved header, no body) are protocol errors (422); the
policy checks live in `ingress.py` and produce reason codes instead.
"""

from __future__ import annotations

import email.charset
import email.policy
import re
import secrets
import time
from datetime import datetime
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, getaddresses, quote
from typing import Annotated, Any, Self

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

# Headers an agent may set besides From/To/Subject. Anything else is refused: routing and
# identity headers (Bcc, Received, Return-Path, ...) are how injected mail would hide.
ALLOWED_HEADERS = frozenset(
    {
        "reply-to",
        "in-reply-to",
        "references",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "list-id",
        "precedence",
        "auto-submitted",
        "comments",
        "keywords",
        "organization",
    }
)
RESERVED_HEADERS = frozenset(
    {
        "bcc",
        "cc",
        "to",
        "from",
        "sender",
        "subject",
        "date",
        "message-id",
        "received",
        "return-path",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "dkim-signature",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
        "authentication-results",
        "delivered-to",
        "x-original-to",
    }
)
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")
_LABEL = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
MAX_SUBJECT = 998
# Every character str.splitlines() breaks at: the email package refuses a header holding any of them.
_LINE_BREAK = re.compile(r"[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def _single_line(value: str) -> str:
    if found := _LINE_BREAK.search(value):
        raise ValueError(f"must not contain CR or LF or another line break (found {found.group()!r})")
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


SingleLine = Annotated[str, AfterValidator(_single_line)]


class Sender(BaseModel):
    """The From header split into display name and normalised address."""

    display_name: str
    address: str
    domain: str


def parse_sender(value: object) -> Sender:
    """Parse `Alice <alice@acme.example>`; ValueError says what is wrong with it."""
    if isinstance(value, Sender):
        return value
    if not isinstance(value, str) or len(value) > 998:
        raise ValueError("'from' must be a header value of at most 998 characters")
    _single_line(value)
    pairs = getaddresses([value])
    if len(pairs) != 1 or not pairs[0][1]:
        raise ValueError("'from' must hold exactly one address")
    name, address = pairs[0]
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"'from' address is not valid: {exc}") from exc
    normalized = f"{valid.local_part}@{valid.domain}".lower()
    return Sender(display_name=name, address=normalized, domain=valid.domain.lower())


# Parsed once, while the request is validated, so an error is located at 'from'; the
# OpenAPI document still shows it as the header string it is.
SenderHeader = Annotated[
    Sender,
    BeforeValidator(parse_sender),
    WithJsonSchema({"type": "string", "maxLength": 998, "examples": ["Alice <alice@acme.example>"]}),
]


class Enrichment(BaseModel):
    """Where the agent got what it knows about the recipient, and when (stale data misleads)."""

    model_config = ConfigDict(extra="forbid")

    source: SingleLine = Field(min_length=1, max_length=128)
    fetched_at: AwareDatetime


class Content(BaseModel):
    """What a message and a batch share: sender, content, labels and timing."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sender: SenderHeader = Field(alias="from")
    subject: SingleLine = Field(max_length=MAX_SUBJECT)
    text: str | None = None
    html: str | None = None
    headers: dict[str, SingleLine] = Field(default_factory=dict, max_length=50)
    segment: Annotated[str, Field(pattern=_LABEL)] | None = None
    campaign: Annotated[str, Field(pattern=_LABEL)] | None = None
    agent_version: SingleLine = Field(min_length=1, max_length=128)
    run_id: SingleLine | None = Field(default=None, max_length=128)
    idempotency_key: SingleLine | None = Field(default=None, min_length=1, max_length=200)
    send_at: AwareDatetime | None = None
    enrichment: Enrichment | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.text and not self.html:
            raise ValueError("one of 'text' or 'html' is required")
        for name, value in self.headers.items():
            lowered = name.lower()
            if not _HEADER_NAME.match(name):
                raise ValueError(f"headers: {name!r} is not a valid header name")
            if lowered in RESERVED_HEADERS or lowered.startswith("x-sendguard"):
                raise ValueError(f"headers: {name!r} is reserved and cannot be set")
            if lowered not in ALLOWED_HEADERS and not lowered.startswith("x-"):
                raise ValueError(f"headers: {name!r} is not a known header; use X- for custom headers")
            if len(value) > 998:
                raise ValueError(f"headers: {name!r} value is longer than 998 characters")
        return self


class MessageIn(Content):
    """The body of `POST /v1/messages`."""

    to: SingleLine = Field(min_length=3, max_length=320)


def new_message_id() -> str:
    """Time-ordered, unguessable id: 11 hex digits of milliseconds plus 48 random bits."""
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


def render(record: dict[str, str], headers: dict[str, str], sent_at: datetime) -> bytes:
    """Build the RFC 5322 message for a stored record; its Message-ID ties bounces back to it."""
    fields = {
        "To": record["to"],
        "Subject": record["subject"],
        "Date": format_datetime(sent_at),
        "Message-ID": message_id_header(record["id"], record["from_addr"]),
        **headers,
    }
    text, html = record.get("text", ""), record.get("html", "")
    if not (record["from_addr"].isascii() and record["to"].isascii()):
        return _render_smtputf8(_mailbox(record["from_name"], record["from_addr"]), fields, text, html)
    # The legacy (compat32) API: the modern one parses every header it is given again, which
    # made building a message a third of a delivery's CPU time. Values are encoded here instead.
    message = _content(text, html)
    message["From"] = formataddr((record["from_name"], record["from_addr"]), "utf-8")
    for name, value in fields.items():
        message[name] = _header(value)
    return message.as_bytes(policy=_WIRE)


def _render_smtputf8(sender: str, fields: dict[str, str], text: str, html: str) -> bytes:
    """An internationalised address goes out as UTF-8 (RFC 6531); the modern API writes that."""
    message = EmailMessage(policy=email.policy.SMTPUTF8)
    message["From"] = sender
    for name, value in fields.items():
        message[name] = value
    if text:
        message.set_content(text)
        if html:
            message.add_alternative(html, subtype="html")
    else:
        message.set_content(html, subtype="html")
    return message.as_bytes()


def _content(text: str, html: str) -> Message[str, Any]:
    """The body: text, html, or both as alternatives. Header values set on it may be Header objects."""
    if text and html:
        both = MIMEMultipart("alternative")
        both.attach(_body(text, "plain"))
        both.attach(_body(html, "html"))
        return both
    return _body(text, "plain") if text else _body(html, "html")


def _body(content: str, subtype: str) -> MIMEText:
    """7-bit as it is when it can travel so, else quoted-printable UTF-8, readable in any client."""
    lines = content.splitlines()
    plain = content.isascii() and "\x00" not in content and all(len(line) <= 998 for line in lines)
    if plain:
        return MIMEText(content, subtype, "us-ascii")
    # The stub says str; email.mime.text takes a Charset too (documented since Python 3.5).
    return MIMEText(content, subtype, _UTF8_QP)  # type: ignore[arg-type]


def _header(value: str) -> str | Header:
    """Printable ASCII as it is; anything else (or too long to fold) as RFC 2047 encoded words."""
    if value.isascii() and value.isprintable() and len(value) <= 900:
        return value
    return Header(value, "utf-8")


_UTF8_QP = email.charset.Charset("utf-8")
_UTF8_QP.body_encoding = email.charset.QP
_WIRE = email.policy.compat32.clone(linesep="\r\n")


def _mailbox(name: str, address: str) -> str:
    """`name <address>`: formataddr refuses an internationalised address, which SMTPUTF8 sends as is."""
    if address.isascii():
        return formataddr((name, address))
    return f'"{quote(name)}" <{address}>' if name else address


def message_id_header(message_id: str, from_addr: str) -> str:
    domain = from_addr.rpartition("@")[2]
    return f"<{message_id}.sg@{domain}>"


def public_fields(payload: Content) -> dict[str, Any]:
    """The submission as it is stored (strings only, so it fits a Redis hash)."""
    sender = payload.sender
    return {
        "from_name": sender.display_name,
        "from_addr": sender.address,
        "subject": payload.subject,
        "text": payload.text or "",
        "html": payload.html or "",
        "segment": payload.segment or "",
        "campaign": payload.campaign or "",
        "agent_version": payload.agent_version,
        "run_id": payload.run_id or "",
        "idempotency_key": payload.idempotency_key or "",
        "send_at": payload.send_at.isoformat() if payload.send_at else "",
        "enrichment_source": payload.enrichment.source if payload.enrichment else "",
        "enrichment_fetched_at": payload.enrichment.fetched_at.isoformat() if payload.enrichment else "",
    }
