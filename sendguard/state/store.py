"""The durable message store in Redis: admission, claims, transitions, recovery.

Every change of a message's status goes through one Lua script, so the record, its history,
the due queue and the per-status counts never disagree, even with several daemons on one
Redis. A claim carries an owner token; only its holder can finish the work, and a claim whose
daemon stopped heartbeating, or that its daemon let go of when Redis failed, is recovered, counted
as uncertain if it was mid-send. The scripts are `lua/*.lua`, loaded through scripts.py.

A batch's template is stored once (`keep_template`) and lives as long as the messages that fill
it; every read of a record that names one fills its content in (see record.py).
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import redis.asyncio as aioredis

from sendguard.model import WAITING, Reason, Status, canonical_address, decode_reasons
from sendguard.record import BODY, CONTENT, SCOPE_SOURCES, Changes, MessageRecord, encode, encode_changes
from sendguard.state import scripts
from sendguard.state.keys import Keys
from sendguard.state.marker import StoreMarker
from sendguard.state.redis_connection import translated
from sendguard.state.scripts import ScriptArgs

RETENTION_MS = 30 * 86400 * 1000
CLAIMABLE = (Status.QUEUED, Status.DEFERRED)  # a claimed message starts its send from these
_CLAIMABLE_LIST = ",".join(CLAIMABLE)  # as the start script takes them
IDEMPOTENCY_TTL_MS = 7 * 86400 * 1000  # an idempotency key the agent gave
# Where `Store.message_ids` reads ids: a tripped scope's held set, a mailbox's waiting set, the due
# queue, the claimed messages, or every record (a SCAN).
IdSource = Literal["held", "waiting", "due", "inflight", "all"]
_SCAN_STEP = 500
# How many of its newest messages an agent can list (GET /v1/messages): enough for a run to find
# its own, few enough that the index stays small (about 60 bytes a member).
AGENT_INDEX_SIZE = 1000
# Submissions admitted by one call of the admission script, which does what they share once (Redis'
# time, the agent's index trim, ...): enough to share it, few enough that a call holds Redis up for
# a few milliseconds (about 0.13 ms of its CPU a recipient), as other clients wait while a script runs.
ADMIT_GROUP = 50
_SUBMITTED = "submitted"  # the cause of a message's first history entry, its admission
# The admission script's arguments as JSON: one encoder for all, where json.dumps with options would
# build one per call (a third of the cost of encoding a batch recipient's).
_ARGUMENTS = json.JSONEncoder(ensure_ascii=False)


class Moved(IntEnum):
    """How a transition went; falsy when it did not happen (wrong status, or the claim was lost)."""

    REFUSED = 0
    MOVED = 1
    HELD = 2  # a scope of it is in safe mode: held instead (only at the start of a send)
    SUPPRESSED = 3  # its recipient is suppressed: cancelled instead (only at the start of a send)
    THROTTLED = 4  # a throttle bucket holds it back: queued again for its wait (start of a send only)


@dataclass(frozen=True)
class Idempotency:
    """The key a retry of a submission is answered by: how long it answers (ms), and whether it
    answers a rejection too (the agent's own key) or only an accepted message (a derived one)."""

    key: str
    ms: int
    keeps_rejected: bool


@dataclass(frozen=True)
class Candidate:
    """A submission decided in Python, on its way into the store (suppression, cooldown, approval
    and safe mode are decided atomically with the write).

    `record` is the message as decided, waiting for its `approval` if any; it is due `delay_ms`
    after admission by Redis' clock (a deferred check's wait), and never before its `send_at`.
    """

    record: MessageRecord
    delay_ms: int
    cooldown_ms: int
    idempotency: Idempotency
    # audit.entry(...) with the field "outcome": "@", which lua/admit.lua replaces with the
    # outcome it decides; empty for no entry
    audit_entry: str = ""
    # Checked by the admission script instead of before it (a single message of a tier-0 agent,
    # which costs no round trip of its own that way): the company's reply stop, and the agent's
    # mass-send count, with approval_route's arguments (see Approvals.mass_count).
    check_replied: bool = False
    mass_count: Sequence[Any] = ()
    # (id, hash) of a token recalled from memory (tokens.py `recall`), which the script checks is
    # still there before it writes anything: ("", "") when the token was read from Redis already.
    token: tuple[str, str] = ("", "")


@dataclass(frozen=True)
class Admission:
    """The result of admitting a submission: a new record, or the one an idempotency key names."""

    message_id: str
    status: Status
    reasons: tuple[Reason, ...]
    existing: bool
    held_by: str = ""
    route: str = ""  # the mass-send count's answer when the script made it ("free", "joined", ...)
    approval: str = ""  # the approval request it waits for (or waited for), when the script knows it
    replied_until: int = 0  # a reply stop covers its company until then (ms): nothing was written
    revoked: bool = False  # the recalled token it was checked against is gone: nothing was written


@dataclass(frozen=True)
class Refusable:
    """A recipient to check against shared state: as written, its mailbox, its domain, and whether
    the checks before already refused it."""

    address: str
    mailbox: str
    domain: str
    rejected: bool


@dataclass(frozen=True)
class Claim:
    """A message this daemon holds; only `token`'s holder may move it on.

    `record` is None when the stored hash cannot be read (a hand edit, a bug of an older
    version); `damage` then says why, so the message can be failed instead of sticking.
    """

    message_id: str
    token: str
    record: MessageRecord | None
    damage: str = ""
    now_ms: int = 0  # Redis' clock at the claim, which every daemon shares


@dataclass(frozen=True)
class Settlement:
    """A send's throttle buckets to settle once the relay answered (Buckets.settlement: the windows
    first, then the gaps), the send as they hold it, and whether it may have reached the relay."""

    keys: list[str]
    windows: int
    member: str
    delivered: bool


@dataclass(frozen=True)
class Started:
    """How the start of a send went (`moved`); when THROTTLED, which bucket (0-based, in the
    reservation's order) held it back (the script queued it again for as long as it said)."""

    moved: Moved
    bucket: int = 0


@dataclass(frozen=True)
class NoWork:
    """Nothing is due; `next_due_ms` is when the earliest waiting message is (None: queue empty)."""

    next_due_ms: int | None
    now_ms: int


def decode_counts(raw: str) -> dict[str, int]:
    value = json.loads(raw)
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}


async def _chained(*iterators: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The items of each iterator in turn."""
    for iterator in iterators:
        async for item in iterator:
            yield item


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """A hash as HGETALL gives it inside a script's reply: name, value, name, value, ..."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _flat(changes: Changes | None) -> list[str]:
    """Record fields to set, as a script takes them: name, value, name, value, ..."""
    return [item for pair in encode_changes(changes or {}).items() for item in pair]


def _merge(into: dict[str, int], more: Mapping[str, int]) -> None:
    for state, count in more.items():
        into[state] = into.get(state, 0) + count


@functools.lru_cache(maxsize=1024)
def _scopes_json(scopes: tuple[str, ...]) -> str:
    """A record's scopes as the admission script takes them; cached, as a batch's thousands of
    recipients share a few lists (one a recipient domain)."""
    return encode(scopes)


class Store:
    """Message records and their lifecycle in Redis."""

    def __init__(self, client: aioredis.Redis, keys: Keys, marker: StoreMarker | None = None) -> None:
        self.redis = client
        self.keys = keys
        # The store this daemon started on; claims are made only while Redis still holds its marker.
        self.marker = marker or StoreMarker(client, keys)
        self._admit = scripts.register(client, keys, "admit")
        self._claim = scripts.register(client, keys, "claim")
        self._transition = scripts.register(client, keys, "transition")
        self._start = scripts.register(client, keys, "start")
        self._finish = scripts.register(client, keys, "finish")
        self._together = scripts.GroupCommit(client)
        self._recover = scripts.register(client, keys, "recover")
        self._release_held = scripts.register(client, keys, "release_held")
        self._event_record = scripts.register(client, keys, "event_record")
        self._hold_waiting = scripts.register(client, keys, "hold_waiting")
        self._cancel = scripts.register(client, keys, "cancel")
        self._suppress = scripts.register(client, keys, "suppress")
        self._template_keep = scripts.register(client, keys, "template_keep")
        self._recipient_check = scripts.register(client, keys, "recipient_check")

    async def keep_template(self, batch_id: str, subject: str, text: str, html: str, headers: str) -> None:
        """Store a batch's template once, before its messages; a retry of the batch keeps the first."""
        fields = ["subject", subject, "text", text, "html", html, "headers", headers]
        async with translated():
            await self._template_keep(keys=[self.keys.template(batch_id)], args=[RETENTION_MS, *fields])

    async def admit(self, candidates: Sequence[Candidate]) -> list[Admission]:
        """Write decided submissions, pipelined: a batch of thousands costs a few round trips, and a
        single message shares its round trip with those other requests send in the same turn."""
        async with translated():
            if len(candidates) == 1:
                results = await self._together.run(self._admit, [], self._admit_args(candidates))
            else:
                calls: list[tuple[list[str], list[Any]]] = [
                    ([], self._admit_args(candidates[start : start + ADMIT_GROUP]))
                    for start in range(0, len(candidates), ADMIT_GROUP)
                ]
                results = [
                    result for group in await scripts.run_pipelined(self._admit, calls) for result in group
                ]
            existing = [str(result[1]) for result in results if result[0] == "existing"]
            # Only a retry finds any: a new submission does not pay for the look-up.
            found = (
                dict(zip(existing, await self.records(existing, ("reasons", "approval")), strict=True))
                if existing
                else {}
            )
        admissions = []
        for candidate, result in zip(candidates, results, strict=True):
            if result[0] == "existing":
                stored = found[str(result[1])]
                assert stored is not None  # the script saw it exist
                admissions.append(
                    Admission(stored.id, stored.status, stored.reasons, True, approval=stored.approval)
                )
            elif result[0] == "revoked":
                record = candidate.record
                admissions.append(Admission(record.id, record.status, (), False, revoked=True))
            elif result[0] == "capped":  # nothing written: it needs a request past its agent's cap
                record = candidate.record
                admissions.append(Admission(record.id, record.status, (), False, route="capped"))
            elif result[0] == "replied":
                record, stopped = candidate.record, int(result[1])
                admissions.append(Admission(record.id, record.status, (), False, replied_until=stopped))
            else:
                status, reasons = Status(result[1]), tuple(decode_reasons(result[2]))
                held_by, route, approval = (str(value) for value in result[3:6])
                admissions.append(
                    Admission(candidate.record.id, status, reasons, False, held_by, route, approval)
                )
        return admissions

    async def answered_approval(self, agent: str, idempotency_key: str) -> str | None:
        """The approval request the message `idempotency_key` already names waits or waited for
        ('' for none); None when it names no message (none yet, or gone). A retry's request is
        looked up before another is opened for it."""
        async with translated():
            message_id = await self.redis.get(self.keys.idempotency(agent, idempotency_key))
        if message_id is None:
            return None
        [record] = await self.records([str(message_id)], ("approval",))
        return None if record is None else record.approval

    async def answered(self, agent: str, idempotency_keys: Sequence[str]) -> list[bool]:
        """For each of `agent`'s idempotency keys, whether a message answers it already: the
        recipients of a batch's retry that its first attempt admitted."""
        found: list[bool] = []
        for start in range(0, len(idempotency_keys), _SCAN_STEP):
            chunk = [
                self.keys.idempotency(agent, key) for key in idempotency_keys[start : start + _SCAN_STEP]
            ]
            async with translated():
                found += [value is not None for value in await self.redis.mget(chunk)]
        return found

    def _admit_args(self, candidates: Sequence[Candidate]) -> list[Any]:
        """The admission script's arguments for `candidates`: one JSON list of their arguments."""
        return [_ARGUMENTS.encode([self._arguments(candidate) for candidate in candidates])]

    def _arguments(self, candidate: Candidate) -> list[Any]:
        """One submission's arguments to the admission script, each value as redis-py would have
        sent it on its own (a string), the record's fields as objects (see lua/admit.lua)."""
        record = candidate.record
        # A rejected message keeps no content: the script leaves it out if it rejects one too.
        content = record.content_fields() if record.status is not Status.REJECTED else {}
        body = record.body() if record.status is not Status.REJECTED else ""
        send_at = int(record.send_at.timestamp() * 1000) if record.send_at else 0
        return [
            record.id,
            record.status.value,
            encode(record.reasons),
            str(candidate.delay_ms),
            str(candidate.cooldown_ms),
            candidate.idempotency.key,
            str(candidate.idempotency.ms),
            "1" if candidate.idempotency.keeps_rejected else "0",
            str(RETENTION_MS),
            _scopes_json(record.scopes),
            record.approval,
            candidate.audit_entry,
            str(send_at),
            str(AGENT_INDEX_SIZE),
            record.to_fields(),
            content,
            "1" if candidate.check_replied else "0",
            [str(value) for value in candidate.mass_count],
            body,
            *candidate.token,
        ]

    async def refusals(self, recipients: Sequence[Refusable], cooldown: bool) -> list[list[Reason]]:
        """What admission would add to each recipient's reasons from shared state (suppression, and
        the cooldown unless it is already refused), read by the same script code, writing nothing."""
        args: list[str] = ["1" if cooldown else "0"]
        for recipient in recipients:
            rejected = "1" if recipient.rejected else "0"
            args += [recipient.address, recipient.mailbox, recipient.domain, rejected]
        async with translated():
            found = await self._recipient_check(keys=[], args=args) if recipients else []
        return [decode_reasons(str(reasons)) for reasons in found]

    async def agent_messages(self, agent: str, offset: int, count: int) -> list[str]:
        """Ids of an agent's messages, newest first, `count` from `offset` (its newest
        AGENT_INDEX_SIZE within the record retention, some possibly expired since)."""
        async with translated():
            found = await self.redis.zrevrange(self.keys.agent_messages(agent), offset, offset + count - 1)
        return [str(message_id) for message_id in found]

    async def claim(self, owner: str, tokens: Sequence[str]) -> list[Claim] | NoWork:
        """Claim up to one due message per token, first due first, in one round trip.

        Nothing, once the store is not the one this daemon started on (its marker is gone or
        changed, state/marker.py): a wiped store has lost the trips and suppressions.
        """
        k = self.keys
        if self.marker.lost:
            return NoWork(None, 0)
        async with translated():
            result = await self._claim(keys=[k.due, k.inflight], args=[owner, self.marker.value, *tokens])
        now = int(result[0])
        if result[1] == "wiped":
            self.marker.gone("the store's marker is gone or changed (found by a claim)")
            return NoWork(None, now)
        if len(result) == 2:
            return NoWork(int(float(result[1])) if result[1] else None, now)
        claims = []
        for message_id, token, flat, template, content in result[2:]:
            try:
                record = MessageRecord.from_hash(
                    message_id, _pairs(flat), _pairs(template), content, to_send=True
                )
            except (KeyError, TypeError, ValueError) as exc:
                claims.append(Claim(message_id, token, None, f"{type(exc).__name__}: {exc}", now))
            else:
                claims.append(Claim(message_id, token, record, now_ms=now))
        return claims

    async def transition(
        self,
        message_id: str,
        *,
        to: Status | None,
        cause: str = "",
        detail: str = "",
        claim: str = "",
        allowed_from: Iterable[Status] = (),
        delay_ms: int | None = None,
        keep_claim: bool = False,
        changes: Changes | None = None,
        mailbox: str = "-",
        audit_entry: str = "",
        activity: Sequence[str] = (),
    ) -> Moved:
        """Move a message on; `Moved.REFUSED` (falsy) when it was not in an allowed status or the
        claim was lost.

        `mailbox` (the recipient's canonical address) names the cooldown a cancellation gives back,
        if this message holds it.
        `audit_entry` (see audit.entry) is appended to the audit trail in the same script, so the
        trail cannot miss a transition that happened. `activity` names the fields counted in the
        agent's hourly activity (`sent`, `rejected:<code>`, ...) if the message moves, in the same script.
        """
        args: list[Any] = [
            message_id,
            claim,
            ",".join(allowed_from),
            to.value if to else "",
            cause,
            detail,
            -1 if delay_ms is None else delay_ms,
            "1" if keep_claim else "0",
            RETENTION_MS,
            mailbox,
            audit_entry,
            json.dumps(list(activity)),
            *_flat(changes),
        ]
        async with translated():
            result = await self._transition(keys=[], args=args)
        return Moved(int(result[0]))

    async def start(
        self,
        claim: Claim,
        detail: str,
        changes: Changes,
        suppressed_entry: str,
        reservation: ScriptArgs,
        waits: Sequence[str],
    ) -> Started:
        """Start the send of a claimed message, the last step before the relay, in one script.

        Cancelled instead when a suppression entry covers its recipient (`Moved.SUPPRESSED`;
        `suppressed_entry` is its audit entry, with "outcome": "@" for the entry that matched), held
        when a scope of it is in safe mode (`Moved.HELD`), queued again when a throttle bucket of
        `reservation` (Throttles.reservation) holds it back (`Moved.THROTTLED`, its record then
        waiting for that bucket's entry of `waits`); otherwise its buckets are reserved and it is
        `sending` with `changes`. Checked where the send starts, so once a suppression or a trip is
        recorded no new send to it starts, however the message got this far. Calls made together
        share a round trip.
        """
        args: list[Any] = [
            claim.message_id,
            claim.token,
            _CLAIMABLE_LIST,
            detail,
            RETENTION_MS,
            suppressed_entry,
            ",".join(waits),
            len(reservation.args),
            *reservation.args,
            *_flat(changes),
        ]
        async with translated():
            result = await self._together.run(self._start, reservation.keys, args)
        moved = Moved(int(result[0]))
        if moved is Moved.THROTTLED:
            return Started(moved, bucket=int(result[2]) - 1)
        return Started(moved)

    async def finish(
        self,
        claim: Claim,
        *,
        to: Status,
        cause: str,
        detail: str,
        delay_ms: int | None,
        changes: Changes,
        audit_entry: str,
        activity: Sequence[str],
        settle: Settlement,
        signal: ScriptArgs | None,
    ) -> Moved:
        """Record the relay's answer to a send in one script: settle its throttle buckets, move it
        from `sending` to `to` (queued again after `delay_ms` if given) with `changes`, its audit
        entry and the agent's `activity`, and when it moved, count
        `signal` (Signals.call) in the same step. Safe to repeat after a lost reply: the buckets
        settle alike, the move is refused, and nothing counts twice. Calls made together share a
        round trip.
        """
        signal = signal or ScriptArgs([], [])
        args: list[Any] = [
            len(settle.keys),
            settle.windows,
            settle.member,
            "1" if settle.delivered else "0",
            claim.message_id,
            claim.token,
            Status.SENDING.value,
            to.value,
            cause,
            detail,
            -1 if delay_ms is None else delay_ms,
            RETENTION_MS,
            audit_entry,
            json.dumps(list(activity)),
            len(signal.args),
            *signal.args,
            *_flat(changes),
        ]
        async with translated():
            result = await self._together.run(self._finish, [*settle.keys, *signal.keys], args)
        return Moved(int(result[0]))

    async def release(self, scope: str, detail: str, batch: int = 500) -> tuple[int, int]:
        """Put the messages a scope's trip held back in the queue; (released, held by another trip).

        The trip must already be gone (the resume released the first batch). Messages still in
        another tripped scope move to its set.
        """
        released = still = 0
        while True:
            async with translated():
                done, other, left = await self._release_held(args=[scope, batch, detail])
            released, still = released + int(done), still + int(other)
            if not int(left):
                return released, still

    async def hold_waiting(self, scope: str) -> int:
        """Hold every queued message of a freshly tripped scope now, not only when it comes due.

        Claims and the start of a send check the trips anyway; this keeps the states honest
        for people looking at them.
        """
        cursor, held = "0", 0
        while True:
            async with translated():
                cursor, found = await self._hold_waiting(keys=[self.keys.due], args=[scope, cursor])
            held += int(found)
            if str(cursor) == "0":
                return held

    async def recall(
        self, filters: Mapping[str, str], detail: str, cause: str = "recalled"
    ) -> dict[str, int]:
        """Cancel every waiting message whose record fields equal all `filters`; counts by state.

        Messages already `sending` are in the relay's hands and cannot be called back.
        """
        counts: dict[str, int] = {}
        async for ids in self._waiting_ids():
            _merge(counts, await self.cancel(ids, cause, detail, filters))
        return counts

    async def sweep_suppressed(self, cause: str, detail: str) -> dict[str, int]:
        """Cancel every waiting message that a suppression entry covers; counts by state.

        For a new domain entry, which covers recipients at every subdomain of it: a walk of the
        waiting messages finds them without an index per parent domain. Mailboxes have their own
        index (`suppress`). A message that is `sending` is stopped at its next attempt, if any.
        """
        counts: dict[str, int] = {}
        async for ids in self._waiting_ids():
            _merge(counts, await self.cancel(ids, cause, detail, only_suppressed=True))
        return counts

    async def _waiting_ids(self, batch: int = 500) -> AsyncIterator[list[str]]:
        """The ids of every waiting message, `batch` at a time (a message may come twice)."""
        k = self.keys
        async with translated():
            # Waiting messages are in the due queue, claimed, in a held set or in an approval
            # request's set.
            waiting_sets = [key async for key in self.redis.scan_iter(match=k.held("*"), count=batch)]
            waiting_sets += [
                key async for key in self.redis.scan_iter(match=k.approval_messages("*"), count=batch)
            ]
            sources = [self.redis.zscan_iter(key, count=batch) for key in (k.due, k.inflight)]
            sources += [self.redis.sscan_iter(key, count=batch) for key in waiting_sets]
            for source in sources:
                ids: list[str] = []
                async for item in source:
                    ids.append(str(item[0] if isinstance(item, tuple) else item))
                    if len(ids) >= batch:
                        yield ids
                        ids = []
                if ids:
                    yield ids

    async def cancel(
        self,
        ids: list[str],
        cause: str,
        detail: str,
        filters: Mapping[str, str] | None = None,
        *,
        only_suppressed: bool = False,
    ) -> dict[str, int]:
        """Cancel those of `ids` still waiting (and matching `filters`, and covered by a
        suppression entry if `only_suppressed`), 500 a script; counts by state.

        `cause` becomes the reason code; the detail says why, for people.
        """
        counts: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            args: list[str | int] = [
                json.dumps(dict(filters or {})),
                RETENTION_MS,
                cause,
                detail,
                "1" if only_suppressed else "0",
            ]
            async with translated():
                found = await self._cancel(keys=[], args=[*args, *ids[start : start + 500]])
            _merge(counts, decode_counts(found))
        return counts

    async def suppress(
        self, mailboxes: Sequence[str], domains: Sequence[str], cause: str, detail: str, audit_entry: str
    ) -> tuple[int, int]:
        """Add suppression entries and cancel, in the same script, every message still waiting for
        one of the mailboxes (canonical addresses), whatever its due time; (new entries, cancelled).

        `audit_entry` ('' for none) gets "outcome": "@" replaced by the two counts. Domains are
        only added: `sweep_suppressed` finds their messages.
        """
        async with translated():
            new, cancelled = await self._suppress(
                keys=[],
                args=[cause, detail, RETENTION_MS, audit_entry, len(mailboxes), *mailboxes, *domains],
            )
        return int(new), int(cancelled)

    async def event_recorded(self, message_id: str, effect: str) -> bool:
        """Whether an event of `effect` (its kind, what it means and its proof) is recorded on the
        message already: a replay, which does nothing again."""
        async with translated():
            return bool(await self.redis.sismember(self.keys.events(message_id), effect))

    async def record_event(self, message_id: str, effect: str, cause: str, detail: str, entry: str) -> bool:
        """Record an event on its message, its history line and its audit `entry` (governance/audit.py
        `entry`) in one step, unless one of `effect` is recorded already; whether it was written now."""
        k = self.keys
        async with translated():
            written = await self._event_record(
                keys=[k.events(message_id), k.msg(message_id), k.hist(message_id)],
                args=[effect, RETENTION_MS, cause, detail, entry],
            )
        return bool(written)

    async def last_sent(self, address: str) -> str | None:
        """The id of the last message sent to an address (recorded with its `sent` signal)."""
        async with translated():
            found = await self.redis.get(self.keys.last_sent(address))
        return str(found) if found else None

    async def recipient_messages(self, address: str) -> list[str]:
        """Ids of the messages still waiting for the mailbox of an address (case and +tag aside)."""
        mailbox = canonical_address(address)
        async with translated(), self.redis.pipeline(transaction=False) as pipe:
            pipe.hkeys(self.keys.waiting(mailbox))
            pipe.smembers(self.keys.waiting_legacy(mailbox))
            ids, legacy = await pipe.execute()
        return sorted({str(member) for member in [*ids, *legacy]})

    async def held_counts(self, scopes: Sequence[str]) -> dict[str, int]:
        """How many messages each scope's trip holds now."""
        async with translated(), self.redis.pipeline(transaction=False) as pipe:
            for scope in scopes:
                pipe.scard(self.keys.held(scope))
            counts = await pipe.execute() if scopes else []
        return {scope: int(count) for scope, count in zip(scopes, counts, strict=True)}

    async def message_ids(self, source: IdSource, value: str = "", *, cap: int) -> tuple[list[str], bool]:
        """Message ids from one place, examining at most `cap` entries; (ids, whether it was all).

        `value` names the held scope or the mailbox. For "all", `cap` bounds the keys the SCAN
        walks, not only the records it finds, so the work stays bounded whatever else Redis holds.
        """
        k = self.keys
        if source == "all":
            return await self._scan_records(cap)
        items: AsyncIterator[Any]
        if source == "held":
            items = self.redis.sscan_iter(k.held(value), count=_SCAN_STEP)
        elif source == "waiting":
            items = _chained(
                self.redis.hscan_iter(k.waiting(canonical_address(value)), count=_SCAN_STEP),
                self.redis.sscan_iter(k.waiting_legacy(canonical_address(value)), count=_SCAN_STEP),
            )
        else:
            items = self.redis.zscan_iter(k.due if source == "due" else k.inflight, count=_SCAN_STEP)
        ids: dict[str, None] = {}  # a SCAN may return an id twice
        examined = 0
        async with translated():
            async for item in items:
                if examined >= cap:
                    return list(ids), False
                examined += 1
                ids[str(item[0] if isinstance(item, tuple) else item)] = None
        return list(ids), True

    async def _scan_records(self, cap: int) -> tuple[list[str], bool]:
        start = len(self.keys.msg(""))
        ids: dict[str, None] = {}
        cursor, walked = 0, 0
        async with translated():
            while walked < cap:
                cursor, found = await self.redis.scan(cursor, match=self.keys.msg("*"), count=_SCAN_STEP)
                walked += _SCAN_STEP
                ids.update((str(key)[start:], None) for key in found)
                if int(cursor) == 0:
                    return list(ids), True
        return list(ids), False

    async def recover(
        self, own: str = "", live: Iterable[str] = (), unsent: Iterable[str] = (), limit: int = 1000
    ) -> tuple[int, int]:
        """Requeue messages whose daemon died; returns (recovered, of which uncertain).

        With `own`, also that daemon's claims other than `live`: ones its deliveries let go of when
        Redis failed under them, which nobody else would recover while it goes on heartbeating;
        of those, the claims in `unsent` never reached the relay, so they are not uncertain even
        if their send had started. Only the daemon's claim loop may ask, between claims, or it could
        take a claim being made.
        """
        k = self.keys
        live, unsent = list(live), list(unsent)
        async with translated():
            result = await self._recover(
                keys=[k.inflight, k.due, k.count, k.stats], args=[limit, own, len(live), *live, *unsent]
            )
        return int(result[0]), int(result[1])

    async def heartbeat(self, instance: str, ttl_ms: int) -> None:
        async with translated():
            await self.redis.set(self.keys.instance(instance), "1", px=ttl_ms)

    async def forget_instance(self, instance: str) -> None:
        async with translated():
            await self.redis.delete(self.keys.instance(instance))

    async def record(self, message_id: str) -> MessageRecord | None:
        """The message record alone, without its history."""
        return (await self.whole_records([message_id]))[0]

    async def whole_records(self, ids: Sequence[str]) -> list[MessageRecord | None]:
        """The whole records of `ids` (None: gone), without their histories, in one round trip."""
        if not ids:
            return []
        async with translated(), self.redis.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.hgetall(self.keys.msg(message_id))
                pipe.get(self.keys.content(message_id))
            answers = await pipe.execute()
        hashes, contents = answers[::2], answers[1::2]
        found = [n for n, record in enumerate(hashes) if record]
        filled = iter(
            await self._filled(
                [ids[n] for n in found], [hashes[n] for n in found], [contents[n] for n in found]
            )
        )
        return [next(filled) if record else None for record in hashes]

    async def records(self, ids: Sequence[str], only: Sequence[str]) -> list[MessageRecord | None]:
        """The records of `ids` (None: gone), in one round trip, with only the fields named in
        `only` read (besides status); the rest keep their defaults.

        For readers of many records that need a few fields, not the bodies (a content field named
        in `only` costs a second round trip for the templates it is filled from).
        """
        names = ["status", *only]
        if "scopes" in only:  # a record without the field has them in these (record.derived_scopes)
            names += [name for name in SCOPE_SOURCES if name not in names]
        if "to_canonical" in only and "to" not in names:  # a record without it has it in `to`
            names.append("to")
        if set(only) & set(CONTENT):
            names += ["template", "values"]
        content = bool(set(only) & set(BODY))
        async with translated(), self.redis.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.hmget(self.keys.msg(message_id), names)
                if content:
                    pipe.get(self.keys.content(message_id))
            answers = await pipe.execute() if ids else []
        step = 2 if content else 1
        rows, contents = answers[::step], answers[1::step] if content else [None] * len(ids)
        present, found, own = [], [], []
        for message_id, row, text in zip(ids, rows, contents, strict=True):
            if row[0] is not None:
                fields = {name: value for name, value in zip(names, row, strict=True) if value is not None}
                if "scopes" not in only:
                    fields["scopes"] = "[]"  # not read: left at its default, not derived from nothing
                present.append(message_id)
                found.append(fields)
                own.append(text)
        filled = iter(await self._filled(present, found, own))
        return [next(filled) if row[0] is not None else None for row in rows]

    async def get(self, message_id: str) -> tuple[MessageRecord, list[dict[str, Any]]] | None:
        k = self.keys
        async with translated(), self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.msg(message_id))
            pipe.get(k.content(message_id))
            pipe.lrange(k.hist(message_id), 0, -1)
            record, content, history = await pipe.execute()
        if not record:
            return None
        [filled] = await self._filled([message_id], [record], [content])
        entries = [json.loads(entry) for entry in history]
        if not entries or entries[0]["cause"] != _SUBMITTED:
            # Queued with nothing to say: admission wrote no entry for it (lua/admit.lua).
            implied = {"at": filled.created, "status": Status.QUEUED.value, "cause": _SUBMITTED, "detail": ""}
            entries.insert(0, implied)
        return filled, entries

    async def _filled(
        self, ids: Sequence[str], hashes: Sequence[Mapping[str, str]], contents: Sequence[str | None]
    ) -> list[MessageRecord]:
        """Records `ids` from their hashes and their own content (keys.py `content`; None where there is
        none), each filled from its batch's template (one round trip for all the templates they
        name, none when they name none)."""
        batches = sorted({name for fields in hashes if (name := fields.get("template"))})
        templates: dict[str, dict[str, str]] = {}
        if batches:
            async with translated(), self.redis.pipeline(transaction=False) as pipe:
                for batch in batches:
                    pipe.hgetall(self.keys.template(batch))
                templates = dict(zip(batches, await pipe.execute(), strict=True))
        return [
            MessageRecord.from_hash(
                message_id, fields, templates.get(fields.get("template", "")), content or ""
            )
            for message_id, fields, content in zip(ids, hashes, contents, strict=True)
        ]

    async def waiting_counts(self) -> dict[str, int]:
        async with translated():
            raw = await self.redis.hgetall(self.keys.count)
        return {status.value: int(raw.get(status.value, 0)) for status in WAITING}
