"""The message record: one message as the store keeps it, typed.

Redis keeps a message as a hash of strings (`P:msg:{id}`, see state/keys.py); the store turns it
into a `MessageRecord` as it reads it (`from_hash`) and back into strings as it writes
(`to_fields`, `content_fields`, `encode_changes`), so above the store nothing reads or writes a
record by string key. Attribute names are the hash's field names, which the Lua scripts also read
and write. A field missing from a hash (written by an older version) takes its default.

The content (subject, text, html, headers) is a single message's own, its body (text, html,
headers) kept beside the hash as one JSON string (keys.py `content`; records written before that
hold it as hash fields) and its subject, short as a rule, in the hash; a batch's
recipient keeps only its `values` and the `template` it fills (its batch's, stored once), and
`from_hash` fills it in, so every reader sees the content the recipient gets. A rejected message
keeps no content. The scopes are a hash field only when the record's fields do not give them
(`derived_scopes`), so that in the common case no field is long and Redis keeps the hash compact.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import ParamSpec, TypedDict

from sendguard.model import Reason, Status, decode_reasons
from sendguard.rules import ScopeKind
from sendguard.scopes import scopes_of
from sendguard.templates import BatchTemplate


class Wait(StrEnum):
    """What a queued message waits for besides a throttle's scope."""

    SEND_WINDOW = "send_window"  # the next opening of the send windows that apply to it
    # Room under its agent's mass-send line: messages not released by a tier-2 approval reach the
    # relay fewer than `mass_send_threshold` a `mass_send_window`, however they were gathered.
    MASS_SEND = "mass_send"


Waiting = ScopeKind | Wait
WAITS = frozenset(wait.value for wait in Wait)


def waiting_from(raw: str) -> Waiting:
    return Wait(raw) if raw in WAITS else ScopeKind(raw)


@dataclass(frozen=True)
class MessageRecord:
    """A message: what the agent submitted, the decision on it, and how its delivery went."""

    id: str
    status: Status
    reasons: tuple[Reason, ...] = ()
    created: int | None = None  # ms; set by the admission script
    attempts: int = 0
    uncertain: int = 0  # attempts whose outcome the relay never told us
    scopes: tuple[str, ...] = ()
    approval: str = ""  # the approval request it waits for, or waited for
    # The approved tier-2 request whose headroom let it through at admission: it passes delivery's
    # mass-send line, as a message that waited for (`approval`) an approved tier-2 request does.
    released_by: str = ""
    held_by: str | None = None  # the tripped scope holding it, while it is held
    claim: str = ""  # the token of the daemon's claim, while one holds it
    owner: str = ""  # the daemon instance holding the claim
    # What the agent submitted, and what admission decided about it.
    agent: str = ""
    agent_version: str = ""
    from_name: str = ""
    from_addr: str = ""
    to: str = ""
    # the recipient's mailbox (model.canonical_address), what suppression matches; not a hash field
    # when it is `to` as written, the common case
    to_canonical: str = ""
    to_domain: str = ""
    subject: str = ""
    text: str = ""
    html: str = ""
    # The agent's headers as a JSON object. Decoded only when the message is rendered
    # (`extra_headers`), so a damaged value fails that send, not every read of the record.
    headers: str = ""
    template: str = ""  # the batch whose stored template holds the content; "" when the record does
    values: str = ""  # with a template: this recipient's values, as a JSON object
    segment: str | None = None
    campaign: str | None = None
    run_id: str | None = None
    batch: str | None = None
    idempotency_key: str | None = None
    send_at: datetime | None = None
    recipient_timezone: str | None = None  # IANA zone, for send windows in the recipient's wall time
    enrichment_source: str | None = None
    enrichment_fetched_at: datetime | None = None
    rules_version: str = ""
    not_before: int = 0  # ms: never sent earlier, even when released or approved sooner
    dns_pending: bool = False  # admitted while DNS failed temporarily; checked again before sending
    dns_checks: int = 1
    # How delivery went.
    waiting_for: Waiting | None = None  # the throttle scope or send window it last waited for
    smtp_code: int | None = None
    smtp_text: str | None = None
    smtp_stage: str | None = None
    sent_at: int | None = None  # ms

    def extra_headers(self) -> dict[str, str]:
        """The agent's own headers; ValueError if the stored value is damaged."""
        headers: dict[str, str] = json.loads(self.headers or "{}")
        return headers

    @classmethod
    def from_hash(
        cls,
        message_id: str,
        fields: Mapping[str, str],
        template: Mapping[str, str] | None = None,
        content: str = "",
        *,
        to_send: bool = False,
    ) -> MessageRecord:
        """The record `message_id` from its Redis hash (all of it, or the fields a reader asked
        for; the id is its key's, not a field), its content
        from `content` (its own, keys.py `content`) or filled from `template` (its batch's stored
        template) when it names one; ValueError if a field is damaged or the template it needs is
        missing. `to_send`: the whole hash and its content key were read for a send, so a record of
        this layout (no `id` field, which earlier versions wrote beside the body in the hash) whose
        content is gone (evicted by a Redis not set to `noeviction`, a partial restore) is refused
        rather than sent as an empty message."""
        get = fields.get
        if to_send and not content and "id" not in fields and not get("template"):
            raise ValueError("its content is gone from Redis")
        own: Mapping[str, str] = json.loads(content) if content else fields
        subject = get("subject", "")
        text, html, headers = (own.get(name, "") for name in BODY)
        if name := get("template"):
            if not template:
                raise ValueError(f"the template of batch {name} is gone")
            values: dict[str, str] = json.loads(get("values") or "{}")
            filled = BatchTemplate(template["subject"], template["text"], template["html"]).fill(values)
            subject, text, html, headers = filled.subject, filled.text, filled.html, template["headers"]
        return cls(
            id=message_id,
            status=Status(fields["status"]),
            reasons=tuple(decode_reasons(get("reasons"))),
            created=_int_or_none(get("created")),
            attempts=int(get("attempts") or 0),
            uncertain=int(get("uncertain") or 0),
            scopes=tuple(json.loads(raw)) if (raw := get("scopes")) is not None else derived_scopes(fields),
            approval=get("approval", ""),
            released_by=get("released_by", ""),
            held_by=get("held_by") or None,
            claim=get("claim", ""),
            owner=get("owner", ""),
            agent=get("agent", ""),
            agent_version=get("agent_version", ""),
            from_name=get("from_name", ""),
            from_addr=get("from_addr", ""),
            to=get("to", ""),
            to_canonical=get("to_canonical") or get("to", ""),
            to_domain=get("to_domain", ""),
            subject=subject,
            text=text,
            html=html,
            headers=headers,
            template=get("template", ""),
            values=get("values", ""),
            segment=get("segment") or None,
            campaign=get("campaign") or None,
            run_id=get("run_id") or None,
            batch=get("batch") or None,
            idempotency_key=get("idempotency_key") or None,
            send_at=_time_or_none(get("send_at")),
            recipient_timezone=get("recipient_timezone") or None,
            enrichment_source=get("enrichment_source") or None,
            enrichment_fetched_at=_time_or_none(get("enrichment_fetched_at")),
            rules_version=get("rules_version", ""),
            not_before=int(get("not_before") or 0),
            dns_pending=get("dns_pending") == "1",
            dns_checks=int(get("dns_checks", "1")),
            waiting_for=waiting_from(waiting) if (waiting := get("waiting_for")) else None,
            smtp_code=_int_or_none(get("smtp_code")),
            smtp_text=get("smtp_text") or None,
            smtp_stage=get("smtp_stage") or None,
            sent_at=_int_or_none(get("sent_at")),
        )

    def to_fields(self) -> dict[str, str]:
        """The hash fields a new message is written with, besides its content (`content_fields`)
        and those the admission script sets itself (id, status, reasons, created, not_before,
        scopes, approval). A field at its default is left out: `from_hash` gives it back, and a hash
        field costs Redis about 80 bytes a message however short its value."""
        fields = _written(self, _SUBMITTED)
        if fields.get("to_canonical") == self.to:
            del fields["to_canonical"]
        return fields

    def content_fields(self) -> dict[str, str]:
        """The hash fields of its content, which a message keeps only if it is not rejected: its
        own subject (its body is `body()`), or the template it fills and its values."""
        return _written(self, ("template", "values") if self.template else ("subject",))

    def body(self) -> str:
        """Its own text, html and headers as the JSON object keys.py `content` holds; "" for a
        batch's recipient, whose template holds them."""
        return "" if self.template else json.dumps(_written(self, BODY), ensure_ascii=False)


def derived_scopes(fields: Mapping[str, str]) -> tuple[str, ...]:
    """The scopes a record's fields give (admission stores the list only when they do not give it
    back): its From address as it is stored stands for the inbox."""
    return scopes_of(
        fields.get("to_domain", ""),
        fields.get("from_addr", ""),
        fields.get("segment"),
        fields.get("campaign"),
        fields.get("agent", ""),
    )


def _written(record: MessageRecord, names: tuple[str, ...]) -> dict[str, str]:
    """The fields of `names` that are not at their default, as the hash holds them."""
    return {name: encode(value) for name in names if (value := getattr(record, name)) != _DEFAULTS[name]}


_DEFAULTS = {field.name: field.default for field in dataclasses.fields(MessageRecord)}
_Fields = ParamSpec("_Fields")


def _without_frozen_assignments(record: Callable[_Fields, MessageRecord]) -> Callable[_Fields, MessageRecord]:
    """`record`'s constructor, with its signature, that fills the instance's fields in one step: a
    frozen dataclass's __init__ assigns each of the 45 fields through object.__setattr__, which
    cost admission about as much as the rest of a batch recipient's record and arguments."""
    if hasattr(MessageRecord, "__post_init__") or any(
        field.default_factory is not dataclasses.MISSING for field in dataclasses.fields(MessageRecord)
    ):
        raise TypeError(
            "MessageRecord's fields are no longer plain values: build records with its constructor"
        )
    defaults = {name: value for name, value in _DEFAULTS.items() if value is not dataclasses.MISSING}

    def build(*args: _Fields.args, **fields: _Fields.kwargs) -> MessageRecord:
        if args:
            raise TypeError("a new record's fields are given by name")
        built = object.__new__(MessageRecord)
        built.__dict__.update(defaults, **fields)
        return built

    return build


# A new message's record, as MessageRecord(...) makes it, for admission's thousands a batch.
new_record = _without_frozen_assignments(MessageRecord)
# A message's own content; a batch's recipient has them in its template instead.
CONTENT = ("subject", "text", "html", "headers")
BODY = CONTENT[1:]  # kept apart from the record (keys.py `content`), the subject in it
# The fields `derived_scopes` reads.
SCOPE_SOURCES = ("to_domain", "from_addr", "segment", "campaign", "agent")
# Written at admission from the record, besides the content; every other field is the scripts' or
# a later change's.
_SUBMITTED = (
    "released_by",
    "agent",
    "agent_version",
    "from_name",
    "from_addr",
    "to",
    "to_canonical",
    "to_domain",
    "segment",
    "campaign",
    "run_id",
    "batch",
    "idempotency_key",
    "send_at",
    "recipient_timezone",
    "enrichment_source",
    "enrichment_fetched_at",
    "rules_version",
    "dns_pending",
    "dns_checks",
    "waiting_for",
)


class Changes(TypedDict, total=False):
    """Fields a status change writes on the record as it moves it; a field not given stays."""

    attempts: int
    uncertain: int
    reasons: tuple[Reason, ...]
    dns_pending: bool
    dns_checks: int
    waiting_for: Waiting | None  # None: no longer waiting
    smtp_code: int
    smtp_text: str
    smtp_stage: str
    sent_at: int


def encode_changes(changes: Changes) -> dict[str, str]:
    """The hash fields that `changes` writes."""
    return {name: encode(value) for name, value in changes.items()}


def encode(value: object) -> str:
    """One field as the hash holds it: JSON for lists, "1"/"0" for flags, "" for nothing."""
    if type(value) is str:  # most fields: answered first, as admission encodes ~20 a recipient
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        if not value:  # no reasons, as most new messages: json.dumps costs a microsecond even for this
            return "[]"
        return json.dumps([item.as_dict() if isinstance(item, Reason) else item for item in value])
    return str(value)


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw else None


def _time_or_none(raw: str | None) -> datetime | None:
    return datetime.fromisoformat(raw) if raw else None
