"""What happened to a message after it left: bounces, complaints, replies, unsubscribes.

One model for every way these arrive (the JSON of `POST /v1/events`, a DSN, an ARF report or a
reply parsed from raw mail), so one code path records them all.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sendguard.model import folded_address

# new_message_ids(): 11 hex digits of milliseconds and 12 random ones.
_ID = r"[0-9a-f]{23}"
_BARE_ID = re.compile(rf"^{_ID}$")
_HEADER_ID = re.compile(rf"(?<![0-9a-f])({_ID})\.sg@[^>\s]+", re.IGNORECASE)
# A bounce address: `bounces+<id>.<mac>@<bounce domain>` (signing.py); its unsigned form
# `bounces+<id>@...` of earlier versions still names an id, but proves nothing.
MAC_DIGITS = 24
_VERP = re.compile(rf"^bounces\+({_ID})(?:\.([0-9a-f]{{{MAC_DIGITS}}}))?@([^@\s]+)$", re.IGNORECASE)


# Parsed inbound mail is cut to these before it becomes an event (inbound.py).
MAX_DETAIL = 2000
MAX_TEXT = 100_000


class EventType(StrEnum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    REPLY = "reply"
    UNSUBSCRIBE = "unsubscribe"
    DELIVERED = "delivered"


class BounceType(StrEnum):
    HARD = "hard"  # counts in the bounce rate and suppresses the recipient
    SOFT = "soft"  # recorded only: the mailbox was full, the server busy


class Sentiment(StrEnum):
    POSITIVE = "positive"
    NEUTRAL = "neutral"
    NEGATIVE = "negative"
    ABUSIVE = "abusive"


class EventIn(BaseModel):
    """One signal about one sent message: the id it names, if any, and the recipient it names.

    Events parsed from raw mail name no id (the mail's references are checked instead, see
    feedback/apply.py), and an ARF report may redact its recipient too.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: EventType
    message_id: str | None = Field(
        default=None,
        max_length=400,
        description="sendguard's id, or the Message-ID header it sent (<id.sg@domain>)",
    )
    recipient: str | None = Field(
        default=None, max_length=320, description="the original recipient, when the id is not known"
    )
    bounce_type: BounceType | None = Field(default=None, description="bounces only; default hard")
    status: str | None = Field(
        default=None, pattern=r"^[245]\.\d{1,3}\.\d{1,3}$", description="enhanced status code, e.g. 5.1.1"
    )
    detail: str | None = Field(default=None, max_length=MAX_DETAIL, description="diagnostic text, for people")
    text: str | None = Field(default=None, max_length=MAX_TEXT, description="replies: the reply's text")
    sentiment: Sentiment | None = Field(
        default=None, description="replies: the caller's own verdict, which wins over sendguard's"
    )

    @model_validator(mode="after")
    def _consistent(self) -> EventIn:
        if self.message_id and sendguard_id(self.message_id) is None:
            raise ValueError(f"message_id {self.message_id!r} is not a sendguard id or Message-ID")
        if self.recipient is not None:
            if "@" not in self.recipient:
                raise ValueError(f"recipient {self.recipient!r} is not an email address")
            object.__setattr__(self, "recipient", folded_address(self.recipient))
        if self.bounce_type is not None and self.type is not EventType.BOUNCE:
            raise ValueError("bounce_type is for bounce events only")
        if self.sentiment is not None and self.type is not EventType.REPLY:
            raise ValueError("sentiment is for reply events only")
        return self

    @property
    def hard(self) -> bool:
        return self.type is EventType.BOUNCE and self.bounce_type is not BounceType.SOFT


class ReportedEvent(EventIn):
    """An event a caller reports (`POST /v1/events`): it must name something to be tied by."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "reply",
                    "message_id": "<0192a3b4c5d6e7f8a9b0c1d.sg@acme.example>",
                    "text": "Thanks, but we are not interested.",
                    "sentiment": "negative",
                },
                {
                    "type": "bounce",
                    "recipient": "dana@customer.example",
                    "bounce_type": "hard",
                    "status": "5.1.1",
                    "detail": "550 5.1.1 <dana@customer.example>: mailbox unknown",
                },
            ]
        }
    )

    @model_validator(mode="after")
    def _tied(self) -> ReportedEvent:
        if not self.message_id and not self.recipient:
            raise ValueError("give message_id or recipient, so the event can be tied to a message")
        return self


def sendguard_id(reference: str) -> str | None:
    """The sendguard id in a bare id, a Message-ID header or a VERP address; None if there is none."""
    text = reference.strip()
    if _BARE_ID.match(text.lower()):
        return text.lower()
    if match := _VERP.match(text.strip("<>")):
        return match.group(1).lower()
    if match := _HEADER_ID.search(text):
        return match.group(1).lower()
    return None


def signed_bounce(address: str) -> tuple[str, str, str] | None:
    """(id, mac, domain) of an address shaped `bounces+<id>.<mac>@<domain>`, lowercased; None for
    any other. The shape only: whether the mac is right takes the secret (signing.py)."""
    match = _VERP.match(address.strip().strip("<>"))
    if match is None or match.group(2) is None:
        return None
    message_id, mac, domain = match.groups()
    return message_id.lower(), mac.lower(), domain.lower()
