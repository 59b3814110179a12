"""Rolling signal counters per scope, and the verdict they give the moment a signal is recorded.

Each scope has one hash of counters in time slots (a sixtieth of the window each) and running
window totals. Recording a signal bumps the slot and the totals of every scope of the message
and, in the same script, compares that scope's rates with the rules: a crossing writes the trip
at once, so every daemon on the Redis stops that scope from its next send on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

import redis.asyncio as aioredis

from sendguard.rules import SafeModeRules
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated
from sendguard.state.store import RETENTION_MS

SLOTS = 60  # the window moves in steps of window / SLOTS


class Signal(StrEnum):
    """The counters kept per scope."""

    SENT = "sent"  # the relay answered (2xx, or a 5xx bounce): the denominator of the rates
    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"
    REPLY = "reply"
    NEGATIVE = "negative"
    ABUSIVE = "abusive"
    DENIAL = "denial"


_TOTALS = [s.value for s in Signal]
# The signals that can trip a scope; the others only move the denominators.
BAD = frozenset({Signal.HARD, Signal.COMPLAINT, Signal.NEGATIVE, Signal.ABUSIVE, Signal.DENIAL})

# refresh(): drop slots that left the window and recount the totals, once per slot per scope.
_LUA_WINDOW = """
local function refresh(key, slot, slots)
  if redis.call('HGET', key, '_slot') == tostring(slot) then return end
  local all = redis.call('HGETALL', key)
  local totals = {}
  for j = 1, #all, 2 do
    local field = all[j]
    local s, counter = string.match(field, '^(%d+):(.+)$')
    if s then
      if tonumber(s) <= slot - slots then
        redis.call('HDEL', key, field)
      else
        totals[counter] = (totals[counter] or 0) + tonumber(all[j + 1])
      end
    elseif string.sub(field, 1, 2) == 't:' then
      redis.call('HDEL', key, field)
    end
  end
  for counter, n in pairs(totals) do redis.call('HSET', key, 't:' .. counter, n) end
  redis.call('HSET', key, '_slot', slot)
end
local function totals(key)
  local v = redis.call('HMGET', key, 't:sent', 't:hard', 't:soft', 't:complaint', 't:reply',
    't:negative', 't:abusive', 't:denial')
  local out = {}
  for i = 1, #v do out[i] = tonumber(v[i] or '0') end
  return out
end
"""

_RECORD = (
    _LUA_WINDOW
    + """
-- KEYS: trips active msg last, then one signal key per scope
-- ARGV: window_ms slots counters once last_id rules by retention_ms evaluate, then the scope names
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local window = tonumber(ARGV[1])
local slot_ms = math.floor(window / tonumber(ARGV[2]))
local retention = tonumber(ARGV[8])
local slot = math.floor(now / slot_ms)
if ARGV[4] ~= '' and redis.call('HSETNX', KEYS[3], ARGV[4], now) == 0 then return {0} end
if ARGV[5] ~= '' then redis.call('SET', KEYS[4], ARGV[5], 'PX', retention) end
local counters = cjson.decode(ARGV[3])
local r = cjson.decode(ARGV[6])
local trips = {1}  -- counted, then the trips
local function over(n, d, rate) return d > 0 and n >= rate * d - 1e-9 end
for i = 5, #KEYS do
  local key, scope = KEYS[i], ARGV[i + 5]
  refresh(key, slot, tonumber(ARGV[2]))
  for _, c in ipairs(counters) do
    redis.call('HINCRBY', key, slot .. ':' .. c, 1)
    redis.call('HINCRBY', key, 't:' .. c, 1)
  end
  redis.call('PEXPIRE', key, window + slot_ms)
  redis.call('ZADD', KEYS[2], now, scope)
end
-- Scopes come most specific first. The first one already tripped absorbs the signal, and the
-- first one to cross trips alone: a bad segment stops that segment, not everything above it.
for i = 5, #KEYS do
  if ARGV[9] ~= '1' then break end
  local key, scope = KEYS[i], ARGV[i + 5]
  if redis.call('HEXISTS', KEYS[1], scope) == 1 then break end
  local v = totals(key)
  local sent, hard, complaint, replies = v[1], v[2], v[4], v[5]
  local bad, abusive, denials = v[6] + v[7], v[7], v[8]
  local cause, value, threshold, detail
  if sent >= r.min_sent and over(hard, sent, r.bounce_rate) then
    cause, value, threshold = 'bounce_rate', hard / sent, r.bounce_rate
    detail = hard .. ' hard bounces of ' .. sent .. ' sent'
  elseif sent >= r.min_sent and over(complaint, sent, r.complaint_rate) then
    cause, value, threshold = 'complaint_rate', complaint / sent, r.complaint_rate
    detail = complaint .. ' complaints of ' .. sent .. ' sent'
  elseif replies >= r.min_replies and over(bad, replies, r.negative_reply_rate) then
    cause, value, threshold = 'negative_reply_rate', bad / replies, r.negative_reply_rate
    detail = bad .. ' negative or abusive replies of ' .. replies
  elseif abusive >= r.abusive_replies then
    cause, value, threshold = 'abusive_replies', abusive, r.abusive_replies
    detail = abusive .. ' abusive replies'
  elseif denials >= r.max_denials then
    cause, value, threshold = 'denials', denials, r.max_denials
    detail = denials .. ' submissions refused by policy'
  end
  if cause then
    local trip = cjson.encode({scope=scope, cause=cause, value=value, threshold=threshold,
      detail=detail .. ' in the window', at=now, by=ARGV[7]})
    redis.call('HSET', KEYS[1], scope, trip)
    table.insert(trips, trip)
    break
  end
end
return trips
"""
)

_SNAPSHOT = (
    _LUA_WINDOW
    + """
-- KEYS: active; ARGV: window_ms slots prefix
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local window = tonumber(ARGV[1])
local slot = math.floor(now / math.floor(window / tonumber(ARGV[2])))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local out = {}
for _, scope in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[3] .. ':sig:' .. scope
  refresh(key, slot, tonumber(ARGV[2]))
  table.insert(out, scope)
  table.insert(out, cjson.encode(totals(key)))
end
return out
"""
)


@dataclass(frozen=True)
class Trip:
    """An active safe-mode trip: what stopped the scope, how far over, when and by whom."""

    scope: str
    cause: str
    detail: str
    at: int
    by: str
    value: float | None = None
    threshold: float | None = None

    @classmethod
    def from_json(cls, raw: str) -> Trip:
        data = json.loads(raw)
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Recorded:
    """Whether a signal counted (not already counted for its message), and the trips it caused."""

    counted: bool
    trips: list[Trip]


@dataclass(frozen=True)
class Totals:
    """One scope's counts over the current window."""

    scope: str
    sent: int
    hard: int
    complaints: int
    replies: int
    negative: int

    @property
    def bounce_rate(self) -> float:
        return self.hard / self.sent if self.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    @property
    def negative_reply_rate(self) -> float:
        return self.negative / self.replies if self.replies else 0.0


class Signals:
    """Record signals against scopes; returns the trips a recording caused."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._keys = keys
        self._record = client.register_script(_RECORD)
        self._snapshot = client.register_script(_SNAPSHOT)

    async def record(
        self,
        scopes: Sequence[str],
        signals: Sequence[Signal],
        rules: SafeModeRules,
        *,
        message_id: str = "",
        once: str = "",
        last_sent_to: str = "",
    ) -> Recorded:
        """Count `signals` for each scope; with a bad signal, trip the first scope that crosses.

        `scopes` must come most specific first (see the script for why).
        `once` names a field on the message: a signal already counted for it is not counted
        again (a DSN posted twice is one bounce). `last_sent_to` remembers the message as the
        latest sent to that address, for events that only name the recipient.
        """
        k = self._keys
        if not scopes and not once and not last_sent_to:
            return Recorded(counted=True, trips=[])
        thresholds = rules.model_dump(exclude={"window", "scopes"})
        async with translated():
            raw = await self._record(
                keys=[
                    k.trips,
                    k.active_scopes,
                    k.msg(message_id) if once else k.msg("-"),
                    k.last_sent(last_sent_to) if last_sent_to else k.last_sent("-"),
                    *(k.signals(scope) for scope in scopes),
                ],
                args=[
                    int(rules.window * 1000),
                    SLOTS,
                    json.dumps([s.value for s in signals]),
                    f"counted_{once}" if once else "",
                    message_id if last_sent_to else "",
                    json.dumps(thresholds),
                    "sendguard",
                    RETENTION_MS,
                    "1" if BAD.intersection(signals) else "0",
                    *scopes,
                ],
            )
        return Recorded(counted=raw[0] == 1, trips=[Trip.from_json(trip) for trip in raw[1:]])

    async def totals(self, rules: SafeModeRules) -> list[Totals]:
        """Window totals of every scope that saw a signal within the window."""
        k = self._keys
        async with translated():
            flat = await self._snapshot(
                keys=[k.active_scopes], args=[int(rules.window * 1000), SLOTS, k.prefix]
            )
        found = []
        for scope, raw in zip(flat[::2], flat[1::2], strict=True):
            counts = dict(zip(_TOTALS, json.loads(raw), strict=True))
            found.append(
                Totals(
                    scope=scope,
                    sent=counts["sent"],
                    hard=counts["hard"],
                    complaints=counts["complaint"],
                    replies=counts["reply"],
                    negative=counts["negative"] + counts["abusive"],
                )
            )
        return found
