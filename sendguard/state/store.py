"""The durable message store in Redis: admission, claims, transitions, recovery.

Every change of a message's status goes through one Lua script, so the record, its history,
the due queue and the per-status counts never disagree, even with several daemons on one
Redis. A claim carries an owner token; only its holder can finish the work, and a claim whose
daemon stopped heartbeating, or that its daemon let go of when Redis failed, is recovered, counted
as uncertain if it was mid-send.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import redis.asyncio as aioredis

from sendguard.model import WAITING, Reason, Status, decode_reasons, now_ms
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated

RETENTION_MS = 30 * 86400 * 1000
IDEMPOTENCY_TTL_MS = 7 * 86400 * 1000


_LUA_STATUS_SETS = f"""
local WAITING = {{{", ".join(f"['{s}']=true" for s in WAITING)}}}
local TERMINAL = {{{", ".join(f"['{s}']=true" for s in Status if s not in WAITING)}}}
local function history(key, at, status, cause, detail)
  redis.call('RPUSH', key, cjson.encode({{at=at, status=status, cause=cause, detail=detail}}))
end
"""
# Safe mode, shared by admission, claims and the start of a send: a message whose scopes
# include a tripped one is held in that scope's set instead of going on.
_LUA_SAFE_MODE = """
local function tripped(prefix, scopes)
  if not scopes or scopes == '' then return nil end
  local list = cjson.decode(scopes)
  if #list == 0 then return nil end
  local found = redis.call('HMGET', prefix .. ':trips', unpack(list))
  for i = 1, #list do
    if found[i] then return list[i] end
  end
  return nil
end
local function hold(prefix, id, scope, at, from)
  local key = prefix .. ':msg:' .. id
  redis.call('HSET', key, 'status', 'held', 'held_by', scope)
  redis.call('HDEL', key, 'claim', 'owner')
  redis.call('ZREM', prefix .. ':inflight', id)
  redis.call('ZREM', prefix .. ':due', id)
  redis.call('SADD', prefix .. ':held:' .. scope, id)
  if from then redis.call('HINCRBY', prefix .. ':count', from, -1) end
  redis.call('HINCRBY', prefix .. ':count', 'held', 1)
  history(prefix .. ':hist:' .. id, at, 'held', 'safe_mode',
    'scope ' .. scope .. ' is in safe mode; held until a person resumes it')
end
"""

# A submission's audit entry carries this key-value pair where the outcome goes; the admission
# script replaces it with the status, reason codes and holding scope it decided.
AUDIT_OUTCOME = '"outcome":"@"'

_ADMIT = (
    _LUA_STATUS_SETS
    + _LUA_SAFE_MODE
    + f"local AUDIT_OUTCOME = '{AUDIT_OUTCOME}'\n"
    + """
-- KEYS: msg hist due count idem cooldown supp_addr supp_dom rcpt
-- ARGV: id now status reasons due cooldown_ms address domain idem_ttl use_idem retention prefix scopes
--       approval audit fields...
if ARGV[10] == '1' then
  local existing = redis.call('GET', KEYS[5])
  if existing and redis.call('EXISTS', KEYS[1]:sub(1, -#ARGV[1] - 1) .. existing) == 1 then
    return {'existing', existing}
  end
end
local status = ARGV[3]
local reasons = cjson.decode(ARGV[4])
if redis.call('SISMEMBER', KEYS[7], ARGV[7]) == 1 or redis.call('SISMEMBER', KEYS[8], ARGV[8]) == 1 then
  table.insert(reasons, {code='suppressed', detail='the recipient is on the suppression list'})
  status = 'rejected'
end
if status ~= 'rejected' and tonumber(ARGV[6]) > 0 then
  if not redis.call('SET', KEYS[6], ARGV[1], 'NX', 'PX', ARGV[6]) then
    table.insert(reasons, {code='recipient_cooldown',
      detail='the recipient already has message ' .. redis.call('GET', KEYS[6]) .. ' within the cooldown'})
    status = 'rejected'
  end
end
local encoded = '[]'
if #reasons > 0 then encoded = cjson.encode(reasons) end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'status', status, 'reasons', encoded,
  'created', ARGV[2], 'attempts', '0', 'scopes', ARGV[13], unpack(ARGV, 16))
local detail = ''
if #reasons > 0 then detail = reasons[1].code end
history(KEYS[2], tonumber(ARGV[2]), status, 'submitted', detail)
local held_by = ''
if WAITING[status] then
  redis.call('SADD', KEYS[9], ARGV[1])
  redis.call('PEXPIRE', KEYS[9], ARGV[11])
  local scope = ARGV[14] == '' and tripped(ARGV[12], ARGV[13])
  if ARGV[14] ~= '' then
    -- Waits for people; safe mode is checked again when it is approved and claimed.
    status = 'pending_approval'
    redis.call('HSET', KEYS[1], 'status', status, 'approval', ARGV[14])
    redis.call('SADD', ARGV[12] .. ':appr:' .. ARGV[14] .. ':msgs', ARGV[1])
    redis.call('HINCRBY', KEYS[4], status, 1)
    history(KEYS[2], tonumber(ARGV[2]), status, 'approval_required', 'approval request ' .. ARGV[14])
  elseif scope then
    hold(ARGV[12], ARGV[1], scope, tonumber(ARGV[2]), nil)
    status, held_by = 'held', scope
  else
    redis.call('HINCRBY', KEYS[4], status, 1)
    redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
  end
else
  redis.call('PEXPIRE', KEYS[1], ARGV[11])
  redis.call('PEXPIRE', KEYS[2], ARGV[11])
end
if ARGV[10] == '1' then redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[9]) end
if ARGV[15] ~= '' then
  -- The decision enters the audit trail in the same step: its placeholder becomes the outcome.
  local codes = {}
  for i, r in ipairs(reasons) do codes[i] = r.code end
  local outcome = '"status":' .. cjson.encode(status) .. ',"reasons":' ..
    (#codes > 0 and cjson.encode(codes) or '[]') .. ',"held_by":' ..
    (held_by ~= '' and cjson.encode(held_by) or 'null')
  local at, upto = string.find(ARGV[15], AUDIT_OUTCOME, 1, true)
  local trail = ARGV[15]:sub(1, at - 1) .. outcome .. ARGV[15]:sub(upto + 1)
  redis.call('RPUSH', ARGV[12] .. ':audit:pending', trail)
end
return {'new', status, encoded, held_by}
"""
)

_CLAIM = (
    _LUA_STATUS_SETS
    + _LUA_SAFE_MODE
    + """
-- KEYS: due inflight; ARGV: owner claim prefix
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
-- Messages of tripped scopes met on the way are held, so a trip costs no claim per message.
for _ = 1, 32 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
  if #ids == 0 then
    local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'', tostring(nxt[2] or ''), tostring(now)}
  end
  local id = ids[1]
  local key = ARGV[3] .. ':msg:' .. id
  redis.call('ZREM', KEYS[1], id)
  local cur = redis.call('HMGET', key, 'status', 'scopes')
  if cur[1] then
    local scope = tripped(ARGV[3], cur[2])
    if not scope then
      redis.call('ZADD', KEYS[2], now, id)
      redis.call('HSET', key, 'owner', ARGV[1], 'claim', ARGV[2])
      return {id, '', tostring(now), redis.call('HGETALL', key)}
    end
    hold(ARGV[3], id, scope, now, cur[1])
  end
end
return {'', '0', tostring(now)}
"""
)

_TRANSITION = (
    _LUA_STATUS_SETS
    + _LUA_SAFE_MODE
    + """
-- KEYS: msg hist due inflight count cooldown
-- ARGV: id now claim allowed_from new_status cause detail due keep_claim retention prefix hold audit
--       fields...
local cur = redis.call('HMGET', KEYS[1], 'status', 'claim', 'scopes')
if not cur[1] then return {0, ''} end
if ARGV[3] ~= '' and cur[2] ~= ARGV[3] then return {0, cur[1]} end
if ARGV[4] ~= '' and not string.find(',' .. ARGV[4] .. ',', ',' .. cur[1] .. ',', 1, true) then
  return {0, cur[1]}
end
if ARGV[12] == '1' then
  local scope = tripped(ARGV[11], cur[3])
  if scope then
    hold(ARGV[11], ARGV[1], scope, tonumber(ARGV[2]), cur[1])
    return {2, scope}
  end
end
if #ARGV > 13 then redis.call('HSET', KEYS[1], unpack(ARGV, 14)) end
if ARGV[13] ~= '' then redis.call('RPUSH', ARGV[11] .. ':audit:pending', ARGV[13]) end
local new = ARGV[5]
if new == '' then new = cur[1] end
if new ~= cur[1] then
  redis.call('HSET', KEYS[1], 'status', new)
  if WAITING[cur[1]] then redis.call('HINCRBY', KEYS[5], cur[1], -1) end
  if WAITING[new] then redis.call('HINCRBY', KEYS[5], new, 1) end
end
if ARGV[6] ~= '' then history(KEYS[2], tonumber(ARGV[2]), new, ARGV[6], ARGV[7]) end
if ARGV[9] ~= '1' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[1], 'claim', 'owner')
end
redis.call('ZREM', KEYS[3], ARGV[1])
if tonumber(ARGV[8]) >= 0 then redis.call('ZADD', KEYS[3], ARGV[8], ARGV[1]) end
if TERMINAL[new] then
  redis.call('PEXPIRE', KEYS[1], ARGV[10])
  redis.call('PEXPIRE', KEYS[2], ARGV[10])
  if new == 'cancelled' and redis.call('GET', KEYS[6]) == ARGV[1] then redis.call('DEL', KEYS[6]) end
end
return {1, cur[1]}
"""
)

_RECOVER = (
    _LUA_STATUS_SETS
    + """
-- KEYS: inflight due count stats; ARGV: now prefix limit own_instance, then own live claims
local live = {}
for i = 5, #ARGV do live[ARGV[i]] = true end
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
local recovered, uncertain = 0, 0
for _, id in ipairs(ids) do
  local key = ARGV[2] .. ':msg:' .. id
  local cur = redis.call('HMGET', key, 'owner', 'claim')
  local owner, lost = cur[1], false
  if owner == ARGV[4] then
    lost = not live[cur[2]]
  else
    lost = not owner or redis.call('EXISTS', ARGV[2] .. ':inst:' .. owner) == 0
  end
  if lost then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', key, 'claim', 'owner')
    local status = redis.call('HGET', key, 'status')
    if status == 'sending' then
      uncertain = uncertain + 1
      redis.call('HSET', key, 'status', 'queued')
      redis.call('HINCRBY', key, 'uncertain', 1)
      redis.call('HINCRBY', KEYS[3], 'sending', -1)
      redis.call('HINCRBY', KEYS[3], 'queued', 1)
      redis.call('HINCRBY', KEYS[4], 'uncertain', 1)
      history(ARGV[2] .. ':hist:' .. id, tonumber(ARGV[1]), 'queued', 'recovered',
        'the daemon sending it stopped or lost Redis mid-send; it may have been delivered and is retried')
      status = 'queued'
    end
    if WAITING[status] then
      redis.call('ZADD', KEYS[2], ARGV[1], id)
      recovered = recovered + 1
    end
  end
end
return {recovered, uncertain}
"""
)

_RELEASE = (
    _LUA_STATUS_SETS
    + _LUA_SAFE_MODE
    + """
-- KEYS: held due count; ARGV: scope prefix now limit detail
local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[4]))
local released, still = 0, 0
for _, id in ipairs(ids) do
  local key = ARGV[2] .. ':msg:' .. id
  local cur = redis.call('HMGET', key, 'status', 'held_by', 'scopes', 'not_before')
  if cur[1] == 'held' and cur[2] == ARGV[1] then
    local other = tripped(ARGV[2], cur[3])
    if other then
      redis.call('HSET', key, 'held_by', other)
      redis.call('SADD', ARGV[2] .. ':held:' .. other, id)
      history(ARGV[2] .. ':hist:' .. id, tonumber(ARGV[3]), 'held', 'safe_mode',
        ARGV[1] .. ' resumed, but scope ' .. other .. ' is in safe mode')
      still = still + 1
    else
      redis.call('HSET', key, 'status', 'queued')
      redis.call('HDEL', key, 'held_by')
      redis.call('HINCRBY', KEYS[3], 'held', -1)
      redis.call('HINCRBY', KEYS[3], 'queued', 1)
      redis.call('ZADD', KEYS[2], math.max(tonumber(ARGV[3]), tonumber(cur[4] or '0')), id)
      history(ARGV[2] .. ':hist:' .. id, tonumber(ARGV[3]), 'queued', 'resumed', ARGV[5])
      released = released + 1
    end
  end
end
return {released, still, redis.call('SCARD', KEYS[1])}
"""
)

_SWEEP = (
    _LUA_STATUS_SETS
    + _LUA_SAFE_MODE
    + """
-- KEYS: due; ARGV: prefix scope cursor now
if redis.call('HEXISTS', ARGV[1] .. ':trips', ARGV[2]) == 0 then return {'0', 0} end
local scan = redis.call('ZSCAN', KEYS[1], ARGV[3], 'COUNT', 500)
local held = 0
for i = 1, #scan[2], 2 do
  local id = scan[2][i]
  local cur = redis.call('HMGET', ARGV[1] .. ':msg:' .. id, 'status', 'scopes')
  if cur[1] and cur[2] then
    for _, scope in ipairs(cjson.decode(cur[2])) do
      if scope == ARGV[2] then
        hold(ARGV[1], id, scope, tonumber(ARGV[4]), cur[1])
        held = held + 1
        break
      end
    end
  end
end
return {scan[1], held}
"""
)

_RECALL = (
    _LUA_STATUS_SETS
    + """
-- KEYS: due count; ARGV: prefix filters(json: field -> value) now retention cause detail, then ids
-- Cancels the given messages that are still waiting and match every filter; counts by state.
-- A cancelled message gives back the recipient's cooldown it holds, as a single cancel does.
local filters = cjson.decode(ARGV[2])
local counts = {}
for i = 7, #ARGV do
  local id = ARGV[i]
  local key = ARGV[1] .. ':msg:' .. id
  local status = redis.call('HGET', key, 'status')
  local match = status == 'held' or status == 'queued' or status == 'deferred' or status == 'pending_approval'
  if match then
    for field, value in pairs(filters) do
      if redis.call('HGET', key, field) ~= value then match = false break end
    end
  end
  if match then
    local held_by = redis.call('HGET', key, 'held_by')
    if held_by then redis.call('SREM', ARGV[1] .. ':held:' .. held_by, id) end
    redis.call('HSET', key, 'status', 'cancelled', 'reasons',
      cjson.encode({{code=ARGV[5], detail=ARGV[6]}}))
    redis.call('HDEL', key, 'held_by')
    redis.call('ZREM', KEYS[1], id)
    redis.call('HINCRBY', KEYS[2], status, -1)
    local cooldown = ARGV[1] .. ':cool:' .. (redis.call('HGET', key, 'to') or '')
    if redis.call('GET', cooldown) == id then redis.call('DEL', cooldown) end
    history(ARGV[1] .. ':hist:' .. id, tonumber(ARGV[3]), 'cancelled', ARGV[5], ARGV[6])
    redis.call('PEXPIRE', key, ARGV[4])
    redis.call('PEXPIRE', ARGV[1] .. ':hist:' .. id, ARGV[4])
    counts[status] = (counts[status] or 0) + 1
  end
end
return cjson.encode(counts)
"""
)

_SETTLE_APPROVAL = (
    _LUA_STATUS_SETS
    + """
-- KEYS: msgs due count; ARGV: prefix outcome(approved|denied|expired) now detail retention
local moved = 0
local now = tonumber(ARGV[3])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. ':msg:' .. id
  local cur = redis.call('HMGET', key, 'status', 'not_before')
  if cur[1] == 'pending_approval' then
    local new, cause = 'queued', 'approved'
    if ARGV[2] == 'denied' then new, cause = 'cancelled', 'approval_denied' end
    if ARGV[2] == 'expired' then new, cause = 'expired', 'approval_expired' end
    redis.call('HSET', key, 'status', new)
    redis.call('HINCRBY', KEYS[3], 'pending_approval', -1)
    history(ARGV[1] .. ':hist:' .. id, now, new, cause, ARGV[4])
    if new == 'queued' then
      redis.call('HINCRBY', KEYS[3], 'queued', 1)
      redis.call('ZADD', KEYS[2], math.max(now, tonumber(cur[2] or '0')), id)
    else
      redis.call('HSET', key, 'reasons', cjson.encode({{code=cause, detail=ARGV[4]}}))
      redis.call('PEXPIRE', key, ARGV[5])
      redis.call('PEXPIRE', ARGV[1] .. ':hist:' .. id, ARGV[5])
    end
    moved = moved + 1
  end
end
return moved
"""
)

_ANNOTATE = (
    _LUA_STATUS_SETS
    + """
-- KEYS: msg hist; ARGV: now cause detail fields...
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
history(KEYS[2], tonumber(ARGV[1]), status, ARGV[2], ARGV[3])
return 1
"""
)


class Moved(IntEnum):
    """How a transition went; falsy when it did not happen (wrong status, or the claim was lost)."""

    REFUSED = 0
    MOVED = 1
    HELD = 2  # a scope of it is in safe mode: held instead (only when asked to check)


@dataclass(frozen=True)
class Candidate:
    """A submission decided in Python, on its way into the store (suppression, cooldown, approval
    and safe mode are decided atomically with the write)."""

    message_id: str
    agent: str
    address: str
    domain: str
    status: Status
    reasons: tuple[Reason, ...]
    due_ms: int
    cooldown_ms: int
    idempotency_key: str | None
    scopes: list[str]
    fields: Mapping[str, str]
    approval: str = ""
    # audit.entry(...) whose fields include AUDIT_OUTCOME; empty for no entry
    audit_entry: str = ""


@dataclass(frozen=True)
class Admission:
    """The result of admitting a submission: a new record, or the one an idempotency key names."""

    message_id: str
    status: Status
    reasons: tuple[Reason, ...]
    existing: bool
    held_by: str = ""


@dataclass(frozen=True)
class Claim:
    """A message this daemon holds; only `token`'s holder may move it on."""

    message_id: str
    token: str
    record: dict[str, str]


@dataclass(frozen=True)
class NoWork:
    """Nothing is due; `next_due_ms` is when the earliest waiting message is (None: queue empty)."""

    next_due_ms: int | None
    now_ms: int


def decode_counts(raw: str) -> dict[str, int]:
    value = json.loads(raw)
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _merge(into: dict[str, int], more: Mapping[str, int]) -> None:
    for state, count in more.items():
        into[state] = into.get(state, 0) + count


class Store:
    """Message records and their lifecycle in Redis."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._admit = client.register_script(_ADMIT)
        self._claim = client.register_script(_CLAIM)
        self._transition = client.register_script(_TRANSITION)
        self._recover = client.register_script(_RECOVER)
        self._release = client.register_script(_RELEASE)
        self._annotate = client.register_script(_ANNOTATE)
        self._sweep = client.register_script(_SWEEP)
        self._recall = client.register_script(_RECALL)
        self._settle_approval = client.register_script(_SETTLE_APPROVAL)

    async def admit(self, candidates: Sequence[Candidate]) -> list[Admission]:
        """Write decided submissions, pipelined: a batch of thousands costs a few round trips."""
        k = self.keys
        async with translated():
            async with self.redis.pipeline(transaction=False) as pipe:
                for candidate in candidates:
                    await self._admit(
                        keys=[
                            k.msg(candidate.message_id),
                            k.hist(candidate.message_id),
                            k.due,
                            k.count,
                            k.idempotency(candidate.agent, candidate.idempotency_key or "-"),
                            k.cooldown(candidate.address),
                            k.suppressed_addresses,
                            k.suppressed_domains,
                            k.recipient(candidate.address),
                        ],
                        args=self._admit_args(candidate),
                        client=pipe,
                    )
                results = await pipe.execute()
            existing = [str(result[1]) for result in results if result[0] == "existing"]
            records: dict[str, list[str]] = {}
            if existing:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for message_id in existing:
                        pipe.hmget(k.msg(message_id), ["status", "reasons"])
                    records = dict(zip(existing, await pipe.execute(), strict=True))
        admissions = []
        for candidate, result in zip(candidates, results, strict=True):
            if result[0] == "existing":
                stored_status, stored_reasons = records[str(result[1])]
                admissions.append(
                    Admission(
                        str(result[1]),
                        Status(stored_status),
                        tuple(decode_reasons(stored_reasons)),
                        existing=True,
                    )
                )
            else:
                status, reasons, held_by = Status(result[1]), tuple(decode_reasons(result[2])), str(result[3])
                admissions.append(Admission(candidate.message_id, status, reasons, False, held_by))
        return admissions

    def _admit_args(self, candidate: Candidate) -> list[Any]:
        args: list[Any] = [
            candidate.message_id,
            now_ms(),
            candidate.status.value,
            json.dumps([r.as_dict() for r in candidate.reasons]),
            candidate.due_ms,
            candidate.cooldown_ms,
            candidate.address,
            candidate.domain,
            IDEMPOTENCY_TTL_MS,
            "1" if candidate.idempotency_key else "0",
            RETENTION_MS,
            self.keys.prefix,
            json.dumps(candidate.scopes),
            candidate.approval,
            candidate.audit_entry,
        ]
        for name, value in candidate.fields.items():
            args += [name, value]
        return args

    async def claim(self, owner: str, token: str) -> Claim | NoWork:
        k = self.keys
        async with translated():
            result = await self._claim(keys=[k.due, k.inflight], args=[owner, token, k.prefix])
        if not result[0]:
            next_due = int(float(result[1])) if result[1] else None
            return NoWork(next_due, int(result[2]))
        flat = result[3]
        record = dict(zip(flat[::2], flat[1::2], strict=True))
        return Claim(result[0], token, record)

    async def transition(
        self,
        message_id: str,
        *,
        to: Status | None,
        cause: str = "",
        detail: str = "",
        claim: str = "",
        allowed_from: Iterable[Status] = (),
        due_ms: int | None = None,
        keep_claim: bool = False,
        fields: Mapping[str, str | int] | None = None,
        recipient: str = "-",
        hold_if_tripped: bool = False,
        audit_entry: str = "",
    ) -> Moved:
        """Move a message on; `Moved.REFUSED` (falsy) when it was not in an allowed status or the
        claim was lost.

        `recipient` names the cooldown a cancellation gives back, if this message holds it.
        `hold_if_tripped` holds it instead when a scope of it is in safe mode (`Moved.HELD`).
        `audit_entry` (see audit.entry) is appended to the audit trail in the same script, so the
        trail cannot miss a transition that happened.
        """
        k = self.keys
        args: list[Any] = [
            message_id,
            now_ms(),
            claim,
            ",".join(allowed_from),
            to.value if to else "",
            cause,
            detail,
            -1 if due_ms is None else due_ms,
            "1" if keep_claim else "0",
            RETENTION_MS,
            k.prefix,
            "1" if hold_if_tripped else "0",
            audit_entry,
        ]
        for name, value in (fields or {}).items():
            args += [name, value]
        async with translated():
            result = await self._transition(
                keys=[
                    k.msg(message_id),
                    k.hist(message_id),
                    k.due,
                    k.inflight,
                    k.count,
                    k.cooldown(recipient),
                ],
                args=args,
            )
        return Moved(int(result[0]))

    async def begin(self, message_id: str, claim: str, detail: str, fields: Mapping[str, str | int]) -> Moved:
        """Mark a claimed message `sending`, unless a scope of it is in safe mode (then it is held).

        Checked in the same script that starts the send, so after a trip no new send starts.
        """
        return await self.transition(
            message_id,
            to=Status.SENDING,
            cause="attempt",
            detail=detail,
            claim=claim,
            allowed_from=(Status.QUEUED, Status.DEFERRED),
            keep_claim=True,
            fields=fields,
            hold_if_tripped=True,
        )

    async def release(self, scope: str, detail: str, batch: int = 500) -> tuple[int, int]:
        """Put the messages a scope's trip held back in the queue; (released, held by another trip).

        The trip must already be gone. Messages still in another tripped scope move to its set.
        """
        k = self.keys
        released = still = 0
        while True:
            async with translated():
                done, other, left = await self._release(
                    keys=[k.held(scope), k.due, k.count], args=[scope, k.prefix, now_ms(), batch, detail]
                )
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
                cursor, found = await self._sweep(
                    keys=[self.keys.due], args=[self.keys.prefix, scope, cursor, now_ms()]
                )
            held += int(found)
            if str(cursor) == "0":
                return held

    async def recall(self, filters: Mapping[str, str], detail: str) -> dict[str, int]:
        """Cancel every waiting message whose record fields equal all `filters`; counts by state.

        Messages already `sending` are in the relay's hands and cannot be called back.
        """
        k = self.keys
        counts: dict[str, int] = {}
        async with translated():
            # Waiting messages are in the due queue, a held set or an approval request's set.
            waiting_sets = [key async for key in self.redis.scan_iter(match=k.held("*"), count=500)]
            waiting_sets += [
                key async for key in self.redis.scan_iter(match=k.approval_messages("*"), count=500)
            ]
            sources = [self.redis.zscan_iter(k.due, count=500)] + [
                self.redis.sscan_iter(key, count=500) for key in waiting_sets
            ]
            for source in sources:
                ids: list[str] = []
                async for item in source:
                    ids.append(str(item[0] if isinstance(item, tuple) else item))
                    if len(ids) >= 500:
                        _merge(counts, await self.cancel(ids, "recalled", detail, filters))
                        ids = []
                _merge(counts, await self.cancel(ids, "recalled", detail, filters))
        return counts

    async def cancel(
        self, ids: list[str], cause: str, detail: str, filters: Mapping[str, str] | None = None
    ) -> dict[str, int]:
        """Cancel those of `ids` still waiting (and matching `filters`), 500 a script; counts by state.

        `cause` becomes the reason code; the detail says why, for people.
        """
        k = self.keys
        counts: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            args: list[str | int] = [
                k.prefix,
                json.dumps(dict(filters or {})),
                now_ms(),
                RETENTION_MS,
                cause,
                detail,
            ]
            async with translated():
                found = await self._recall(keys=[k.due, k.count], args=[*args, *ids[start : start + 500]])
            _merge(counts, decode_counts(found))
        return counts

    async def settle_approval(self, approval_id: str, outcome: str, detail: str) -> int:
        """Queue (approved), cancel (denied) or expire the messages waiting for a request."""
        k = self.keys
        async with translated():
            moved = await self._settle_approval(
                keys=[k.approval_messages(approval_id), k.due, k.count],
                args=[k.prefix, outcome, now_ms(), detail, RETENTION_MS],
            )
        return int(moved)

    async def annotate(
        self, message_id: str, cause: str, detail: str, fields: Mapping[str, str | int] | None = None
    ) -> bool:
        """Record something that happened to a message without changing where it is; False if gone."""
        args: list[Any] = [now_ms(), cause, detail]
        for name, value in (fields or {}).items():
            args += [name, value]
        async with translated():
            found = await self._annotate(
                keys=[self.keys.msg(message_id), self.keys.hist(message_id)], args=args
            )
        return bool(found)

    async def last_sent(self, address: str) -> str | None:
        """The id of the last message sent to an address (recorded with its `sent` signal)."""
        async with translated():
            found = await self.redis.get(self.keys.last_sent(address))
        return str(found) if found else None

    async def recipient_messages(self, address: str) -> list[str]:
        """Ids of the messages admitted for an address within the retention period."""
        async with translated():
            return sorted(str(member) for member in await self.redis.smembers(self.keys.recipient(address)))

    async def recover(self, own: str = "", live: Iterable[str] = (), limit: int = 1000) -> tuple[int, int]:
        """Requeue messages whose daemon died; returns (recovered, of which uncertain).

        With `own`, also that daemon's claims other than `live`: ones its deliveries let go of when
        Redis failed under them, which nobody else would recover while it goes on heartbeating.
        Only the daemon's claim loop may ask, between claims, or it could take a claim being made.
        """
        k = self.keys
        async with translated():
            result = await self._recover(
                keys=[k.inflight, k.due, k.count, k.stats], args=[now_ms(), k.prefix, limit, own, *live]
            )
        return int(result[0]), int(result[1])

    async def heartbeat(self, instance: str, ttl_ms: int) -> None:
        async with translated():
            await self.redis.set(self.keys.instance(instance), "1", px=ttl_ms)

    async def forget_instance(self, instance: str) -> None:
        async with translated():
            await self.redis.delete(self.keys.instance(instance))

    async def record(self, message_id: str) -> dict[str, str] | None:
        """The message record alone, without its history."""
        async with translated():
            record = await self.redis.hgetall(self.keys.msg(message_id))
        return {str(name): str(value) for name, value in record.items()} or None

    async def get(self, message_id: str) -> tuple[dict[str, str], list[dict[str, Any]]] | None:
        k = self.keys
        async with translated(), self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.msg(message_id))
            pipe.lrange(k.hist(message_id), 0, -1)
            record, history = await pipe.execute()
        if not record:
            return None
        return record, [json.loads(entry) for entry in history]

    async def waiting_counts(self) -> dict[str, int]:
        async with translated():
            raw = await self.redis.hgetall(self.keys.count)
        return {status.value: int(raw.get(status.value, 0)) for status in WAITING}
