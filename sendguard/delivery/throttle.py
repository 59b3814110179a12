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

A reply rule's hold on a scope (reply_rules.py) is read by the same script: a deferred scope
waits until the deferral ends, a slowed one keeps to its lower limit in a window of its own.

A warm-up ramp (`[[ramp]]`) is a window whose limit grows: the script reads the first send of
the inbox or domain (recorded by the first reservation, in the same script) and holds the window
to the ramp's limit of the day, so the ramp is exact across daemons as a throttle is.

The mass-send line is one more window, an agent's, for its messages no tier-2 approval released:
admission counts a message when it is due, but messages can still be gathered after it (held in
safe mode and released together, deferred through a relay outage and retried together), and
this window keeps any such gathering at the relay under the threshold; the rest wait their turn.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from sendguard.record import Wait, Waiting
from sendguard.rules import AgentEntry, ApprovalRules, RampRule, ScopeKind, ThrottleRule
from sendguard.scopes import agent_values, concerns, scope_name
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated
from sendguard.state.scripts import ScriptArgs
from sendguard.state.store import Settlement

CACHED = 10_000  # sets of scope values whose buckets are kept for the rules in force


@dataclass(frozen=True)
class Buckets:
    """The buckets one message falls into, and why, so a wait can be attributed to a scope."""

    windows: list[tuple[str, int, int]]  # key, limit, per_ms
    gaps: list[tuple[str, int]]  # key, gap_ms (min_gap plus a fresh jitter sample) before this send
    holds: list[tuple[str, str]]  # hold key, slow window key: each scope a reply rule may hold back
    scopes: list[Waiting]  # what waits on windows, gaps, then holds, in the same order
    # key of the first send, window (1-based), start, step, period_ms: a ramp holding that window
    ramps: list[tuple[str, int, int, int, int]] = dataclasses.field(default_factory=list)

    @functools.cached_property
    def keys(self) -> list[str]:
        """Window keys, gap keys, each ramp's first send, then each hold's two keys: the order the
        reservation takes them in. Worked out once, as Buckets are kept for the rules in force."""
        windows_and_gaps = [key for key, _, _ in self.windows] + [key for key, _ in self.gaps]
        return (
            windows_and_gaps + [key for key, *_ in self.ramps] + [key for pair in self.holds for key in pair]
        )

    @functools.cached_property
    def layout(self) -> list[int]:
        """The reservation's arguments after the send and its lease (lua/shared/throttle.lua
        `throttle_reserve`): how many windows, gaps and ramps, each window's limit and length,
        each gap, each ramp. Worked out once, as `keys`."""
        args = [len(self.windows), len(self.gaps), len(self.ramps)]
        for _, limit, per_ms in self.windows:
            args += [limit, per_ms]
        args += [gap for _, gap in self.gaps]
        for _, *ramp in self.ramps:
            args += ramp
        return args

    @functools.cached_property
    def waits(self) -> list[str]:
        """What a message waits for when each bucket holds it back, in `scopes`' order."""
        return [scope.value for scope in self.scopes]

    def settlement(self, member: str, delivered: bool) -> Settlement:
        """Settling `member` once the relay answered: the windows (a slow hold's window is one),
        then the gaps."""
        windows = [key for key, _, _ in self.windows] + [window for _, window in self.holds]
        return Settlement(windows + [key for key, _ in self.gaps], len(windows), member, delivered)


@dataclass(frozen=True)
class MassSendLine:
    """The most of `agent`'s messages not released by a tier-2 approval that may reach the relay in
    any `per` seconds: one under `mass_send_threshold`, over `mass_send_window`."""

    agent: str
    limit: int
    per: float

    @classmethod
    def of(cls, agent: str, rules: ApprovalRules) -> MassSendLine:
        return cls(agent, rules.mass_send_threshold - 1, rules.mass_send_window)


@dataclass(frozen=True)
class RampLimit:
    """Where a ramp stands for one inbox or sender domain."""

    scope: str
    limit: int  # sends allowed in its window now
    ceiling: int
    per: float
    first_send_ms: int | None  # None: nothing sent yet, the ramp has not started
    used: int


@dataclass(frozen=True)
class Headroom:
    """One rolling window an agent's messages fall into: how many sends it holds now of its limit."""

    scope: str
    limit: int
    per: float
    used: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


class Throttles:
    """The throttle buckets of messages, and what they hold now.

    The start of a send reserves them and its finish settles them, each in the script of that
    step (Store.start and Store.finish, through lua/shared/throttle.lua), so the reservation is
    atomic with the other checks made before a send.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, lease_ms: int) -> None:
        self._redis = client
        self._keys = keys
        self._lease_ms = lease_ms
        self._cache: dict[tuple[object, ...], Buckets] = {}
        self._cached_for: tuple[Sequence[ThrottleRule], Sequence[RampRule]] = ((), ())

    def buckets(
        self,
        rules: Sequence[ThrottleRule],
        values: dict[ScopeKind, str | None],
        held: Iterable[ScopeKind] = (),
        ramps: Sequence[RampRule] = (),
        mass_send: MassSendLine | None = None,
    ) -> Buckets:
        """`held`: the scope kinds a reply rule may defer or slow, whose holds the reservation reads;
        `ramps`: the warm-up ramps, each a window whose limit the reservation works out;
        `mass_send`: the agent's mass-send line, for a message no tier-2 approval released.

        Worked out once per rules version and set of scope values (up to CACHED of them), unless a
        rule has a jitter, which takes a fresh sample for every send.
        """
        held = tuple(held)
        if self._cached_for[0] is not rules or self._cached_for[1] is not ramps:
            self._cached_for = (rules, ramps)
            self._cache.clear()
        key = (*values.items(), *held, mass_send)
        found = self._cache.get(key)
        if found is None:
            found = self._buckets(rules, values, held, ramps, mass_send)
            if not any(rule.jitter for rule in rules):
                if len(self._cache) >= CACHED:
                    self._cache.clear()
                self._cache[key] = found
        return found

    def _buckets(
        self,
        rules: Sequence[ThrottleRule],
        values: dict[ScopeKind, str | None],
        held: Iterable[ScopeKind],
        ramps: Sequence[RampRule],
        mass_send: MassSendLine | None,
    ) -> Buckets:
        windows: dict[tuple[str, int], int] = {}
        window_scopes: dict[str, Waiting] = {}
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
        ramped: list[tuple[RampRule, str, tuple[str, int]]] = []
        for ramp in ramps:
            value = values.get(ramp.scope)
            if not ramp.applies_to(value):
                continue
            assert value is not None
            per_ms = int(ramp.per * 1000)
            window = (self._keys.throttle(ramp.scope.value, per_ms, value), per_ms)
            # Never above its ceiling; the script lowers it to the day's limit.
            windows[window] = min(ramp.ceiling, windows.get(window, ramp.ceiling))
            window_scopes[window[0]] = ramp.scope
            ramped.append((ramp, value, window))
        if mass_send is not None:
            per_ms = int(mass_send.per * 1000)
            line = self._keys.throttle(Wait.MASS_SEND.value, per_ms, mass_send.agent)
            windows[(line, per_ms)] = mass_send.limit
            window_scopes[line] = Wait.MASS_SEND
        order = {window: number for number, window in enumerate(windows, start=1)}
        holds = {kind: scope_name(kind, value) for kind in held if (value := values.get(kind)) is not None}
        return Buckets(
            windows=[(key, limit, per) for (key, per), limit in windows.items()],
            gaps=list(gaps.items()),
            holds=[
                (self._keys.reply_hold(scope), self._keys.reply_window(scope)) for scope in holds.values()
            ],
            scopes=[window_scopes[key] for key, _ in windows]
            + [gap_scopes[key] for key in gaps]
            + list(holds),
            ramps=[
                (
                    self._keys.ramp(ramp.scope.value, value),
                    order[window],
                    ramp.start,
                    ramp.step,
                    int(ramp.period * 1000),
                )
                for ramp, value, window in ramped
            ],
        )

    async def headroom(
        self, rules: Sequence[ThrottleRule], agent: AgentEntry, mass_send: MassSendLine
    ) -> list[Headroom]:
        """Every window an agent's messages fall into whatever their recipient, its mass-send line
        last (`mass_send:<agent>`), and what each holds now by Redis' clock, counted as the
        reservation script counts it; read, never reserved."""
        values = agent_values(agent)
        windows: list[tuple[ScopeKind | Wait, str, int, float]] = []  # kind, value, limit, per
        for rule in rules:
            if rule.match != "*":
                if concerns(agent, scope_name(rule.scope, rule.match)):
                    windows.append((rule.scope, rule.match, rule.limit, rule.per))
            else:
                windows += [(rule.scope, value, rule.limit, rule.per) for value in values[rule.scope]]
        windows.append((Wait.MASS_SEND, mass_send.agent, mass_send.limit, mass_send.per))
        async with translated():
            seconds, micros = await self._redis.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind, value, _, per in windows:
                    per_ms = int(per * 1000)
                    pipe.zcount(self._keys.throttle(kind.value, per_ms, value), now_ms - per_ms, "+inf")
                counts = await pipe.execute()
        return [
            Headroom(
                scope_name(kind, value) if isinstance(kind, ScopeKind) else f"{kind}:{value}",
                limit,
                per,
                int(used),
            )
            for (kind, value, limit, per), used in zip(windows, counts, strict=True)
        ]

    async def ramp_limits(self, ramps: Sequence[RampRule], agents: Iterable[AgentEntry]) -> list[RampLimit]:
        """Where each ramp stands for the inboxes and sender domains of `agents` (those the register
        names: a ramp on `*@domain` inboxes is known per message), read as the script reads it."""
        # Ramps on the same inbox or domain and window bind together, the lowest limit first.
        found: dict[tuple[ScopeKind, str, int], list[RampRule]] = {}
        for agent in agents:
            for ramp in ramps:
                if ramp.match != "*":
                    values = [ramp.match] if concerns(agent, scope_name(ramp.scope, ramp.match)) else []
                else:
                    values = agent_values(agent)[ramp.scope]
                for value in values:
                    together = found.setdefault((ramp.scope, value, int(ramp.per * 1000)), [])
                    if ramp not in together:
                        together.append(ramp)
        if not found:
            return []
        async with translated():
            seconds, micros = await self._redis.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind, value, per_ms in found:
                    pipe.get(self._keys.ramp(kind.value, value))
                    pipe.zcount(self._keys.throttle(kind.value, per_ms, value), now_ms - per_ms, "+inf")
                answers = await pipe.execute()
        limits = []
        for ((kind, value, per_ms), together), first, used in zip(
            found.items(), answers[::2], answers[1::2], strict=True
        ):
            first_ms = int(first) if first is not None else None
            since = None if first_ms is None else now_ms - first_ms
            limits.append(
                RampLimit(
                    scope_name(kind, value),
                    min(ramp.limit(since) for ramp in together),
                    min(ramp.ceiling for ramp in together),
                    per_ms / 1000,
                    first_ms,
                    int(used),
                )
            )
        return limits

    def reservation(self, buckets: Buckets, member: str) -> ScriptArgs:
        """What the start of a send (Store.start) reserves `member` in every bucket with, laid out
        as the reservation (lua/shared/throttle.lua `throttle_reserve`) reads it."""
        return ScriptArgs(buckets.keys, [member, self._lease_ms, *buckets.layout])
