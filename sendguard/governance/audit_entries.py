"""What an audit entry is: its canonical encoding, its hash, and strict parsing of stored ones.

Entry (one JSON object per list element, in `audit:chain`):
    {"seq": 17, "at": <ms when written>, "kind": "submission.decided", "actor": "agent:sdr-bot",
     "fields": {...}, "prev": <hash of entry 16>, "hash": <sha256 of all of the above>}

`hash` is SHA-256 over the canonical encoding (JSON, sorted keys, no spaces, UTF-8) of every
other field; `prev` is "0" * 64 before the first entry. A pending entry (in `audit:pending`,
not chained yet) has only `at`, `kind`, `actor` and `fields`.

Message content never goes into the trail: `entry()` refuses fields named subject, text, html or
body; callers record `content_hash(subject, text, html)` instead.

Anchor line (one per chained batch, appended to a file outside Redis):
    `<seq> <hash of entry seq> <ms when written> <link>`, where `link` is SHA-256 over the line
    before it and this line's first three fields, so the lines chain as the entries do.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sendguard.errors import SendguardError
from sendguard.model import now_ms

GENESIS = "0" * 64
MAX_ENTRY_BYTES = 64 * 1024
# Field names that would carry message content; the trail holds content_hash() instead.
_CONTENT_FIELDS = frozenset({"subject", "text", "html", "body"})
_PENDING_KEYS = frozenset({"at", "kind", "actor", "fields"})
_FIELD_ORDER = ("seq", "at", "kind", "actor", "fields", "prev", "hash")
_ENTRY_KEYS = frozenset(_FIELD_ORDER)
HEX64 = re.compile(r"[0-9a-f]{64}")
# canonical()'s encoder, built once: json.dumps with options builds one per call, and a batch's
# admission encodes an audit entry and a content hash for each recipient.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_text = json.encoder.encode_basestring  # canonical()'s encoding of a string (ensure_ascii=False)


class AuditError(SendguardError):
    """The audit trail cannot be written or read as it stands (see the message for what to do)."""


def canonical(value: Any) -> str:
    """The one encoding that is hashed and stored: JSON, sorted keys, no spaces, no NaN."""
    return _CANONICAL.encode(value)


def anchor_line(previous: str, seq: int, digest: str, at_ms: int) -> str:
    """One anchor line, `seq hash at_ms link`, without its newline.

    `link` is SHA-256 over the previous complete line and this line's first three fields, so the
    lines chain as the entries do: a line taken out of the middle or edited shows at the next one.
    """
    fields = f"{seq} {digest} {at_ms}"
    link = hashlib.sha256(f"{previous}\n{fields}".encode("ascii")).hexdigest()
    return f"{fields} {link}"


def canonical_hash(value: Any) -> str:
    """SHA-256 hex of the canonical encoding: equal values hash equal whatever their key order."""
    # surrogatepass: a hand-written entry with a lone surrogate escape must hash, not crash verify.
    return hashlib.sha256(canonical(value).encode("utf-8", "surrogatepass")).hexdigest()


def sealed(seq: int, at: int, kind: str, actor: str, fields: Mapping[str, Any], prev: str) -> tuple[str, str]:
    """An entry's hash and its stored line, its fields encoded once (the chain seals every entry).

    Sorted, the keys before `hash` are actor, at and fields and those after it kind, prev and seq,
    so both the hashed body and the stored line are the two halves joined, with or without `hash`.
    """
    head = canonical({"actor": actor, "at": at, "fields": fields})[:-1]
    tail = f'"kind":{_text(kind)},"prev":{_text(prev)},"seq":{seq:d}}}'  # what canonical() makes of them
    digest = hashlib.sha256(f"{head},{tail}".encode("utf-8", "surrogatepass")).hexdigest()
    return digest, f'{head},"hash":"{digest}",{tail}'


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(raw: str) -> Any:
    """Strict JSON: NaN and Infinity are refused, since canonical() could not encode them again."""
    return json.loads(raw, parse_constant=_reject_constant)


def content_hash(subject: str, text: str | None, html: str | None) -> str:
    """SHA-256 hex of a message's content, for the trail instead of the content itself.

    A missing part (None) and an empty one ("") hash differently.
    """
    return canonical_hash([subject, text, html])


def entry(kind: str, actor: str, fields: Mapping[str, Any]) -> str:
    """One pending audit entry as JSON, for callers that RPUSH it in their own transaction.

    `fields` must be JSON-serialisable and small (the whole entry at most 64 KiB). Message
    content never goes in: subject, text, html and body are refused; pass
    `content_hash(subject, text, html)` instead.
    """
    if not kind or not actor:
        raise ValueError("an audit entry needs a kind and an actor")
    content = sorted(_CONTENT_FIELDS.intersection(fields))
    if content:
        raise ValueError(
            f"audit fields {', '.join(content)}: message content never goes into the audit trail; "
            "record content_hash(subject, text, html) instead"
        )
    try:
        encoded = canonical({"at": now_ms(), "kind": kind, "actor": actor, "fields": dict(fields)})
        size = len(encoded.encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit fields must be JSON-serialisable text: {exc}") from exc
    if size > MAX_ENTRY_BYTES:
        raise ValueError(f"audit entry of {size} bytes is over the {MAX_ENTRY_BYTES}-byte limit")
    return encoded


@dataclass(frozen=True)
class AuditEntry:
    """One chained entry, as stored."""

    seq: int
    at: int
    kind: str
    actor: str
    fields: Mapping[str, Any]
    prev: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "actor": self.actor,
            "fields": dict(self.fields),
            "prev": self.prev,
            "hash": self.hash,
        }

    def to_json(self) -> str:
        """The canonical JSON line, byte for byte what the chain stores for an intact entry."""
        return canonical(self.to_dict())


def parse_chained(raw: str) -> AuditEntry | str:
    """A chained entry parsed strictly, or why it is not one."""
    try:
        value = _loads(raw)
    except (ValueError, RecursionError):
        return "it is not JSON"
    if not isinstance(value, dict):
        return "it is not a JSON object"
    if value.keys() != _ENTRY_KEYS:
        extra, missing = sorted(value.keys() - _ENTRY_KEYS), sorted(_ENTRY_KEYS - value.keys())
        return "its fields are not the entry format" + "".join(
            f"; {label}: {', '.join(names)}"
            for label, names in (("extra", extra), ("missing", missing))
            if names
        )
    seq, at, kind, actor, fields, prev, digest = (value[name] for name in _FIELD_ORDER)
    if type(seq) is not int or type(at) is not int:
        return "its seq or at is not an integer"
    if not isinstance(kind, str) or not isinstance(actor, str) or not isinstance(fields, dict):
        return "its kind, actor or fields have the wrong type"
    if not isinstance(prev, str) or not isinstance(digest, str):
        return "its prev or hash is not a string"
    return AuditEntry(seq=seq, at=at, kind=kind, actor=actor, fields=fields, prev=prev, hash=digest)


def expected_hash(item: AuditEntry) -> str:
    """The hash an entry must carry: over all its fields but `hash`."""
    body = item.to_dict()
    del body["hash"]
    return canonical_hash(body)


def parse_pending(raw: str, at_ms: int) -> tuple[int, str, str, dict[str, Any]]:
    """(at, kind, actor, fields) of a pending entry.

    Something that is not an entry (only a hand-made RPUSH can put one there) is chained as
    kind `audit.malformed` with the raw text, so it is kept as evidence and cannot stall the chain.
    """
    try:
        value = _loads(raw)
    except (ValueError, RecursionError):
        value = None
    if (
        isinstance(value, dict)
        and value.keys() == _PENDING_KEYS
        and type(value["at"]) is int
        and isinstance(value["kind"], str)
        and isinstance(value["actor"], str)
        and isinstance(value["fields"], dict)
    ):
        return value["at"], value["kind"], value["actor"], value["fields"]
    return at_ms, "audit.malformed", "sendguard", {"raw": raw}


def decoded(value: bytes | str) -> str:
    """A Redis reply as text, whether or not the client decodes replies itself."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def decoded_record(record: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash reply as text."""
    return {decoded(name): decoded(value) for name, value in record.items()}
