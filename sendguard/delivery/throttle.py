"""Exact rolling-window throttles, reserved atomically across every bucket a message touches.

A bucket is a sorted set of sends keyed by scope, window length and scope value. Each entry's
score is the *latest* moment that send can have reached the relay: while it is in flight that
is its reservation time plus the send deadline, and once the relay answers it is the answer's
time. A new send reserves at Redis time `now` (the *earliest* it can reach the relay) only if
fewer than `limit` entries lie at or after `now - per`; so however long deliveries take, and
however many daemons share the Redis, no window of length `per` holds more than `limit`
deliveries. The clock is Redis's own (TIME), shared by every daemon.

A `min_gap` is held the same way, as a promise about arrivals at the relay: a bucket's gap key
holds its last reservation at that send's latest possible arrival, and the next send reserves
only `gap` after it. Unlike a window slot, the reservation keeps its place whatever follows (a
refusal, a failed connection), so a gap also spaces the retries.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from sendguard.rules import ScopeKind, ThrottleRule
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated

_IN_FLIGHT_RECHECK_MS = 200
_RESERVE = (
    f"local IN_FLIGHT_RECHECK_MS = {_IN_FLIGHT_RECHECK_MS}\n"
    + """
-- KEYS: n window keys, then m gap keys
-- ARGV: member lease_ms n m, then n x (limit per_ms), then m x (gap_ms)
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local member, lease = ARGV[1], tonumber(ARGV[2])
local n, m = tonumber(ARGV[3]), tonumber(ARGV[4])
local wait, blocker = 0, 0
for i = 1, n do
  local limit, per = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. (now - per))
  local count = redis.call('ZCARD', KEYS[i])
  if count >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
    local w = tonumber(oldest[2]) + per + 1 - now
    -- Blocked by a send still in flight: its score drops to its answer time within moments,
    -- so look again soon instead of waiting out the whole in-flight lease.
    if tonumber(oldest[2]) > now then w = math.min(w, IN_FLIGHT_RECHECK_MS) end
    if w > wait then wait, blocker = w, i end
  end
end
for j = 1, m do
  local last = redis.call('ZRANGE', KEYS[n + j], -1, -1, 'WITHSCORES')
  if last[2] then
    local w = tonumber(last[2]) + tonumber(ARGV[4 + 2 * n + j]) - now
    if tonumber(last[2]) > now then w = math.min(w, IN_FLIGHT_RECHECK_MS) end
    if w > wait then wait, blocker = w, n + j end
  end
end
if wait > 0 then return {wait, blocker, now} end
for i = 1, n do
  redis.call('ZADD', KEYS[i], now + lease, member)
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[4 + 2 * i]) + lease)
end
for j = 1, m do
  redis.call('DEL', KEYS[n + j])
  redis.call('ZADD', KEYS[n + j], now + lease, member)
  redis.call('PEXPIRE', KEYS[n + j], lease + tonumber(ARGV[4 + 2 * n + j]))  -- >= lease + min_gap
end
return {0, 0, now}
"""
)

_SETTLE = """
-- KEYS: window keys, then gap keys
-- ARGV: member delivered('1' keeps it at the answer time, '0' removes it) n(window keys)
-- A gap key keeps the attempt at its answer time either way.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for i = 1, #KEYS do
  if ARGV[2] == '1' or i > tonumber(ARGV[3]) then
    redis.call('ZADD', KEYS[i], 'XX', now, ARGV[1])
  else
    redis.call('ZREM', KEYS[i], ARGV[1])
  end
end
return now
"""


@dataclass(frozen=True)
class Buckets:
    """The buckets one message falls into, and why, so a wait can be attributed to a scope."""

    windows: list[tuple[str, int, int]]  # key, limit, per_ms
    gaps: list[tuple[str, int]]  # key, gap_ms (min_gap plus a fresh jitter sample) before this send
    scopes: list[ScopeKind]  # scope of windows then gaps, in the same order

    @property
    def keys(self) -> list[str]:
        """Window keys, then gap keys: the order the scripts take them in."""
        return [key for key, _, _ in self.windows] + [key for key, _ in self.gaps]


@dataclass(frozen=True)
class Reservation:
    """Zero wait: the send may start now. Otherwise how long, and the scope that said no."""

    wait_ms: int
    blocked_by: ScopeKind | None


class Throttles:
    """Reserve and settle throttle buckets for messages."""

    def __init__(self, client: aioredis.Redis, keys: Keys, lease_ms: int) -> None:
        self._keys = keys
        self._lease_ms = lease_ms
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    def buckets(self, rules: Sequence[ThrottleRule], values: dict[ScopeKind, str | None]) -> Buckets:
        windows: dict[tuple[str, int], int] = {}
        window_scopes: dict[str, ScopeKind] = {}
        gaps: dict[str, int] = {}
        gap_scopes: dict[str, ScopeKind] = {}
        for rule in rules:
            value = values.get(rule.scope)
            if not rule.applies_to(value):
                continue
            assert value is not None
            per_ms = int(rule.per * 1000)
            key = self._keys.throttle(rule.scope.value, per_ms, value)
            # Two rules on the same bucket: the tighter limit is the one that binds.
            windows[(key, per_ms)] = min(rule.limit, windows.get((key, per_ms), rule.limit))
            window_scopes[key] = rule.scope
            if rule.min_gap or rule.jitter:
                gap_key = self._keys.gap(rule.scope.value, value)
                gap_ms = int((rule.min_gap + random.uniform(0, rule.jitter)) * 1000)
                gaps[gap_key] = max(gap_ms, gaps.get(gap_key, 0))
                gap_scopes[gap_key] = rule.scope
        return Buckets(
            windows=[(key, limit, per) for (key, per), limit in windows.items()],
            gaps=list(gaps.items()),
            scopes=[window_scopes[key] for key, _ in windows] + [gap_scopes[key] for key in gaps],
        )

    async def reserve(self, buckets: Buckets, member: str) -> Reservation:
        if not buckets.windows and not buckets.gaps:
            return Reservation(0, None)
        args: list[str | int] = [member, self._lease_ms, len(buckets.windows), len(buckets.gaps)]
        for _, limit, per_ms in buckets.windows:
            args += [limit, per_ms]
        args += [gap for _, gap in buckets.gaps]
        async with translated():
            wait, blocker, _ = await self._reserve(keys=buckets.keys, args=args)
        if int(wait) <= 0:
            return Reservation(0, None)
        return Reservation(int(wait), buckets.scopes[int(blocker) - 1])

    async def settle(self, buckets: Buckets, member: str, delivered: bool) -> None:
        """After the relay answered: pin a delivery to its answer time, or give its window slots back.

        The gaps keep the attempt at its answer time either way.
        """
        if not buckets.windows and not buckets.gaps:
            return
        args = [member, "1" if delivered else "0", len(buckets.windows)]
        async with translated():
            await self._settle(keys=buckets.keys, args=args)
