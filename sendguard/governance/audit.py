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

The entry format is in audit_entries.py and the verifier in audit_verify.py; this module is the
trail's one entry point for the rest of sendguard, so it passes on the names callers need.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from sendguard.errors import StoreError
from sendguard.governance import audit_verify
from sendguard.governance.audit_entries import (
    GENESIS,
    HEX64,
    AuditEntry,
    AuditError,
    anchor_line,
    canonical_hash,
    content_hash,
    decoded,
    decoded_record,
    entry,
    parse_chained,
    parse_pending,
    sealed,
)
from sendguard.governance.audit_verify import CHUNK, Verification
from sendguard.model import now_ms
from sendguard.state import scripts
from sendguard.state.keys import Keys
from sendguard.state.marker import has_lines, last_anchored_seq, last_line
from sendguard.state.redis_connection import translated

MAX_BATCH = 1000

log = logging.getLogger("sendguard.audit")

__all__ = [
    "AnchorAhead",
    "AnchorMissing",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "Verification",
    "canonical_hash",
    "content_hash",
    "entry",
]


def _write_anchor(path: Path, seq: int, digest: str, at_ms: int) -> None:
    created = not path.exists()
    with path.open("a+b") as anchor:
        previous = last_line(anchor)
        line = anchor_line(previous, seq, digest, at_ms) + "\n"
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


class AnchorMissing(AuditError):
    """This daemon's anchor file is gone while the trail has entries: it must not start a new one."""


class AnchorAhead(AnchorMissing):
    """This daemon's anchor file names entries the trail does not reach: it was cut off or wiped."""


class AuditLog:
    """Append, chain, read and verify the audit trail of one deployment (one key prefix).

    `anchor` is this daemon's anchor file (e.g. `audit.anchor` in the data directory), appended
    to after each batch it chains; None writes no anchor.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, anchor: Path | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.anchor = anchor
        self._marked = False  # whether this log has said in Redis that the trail is anchored
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
        entries: building on it would hide the damage, so chaining waits for a person. Raises
        AnchorMissing if this log's anchor file is gone while the trail has entries: starting a
        fresh one would make a cut-off tail invisible, so that too waits for a person.
        """
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be between 1 and {MAX_BATCH}")
        k = self.keys
        async with translated(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(k.audit_head)
            pipe.lrange(k.audit_pending, 0, batch - 1)
            raw_head, raw_pending = await pipe.execute()
        head, pending = decoded_record(raw_head), [decoded(raw) for raw in raw_pending]
        if not pending:
            return 0
        seq, prev = self._parse_head(head)
        await self._check_anchor(seq)
        at_ms = now_ms()
        chained: list[str] = []
        read = hashlib.sha1(usedforsecurity=False)  # only compares what we read with what is there
        for offset, raw in enumerate(pending, 1):
            encoded = raw.encode("utf-8")
            read.update(f"{len(encoded)}:".encode() + encoded)
            at, kind, actor, fields = parse_pending(raw, at_ms)
            prev, line = sealed(seq + offset, at, kind, actor, fields, prev)
            chained.append(line)
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
            try:
                await asyncio.to_thread(_write_anchor, self.anchor, new_seq, new_hash, now_ms())
            except OSError as exc:
                raise AuditError(
                    f"chained {done} audit entries but could not write {self.anchor}: {exc}"
                ) from exc
            try:
                await self._mark_anchored()
            except StoreError as exc:  # the entries are chained and anchored: only the mark waits
                log.warning(
                    "audit trail anchored, not yet marked so in Redis (tried at the next anchor line): %s",
                    exc,
                )
        return done

    async def _mark_anchored(self) -> None:
        """Say in Redis, once a process, that an anchor file holds this trail: from then on a daemon
        whose anchor file is missing over a non-empty trail refuses to chain (see `_may_anchor`)."""
        if not self._marked:
            async with translated():
                await self.redis.set(self.keys.audit_anchored, "1")
            self._marked = True

    @staticmethod
    def _parse_head(head: Mapping[str, str]) -> tuple[int, str]:
        if not head:
            return 0, GENESIS
        seq, digest = head.get("seq", ""), head.get("hash", "")
        if not seq.isdigit() or not HEX64.fullmatch(digest):
            raise AuditError(
                f"the audit head record is malformed ({dict(head)}); chaining stops until someone "
                "looks: run `sendguard audit verify`"
            )
        return int(seq), digest

    async def restart_anchor(self, actor: str, reason: str) -> tuple[int, str]:
        """Start this log's anchor file afresh at the current head, on a person's word.

        Only over a trail that verifies on its own (a cut-off tail cannot be seen without the old
        anchor, so the person vouches for that part), and recorded in the trail itself: an
        auditor sees where the anchor restarted, who did it and why. Returns the head anchored.
        """
        if self.anchor is None:
            raise AuditError("no anchor file to start")
        result = await self.verify(None)
        if not result.ok:
            raise AuditError(
                f"the audit trail does not verify, so no anchor is started over it: {result.problem}"
            )
        await self.append("audit.anchor_restarted", actor, {"reason": reason, "anchor": str(self.anchor)})
        unanchored = AuditLog(self.redis, self.keys)  # the old anchor is gone: no lines until the new one
        while await unanchored.chain(MAX_BATCH):
            pass
        seq, digest = await self.head()
        await asyncio.to_thread(_write_anchor, self.anchor, seq, digest, now_ms())
        await self._mark_anchored()
        return seq, digest

    async def take_up(self) -> bool:
        """Anchor at its head a trail that no daemon has anchored yet (what `sendguard token create`
        chained on a new deployment); whether a line was written.

        Without it such a trail stays unanchored until something else is recorded, and `verify`
        against this daemon's data directory fails, as it must without an anchor line. Only over
        a trail `_may_anchor` allows: never over one another anchor file holds.
        """
        if self.anchor is None or await asyncio.to_thread(has_lines, self.anchor):
            return False
        seq, digest = await self.head()
        if not seq:
            return False
        async with translated():
            if await self.redis.exists(self.keys.audit_anchored):
                return False
        await asyncio.to_thread(_write_anchor, self.anchor, seq, digest, now_ms())
        await self._mark_anchored()
        return True

    async def may_chain(self) -> bool:
        """False while this log's anchor file is gone and the trail has entries, or the file is
        ahead of the trail (see `chain`)."""
        try:
            await self.check_anchor()
        except AnchorMissing:
            return False
        return True

    async def check_anchor(self) -> None:
        """Raise AnchorMissing (or AnchorAhead) when this log must not chain, saying why (see `chain`)."""
        seq, _ = await self.head()
        await self._check_anchor(seq)

    async def _check_anchor(self, seq: int) -> None:
        if not await self._may_anchor(seq):
            raise AnchorMissing(
                f"the audit trail holds {seq} entries but the anchor file {self.anchor} is missing or "
                "empty: this daemon does not chain, since a fresh anchor would hide a cut-off tail. "
                "Restore the anchor, or verify the trail and start a new one with "
                "`sendguard audit restart-anchor --reason ...`"
            )
        anchored = await asyncio.to_thread(last_anchored_seq, self.anchor) if self.anchor else 0
        if anchored <= seq:
            return
        # Behind the head record: the entries themselves say how far the trail goes (a chain whose
        # head record alone is gone is refused by the commit, naming that).
        async with translated():
            length = int(await self.redis.llen(self.keys.audit_chain))
        if anchored > length:
            raise AnchorAhead(
                f"the anchor file {self.anchor} names entry {anchored} but the audit trail ends at {length}: "
                "the trail was cut off or its store wiped. This daemon does not chain, since an anchor "
                "line below the file's last would hide that. Run `sendguard audit verify`; if the store "
                "was wiped, see the README (`sendguard run --accept-empty-store`)"
            )

    async def _may_anchor(self, seq: int) -> bool:
        """Whether this log may chain (and so anchor) over a trail of `seq` entries.

        Its anchor file must hold lines once any anchor does: a missing one may have been deleted,
        and starting it afresh would hide a cut-off tail. Before any daemon anchored (the entries a
        `sendguard token create` chained on a new deployment) there is nothing it could hide.
        """
        if not seq or self.anchor is None or await asyncio.to_thread(has_lines, self.anchor):
            return True
        async with translated():
            return not await self.redis.exists(self.keys.audit_anchored)

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
        return self._parse_head(decoded_record(head))

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
            chunk = await self.raw_entries(start, min(start + CHUNK, length))
            if not chunk:
                return
            for position, raw in enumerate(chunk, start + 1):
                item = parse_chained(raw)
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
        kind: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        after_seq: int = 0,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        """Chained entries matching every filter given, oldest first, at most `limit`.

        `message_id`, `agent` and `batch` match the entry's fields of those names, `kind` its kind;
        `since_ms` is inclusive and `until_ms` exclusive on `at`. Page with `after_seq` = the last seq seen.
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
            if kind is not None and item.kind != kind:
                continue
            if any(item.fields.get(name) != value for name, value in wanted.items()):
                continue
            found.append(item)
            if len(found) >= limit:
                break
        return found

    async def raw_entries(self, start: int, stop: int) -> list[str]:
        """Chain entries at 0-based indexes start..stop-1, as stored."""
        async with translated():
            return [decoded(raw) for raw in await self.redis.lrange(self.keys.audit_chain, start, stop - 1)]

    async def verify(self, anchor: Path | None = None) -> Verification:
        """Recompute the whole chain and check it against its head record and the anchor file."""
        return await audit_verify.verify(self, anchor)
