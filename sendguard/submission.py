"""What an agent submits and how it is checked for form.

Form errors (a CR in a header, a reserved header, no body) are protocol errors (422); the
policy checks live in `intake/recipients.py` and produce reason codes instead; the message built
from a stored record is `delivery/render.py`'s.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from sendguard.model import normal_address, time_zone

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
# `text` and `html` each, in UTF-8 bytes (a batch's: once filled for each recipient). As large as
# a single message's whole request may be by default (SENDGUARD_MAX_REQUEST_BYTES), so a batch's
# template can be no larger than a single message's body; both parts quoted-printable stay under
# the 10 MB many relays take.
MAX_BODY_BYTES = 1 << 20
# How far ahead `send_at` may be: far enough for any schedule (tests and the bench use 2099 for
# "never during this run"), near enough that the send windows, searched 400 days past it, stay in
# the calendar (the year 9999 overflowed into a 500).
MAX_SEND_AHEAD = timedelta(days=36_500)
# Every character str.splitlines() breaks at: the email package refuses a header holding any of them.
_LINE_BREAK = re.compile(r"[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def _single_line(value: str) -> str:
    if found := _LINE_BREAK.search(value):
        raise ValueError(f"must not contain CR or LF or another line break (found {found.group()!r})")
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


SingleLine = Annotated[str, AfterValidator(_single_line)]


def _body_size(value: str) -> str:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise ValueError(f"is {size:,} bytes of UTF-8; the limit is {MAX_BODY_BYTES:,} (1 MiB)")
    return value


Body = Annotated[
    str,
    AfterValidator(_body_size),
    WithJsonSchema({"type": "string", "description": f"at most {MAX_BODY_BYTES} bytes of UTF-8"}),
]


TimeZoneName = Annotated[
    str,
    AfterValidator(lambda name: time_zone(name).key),
    WithJsonSchema(
        {
            "type": "string",
            "description": "an IANA time zone: send windows with timezone = 'recipient' read its wall clock",
            "examples": ["Europe/Berlin"],
        }
    ),
]


class Sender(BaseModel):
    """The From header split into display name and normalised address; frozen, since the parse of
    one header is shared by every submission that gives it (`parse_sender`)."""

    model_config = ConfigDict(frozen=True)

    display_name: str
    address: str
    domain: str


def parse_sender(value: object) -> Sender:
    """Parse `Alice <alice@acme.example>`; ValueError says what is wrong with it."""
    if isinstance(value, Sender):
        return value
    if not isinstance(value, str) or len(value) > 998:
        raise ValueError("'from' must be a header value of at most 998 characters")
    return _parsed_sender(value)


@functools.lru_cache(maxsize=1024)
def _parsed_sender(value: str) -> Sender:
    """`parse_sender` of a header string, remembered: an agent sends from the same few headers, and
    the email package's address parser was most of the time a message took to validate. Only a
    parse that succeeded is remembered; a refused one raises again each time."""
    _single_line(value)
    pairs = getaddresses([value])
    if len(pairs) != 1 or not pairs[0][1]:
        raise ValueError("'from' must hold exactly one address")
    name, address = pairs[0]
    try:
        normal = normal_address(address)
    except ValueError as exc:
        raise ValueError(f"'from' address is not valid: {exc}") from exc
    return Sender(display_name=name, address=normal.address, domain=normal.domain)


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
    text: Body | None = None
    html: Body | None = None
    headers: dict[str, SingleLine] = Field(default_factory=dict, max_length=50)
    segment: Annotated[str, Field(pattern=_LABEL)] | None = None
    campaign: Annotated[str, Field(pattern=_LABEL)] | None = None
    agent_version: SingleLine = Field(min_length=1, max_length=128)
    run_id: SingleLine | None = Field(default=None, max_length=128)
    idempotency_key: SingleLine | None = Field(default=None, min_length=1, max_length=200)
    send_at: AwareDatetime | None = None
    enrichment: Enrichment | None = None

    @field_validator("send_at")
    @classmethod
    def _within_reach(cls, send_at: datetime | None) -> datetime | None:
        if send_at is not None and send_at > datetime.now(UTC) + MAX_SEND_AHEAD:
            raise ValueError("is more than 100 years ahead")
        return send_at

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

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from": "Alice <alice@acme.example>",
                    "to": "dana@customer.example",
                    "subject": "A question about your Q4 close",
                    "text": "Hi Dana,\n\nwould a 20-minute call next week help?\n\nAlice",
                    "agent_version": "sdr-bot@1.4.2",
                    "campaign": "q4",
                    "idempotency_key": "q4-dana-intro",
                    "enrichment": {"source": "crm", "fetched_at": "2026-11-27T09:00:00Z"},
                }
            ]
        }
    )

    to: SingleLine = Field(min_length=3, max_length=320)
    recipient_timezone: TimeZoneName | None = None


def new_message_ids(count: int) -> list[str]:
    """Time-ordered, unguessable ids: 11 hex digits of milliseconds plus 48 random bits each.

    The random bits of all `count` come from one read of the system's randomness: a batch takes
    thousands, and a read an id was 4 % of the CPU of admitting one.
    """
    stamp = f"{int(time.time() * 1000):011x}"
    random = secrets.token_hex(6 * count)
    return [stamp + random[start : start + 12] for start in range(0, 12 * count, 12)]


def message_id_header(message_id: str, from_addr: str) -> str:
    domain = from_addr.rpartition("@")[2]
    return f"<{message_id}.sg@{domain}>"
