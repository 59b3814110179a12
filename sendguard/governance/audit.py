"""The audit trail: cheap appends, one SHA-256 hash chain, and a verifier that names the break.

Writing an entry is one RPUSH of a JSON object onto `audit:pending`: durable as soon as Redis has
it, and writers never wait for each other. A chainer (usually the one daemon holding
`audit:lock`) then moves pending entries into `audit:chain`, giving each its sequence number
(1, 2, 3, ...), the hash of the entry before it (`prev`; "0" * 64 before the first) and its own
`hash`: SHA-256 over the canonical encoding (JSON, sorted keys, no spaces, UTF-8) of every other
field. Redis Lua only has SHA-1, so the hashes are computed here and one script commits a batch by
compare-and-set on the head record: if another chainer got there first, the batch is not
written and the loser tries again later. Two chainers can never fork the chain, with or without
the lock; the lock only saves wasted work.

Entry (one JSON object per list element, in `audit:chain`):
    {"seq": 17, "at": <ms when written>, "kind": "submission.decided", "actor": "agent:sdr-bot",
     "fields": {...}, "prev": <hash of entry 16>, "hash": <sha256 of all of the above>}

Message content never goes into the trail: `entry()` refuses fields named subject, text, html or
body; callers record `content_hash(subject, text, html)` instead.

What `verify()` catches: an edited entry (any field), a deleted, inserted, duplicated or moved
entry, and an edited head record. What it cannot catch from Redis alone: someone who can write to
Redis may drop the newest entries and set the head record back, leaving a shorter chain that is
internally perfect. Only a copy of the head kept outside Redis catches that: the anchor file
(one "seq hash at_ms" line per chained batch, fsynced) and the head fingerprint gauge that
Prometheus keeps. Entries still in `audit:pending` are not protected yet, so chain often.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from sendguard.errors import SendguardError
from sendguard.model import now_ms
from sendguard.state import scripts
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated

GENESIS = "0" * 64
MAX_ENTRY_BYTES = 64 * 1024
MAX_BATCH = 1000
_CHUNK = 1000
# Field names that would carry message content; the trail holds content_hash() instead.
_CONTENT_FIELDS = frozenset({"subject", "text", "html", "body"})
_PENDING_KEYS = frozenset({"at", "kind", "actor", "fields"})
_FIELD_ORDER = ("seq", "at", "kind", "actor", "fields", "prev", "hash")
_ENTRY_KEYS = frozenset(_FIELD_ORDER)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ANCHOR_LINE = re.compile(r"(\d+) ([0-9a-f]{64}) (\d+)")
# What a write cut short by a crash leaves: a beginning of a line, which claims nothing.
_TORN_LINE = re.compile(r"\d*(?: [0-9a-f]{0,64}(?: \d*)?)?")


class AuditError(SendguardError):
    """The audit trail cannot be written or read as it stands (see the message for what to do)."""


def canonical(value: Any) -> str:
    """The one encoding that is hashed and stored: JSON, sorted keys, no spaces, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_hash(value: Any) -> str:
    """SHA-256 hex of the canonical encoding: equal values hash equal whatever their key order."""
    # surrogatepass: a hand-written entry with a lone surrogate escape must hash, not crash verify.
    return hashlib.sha256(canonical(value).encode("utf-8", "surrogatepass")).hexdigest()


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


@dataclass(frozen=True)
class Verification:
    """The outcome of `AuditLog.verify()`.

    `checked` counts the entries found sound before the first problem (all of them when ok).
    `first_broken` is the sequence number, which is also the list position, of the first entry
    that is wrong or missing; None when ok, or when the problem is in the head record or the
    anchor file rather than in an entry. `problem` says what is wrong, in words; "" when ok.
    """

    ok: bool
    checked: int
    first_broken: int | None
    problem: str


def _chained(raw: str) -> AuditEntry | str:
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


def _digest(item: AuditEntry) -> str:
    """The hash an entry must carry: over all its fields but `hash`."""
    body = item.to_dict()
    del body["hash"]
    return canonical_hash(body)


def _from_pending(raw: str, at_ms: int) -> tuple[int, str, str, dict[str, Any]]:
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


def _read_anchor(path: Path) -> dict[int, str] | str | None:
    """seq -> hash from an anchor file; None if there is no file; a problem text if it is bad.

    A line cut short by a crash is skipped: it claims nothing, and the next batch is anchored.
    The file grows by about 90 bytes per chained batch and is read whole. Its last line alone
    pins the whole chain (the hash links pin every entry before it), so it may be compacted to
    its last line; earlier lines only help to say where a rewrite began.
    """
    anchors: dict[int, str] = {}
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                match = _ANCHOR_LINE.fullmatch(line.rstrip("\n"))
                if not match and _TORN_LINE.fullmatch(line.rstrip("\n")):
                    continue
                if not match:
                    return f"anchor file {path} line {number} is not 'seq hash at_ms'"
                seq, digest = int(match[1]), match[2]
                if anchors.setdefault(seq, digest) != digest:
                    return (
                        f"anchor file {path} line {number} records a second, different hash for entry {seq}"
                    )
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read anchor file {path}: {exc}"
    return anchors


def _write_anchor(path: Path, line: str) -> None:
    created = not path.exists()
    with path.open("a+b") as anchor:
        if anchor.tell() > 0:
            anchor.seek(-1, os.SEEK_END)
            if anchor.read(1) != b"\n":  # a line torn by a crash: start afresh after it
                line = "\n" + line
        anchor.write(line.encode("ascii"))
        anchor.flush()
        os.fsync(anchor.fileno())
    if created:  # the new directory entry must survive a crash too
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _texts(record: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(name): _text(value) for name, value in record.items()}


def _name(position: int, seq: int) -> str:
    return f"entry {seq}" if seq == position else f"the entry at position {position} (seq {seq})"


def _broken(checked: int, position: int | None, problem: str) -> Verification:
    return Verification(ok=False, checked=checked, first_broken=position, problem=problem)


class AuditLog:
    """Append, chain, read and verify the audit trail of one deployment (one key prefix).

    `anchor` is this daemon's anchor file (e.g. `audit.anchor` in the data directory), appended
    to after each batch it chains; None writes no anchor.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, anchor: Path | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.anchor = anchor
        self._chain = scripts.register(client, keys, "audit_chain")
        self._lead = scripts.register(client, keys, "audit_lead")
        self._resign = scripts.register(client, keys, "audit_resign")

    # --- writing -----------------------------------------------------------------------------

    async def append(self, kind: str, actor: str, fields: Mapping[str, Any]) -> None:
        """Record one entry (one round trip); it is chained by the next `chain()`."""
        encoded = entry(kind, actor, fields)
        async with translated():
            await self.redis.rpush(self.keys.audit_pending, encoded)

    def stage(self, pipe: Pipeline, kind: str, actor: str, fields: Mapping[str, Any]) -> None:
        """Add the entry to a caller's pipeline or transaction, to commit with the caller's writes."""
        pipe.rpush(self.keys.audit_pending, entry(kind, actor, fields))

    async def chain(self, batch: int = 500) -> int:
        """Chain up to `batch` pending entries; how many were chained.

        0 means nothing was pending or another chainer committed first (call again later).
        Raises AuditError if the head record is missing or malformed while the chain has
        entries: building on it would hide the damage, so chaining waits for a person.
        """
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be between 1 and {MAX_BATCH}")
        k = self.keys
        async with translated(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(k.audit_head)
            pipe.lrange(k.audit_pending, 0, batch - 1)
            raw_head, raw_pending = await pipe.execute()
        head, pending = _texts(raw_head), [_text(raw) for raw in raw_pending]
        if not pending:
            return 0
        seq, prev = self._parse_head(head)
        at_ms = now_ms()
        chained: list[str] = []
        read = hashlib.sha1(usedforsecurity=False)  # only compares what we read with what is there
        for offset, raw in enumerate(pending, 1):
            encoded = raw.encode("utf-8")
            read.update(f"{len(encoded)}:".encode() + encoded)
            at, kind, actor, fields = _from_pending(raw, at_ms)
            body = {
                "seq": seq + offset,
                "at": at,
                "kind": kind,
                "actor": actor,
                "fields": fields,
                "prev": prev,
            }
            prev = canonical_hash(body)
            chained.append(canonical({**body, "hash": prev}))
        new_seq = seq + len(chained)
        expected = [head.get("seq", "0"), head.get("hash", GENESIS)]  # as stored, for the script to compare
        args = [*expected, len(chained), read.hexdigest(), new_seq, prev, *chained]
        # Shielded: a shutdown cancel must not leave a committed batch without its anchor line.
        return await asyncio.shield(self._commit(args, new_seq, prev))

    async def _commit(self, args: list[Any], new_seq: int, new_hash: str) -> int:
        k = self.keys
        async with translated():
            done = int(await self._chain(keys=[k.audit_pending, k.audit_chain, k.audit_head], args=args))
        if done < 0:
            raise AuditError(
                "the audit head record is missing but the chain has entries; chaining stops until "
                "someone looks: run `sendguard audit verify`"
            )
        if done and self.anchor is not None:
            line = f"{new_seq} {new_hash} {now_ms()}\n"
            try:
                await asyncio.to_thread(_write_anchor, self.anchor, line)
            except OSError as exc:
                raise AuditError(
                    f"chained {done} audit entries but could not write {self.anchor}: {exc}"
                ) from exc
        return done

    @staticmethod
    def _parse_head(head: Mapping[str, str]) -> tuple[int, str]:
        if not head:
            return 0, GENESIS
        seq, digest = head.get("seq", ""), head.get("hash", "")
        if not seq.isdigit() or not _HEX64.fullmatch(digest):
            raise AuditError(
                f"the audit head record is malformed ({dict(head)}); chaining stops until someone "
                "looks: run `sendguard audit verify`"
            )
        return int(seq), digest

    async def try_lead(self, owner: str, ttl_ms: int) -> bool:
        """Take or renew the chaining lock for `owner`; True while we hold it."""
        async with translated():
            return bool(await self._lead(keys=[self.keys.audit_lock], args=[owner, ttl_ms]))

    async def resign(self, owner: str) -> bool:
        """Give up the chaining lock if `owner` holds it (at shutdown)."""
        async with translated():
            return bool(await self._resign(keys=[self.keys.audit_lock], args=[owner]))

    # --- reading -----------------------------------------------------------------------------

    async def head(self) -> tuple[int, str]:
        """(seq, hash) of the last chained entry; (0, "0" * 64) for an empty trail."""
        async with translated():
            head = await self.redis.hgetall(self.keys.audit_head)
        return self._parse_head(_texts(head))

    async def pending(self) -> int:
        """Entries written but not chained yet."""
        async with translated():
            return int(await self.redis.llen(self.keys.audit_pending))

    async def iter_entries(self, after_seq: int = 0) -> AsyncIterator[AuditEntry]:
        """Chained entries after `after_seq`, in order, up to the end at the time of the call.

        Raises AuditError at an entry that is not in the entry format (run `verify`).
        """
        async with translated():
            length = int(await self.redis.llen(self.keys.audit_chain))
        start = max(after_seq, 0)
        while start < length:
            chunk = await self._slice(start, min(start + _CHUNK, length))
            if not chunk:
                return
            for position, raw in enumerate(chunk, start + 1):
                item = _chained(raw)
                if isinstance(item, str):
                    raise AuditError(
                        f"audit entry at position {position}: {item}; run `sendguard audit verify`"
                    )
                yield item
            start += len(chunk)

    async def entries(
        self,
        *,
        message_id: str | None = None,
        agent: str | None = None,
        batch: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        after_seq: int = 0,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        """Chained entries matching every filter given, oldest first, at most `limit`.

        `message_id`, `agent` and `batch` match the entry's fields of those names; `since_ms`
        is inclusive and `until_ms` exclusive on `at`. Page with `after_seq` = the last seq seen.
        This is a linear scan of the chain from `after_seq` (in chunks): fine for now, an index
        per message, agent and batch is the next step when the trail grows large. Entries still
        pending are not listed.
        """
        wanted = {
            name: value
            for name, value in (("message_id", message_id), ("agent", agent), ("batch", batch))
            if value is not None
        }
        found: list[AuditEntry] = []
        if limit <= 0:
            return found
        async for item in self.iter_entries(after_seq):
            if since_ms is not None and item.at < since_ms:
                continue
            if until_ms is not None and item.at >= until_ms:
                continue
            if any(item.fields.get(name) != value for name, value in wanted.items()):
                continue
            found.append(item)
            if len(found) >= limit:
                break
        return found

    # --- verifying ---------------------------------------------------------------------------

    async def verify(self, anchor: Path | None = None) -> Verification:
        """Recompute the whole chain and check it against its head record and the anchor file.

        Every entry's hash must match its content, seqs must run 1, 2, 3, ... and every `prev`
        must be the hash of the entry before. With `anchor`, every anchored seq must be in the
        chain with exactly the anchored hash, which is what catches a truncated tail.
        """
        # Read the anchor file before the chain: it only ever lags Redis, so every line must be in it.
        read = await asyncio.to_thread(_read_anchor, anchor) if anchor is not None else {}
        if isinstance(read, str):
            return _broken(0, None, read)
        anchors = read or {}
        k = self.keys
        async with translated(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(k.audit_head)
            pipe.llen(k.audit_chain)
            raw_head, length = await pipe.execute()
        head = _texts(raw_head)
        if read is None and length:
            return _broken(
                0,
                None,
                f"the anchor file {anchor} does not exist (deleted? or this daemon never chained: "
                "verify against the anchor file of the daemon that did)",
            )

        last_seq, last_hash, checked, good_anchor = 0, GENESIS, 0, 0
        for start in range(0, length, _CHUNK):
            chunk = await self._slice(start, min(start + _CHUNK, length))
            for position, raw in enumerate(chunk, start + 1):
                item = _chained(raw)
                if isinstance(item, str):
                    return _broken(
                        checked, position, f"the entry at position {position} is malformed: {item}"
                    )
                name = _name(position, item.seq)
                if _digest(item) != item.hash:
                    return _broken(
                        checked, position, f"{name}: its hash does not match its content (edited?)"
                    )
                if item.seq != last_seq + 1:
                    problem, blamed = await self._misplaced(position, item, last_seq, last_hash, length)
                    return _broken(blamed - 1, blamed, problem)
                if item.prev != last_hash:
                    if await self._vouched(position, item, length, head):
                        # What follows links to this entry, so the one before it is the impostor.
                        return _broken(
                            checked - 1,
                            position - 1,
                            f"entry {last_seq} was replaced: entry {item.seq} links to a different "
                            f"entry {last_seq} (rewritten with a recomputed hash?)",
                        )
                    return _broken(
                        checked,
                        position,
                        f"{name}: its prev does not match the hash of entry {last_seq} (inserted or forged?)",
                    )
                anchored = anchors.get(item.seq)
                if anchored is not None:
                    if anchored != item.hash:
                        return _broken(
                            checked,
                            position,
                            f"entry {item.seq}: its hash differs from the one the anchor file recorded "
                            f"(the chain was rewritten after entry {good_anchor}, the last anchored "
                            "entry that matches)",
                        )
                    good_anchor = item.seq
                last_seq, last_hash, checked = item.seq, item.hash, checked + 1

        if anchors and max(anchors) > last_seq:
            return _broken(
                checked,
                last_seq + 1,
                f"the chain ends at {last_seq} but the anchor file recorded {max(anchors)} (truncated?)",
            )
        return self._check_head(head, last_seq, last_hash, checked)

    @staticmethod
    def _check_head(head: Mapping[str, str], last_seq: int, last_hash: str, checked: int) -> Verification:
        if not head:
            if last_seq:
                return _broken(
                    checked, None, f"the head record is missing but the chain holds {last_seq} entries"
                )
            return Verification(ok=True, checked=0, first_broken=None, problem="")
        seq, digest = head.get("seq", ""), head.get("hash", "")
        if not seq.isdigit() or not _HEX64.fullmatch(digest):
            return _broken(checked, None, f"the head record is malformed: {dict(head)}")
        if int(seq) > last_seq:
            return _broken(
                checked,
                last_seq + 1,
                f"the chain ends at {last_seq} but its head record says {seq} (truncated?)",
            )
        if int(seq) < last_seq:
            return _broken(
                checked,
                int(seq) + 1,
                f"the chain goes on to {last_seq} past its head record at {seq} "
                "(entries added by hand, or the head edited?)",
            )
        if digest != last_hash:
            return _broken(
                checked, None, f"the head record's hash does not match entry {last_seq} (head edited?)"
            )
        return Verification(ok=True, checked=checked, first_broken=None, problem="")

    async def _slice(self, start: int, stop: int) -> list[str]:
        """Chain entries at 0-based indexes start..stop-1."""
        async with translated():
            return [_text(raw) for raw in await self.redis.lrange(self.keys.audit_chain, start, stop - 1)]

    async def _at(self, position: int, length: int) -> AuditEntry | None:
        if position > length:
            return None
        async with translated():
            raw = await self.redis.lindex(self.keys.audit_chain, position - 1)
        item = _chained(_text(raw)) if raw is not None else None
        return item if isinstance(item, AuditEntry) else None

    async def _vouched(self, position: int, item: AuditEntry, length: int, head: Mapping[str, str]) -> bool:
        """Whether what follows an entry links to it: then it is the entry before that was swapped out."""
        after = await self._at(position + 1, length)
        if after is not None:
            return after.prev == item.hash and _digest(after) == after.hash
        return position == length and head.get("hash") == item.hash

    async def _misplaced(
        self, position: int, item: AuditEntry, last_seq: int, last_hash: str, length: int
    ) -> tuple[str, int]:
        """Name a seq out of sequence: (the problem, the position to blame)."""
        if item.seq > last_seq + 1:
            missing = last_seq + 1
            later = await self._find(missing, position + 1, length)
            if later is not None:
                return (
                    f"position {position} holds entry {item.seq} but entry {missing} comes after it, "
                    f"at position {later} (reordered or inserted?)",
                    position,
                )
            gap = (
                f"entry {missing} is" if item.seq == missing + 1 else f"entries {missing}-{item.seq - 1} are"
            )
            return f"entry {item.seq} follows {last_seq}: {gap} missing (deleted?)", position
        if item.seq == last_seq:
            # Two entries claim one seq; the genuine one is the one its successor links to.
            after = await self._at(position + 1, length)
            if after is not None and after.prev == item.hash:
                return (
                    f"entry {item.seq} appears twice, at positions {position - 1} and {position}; "
                    f"the next entry links to the one at {position}, so the one at {position - 1} "
                    "was inserted (forged?)",
                    position - 1,
                )
            if after is not None and after.prev == last_hash:
                return (
                    f"entry {item.seq} appears twice, at positions {position - 1} and {position}; "
                    f"the next entry links to the one at {position - 1}, so the one at {position} "
                    "was inserted (forged?)",
                    position,
                )
        return (
            f"position {position} holds entry {item.seq} after entry {last_seq} (inserted or reordered?)",
            position,
        )

    async def _find(self, seq: int, position: int, length: int) -> int | None:
        """The position of the first entry claiming `seq` from `position` on, if any."""
        for start in range(position - 1, length, _CHUNK):
            chunk = await self._slice(start, min(start + _CHUNK, length))
            for found, raw in enumerate(chunk, start + 1):
                item = _chained(raw)
                if isinstance(item, AuditEntry) and item.seq == seq:
                    return found
        return None
