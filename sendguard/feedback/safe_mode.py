"""Safe mode: trips (automatic or by hand), resumes by a person, and everyone told about both.

A trip is a field in one Redis hash, read by the same scripts that admit, claim and start a
send, so it takes effect for every daemon at its next step. Resuming removes the trip, restarts
the scope's signal window and puts its held messages back in the queue, under all throttles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from sendguard.background import end_within
from sendguard.feedback.counters import TRIP_CAUSES, Recorded, Signal, Signals, Totals, Trip
from sendguard.governance.audit_entries import entry as audit_entry
from sendguard.metrics import Metrics
from sendguard.notify import Notifier
from sendguard.rules import CurrentRules, ScopeKind
from sendguard.scopes import GLOBAL, agent_in, split_scope
from sendguard.state import scripts
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated
from sendguard.state.scripts import ScriptArgs
from sendguard.state.store import Store

log = logging.getLogger("sendguard.feedback.safe_mode")

RELEASE_BATCH = 500  # held messages released per script run
# How long a resumed scope answers a retried resume with success rather than "not in safe mode".
RESUMED_REMEMBERED_MS = 24 * 3600 * 1000

# Which scope a signal blames first. Bounces and complaints judge the list, so the audience
# slice goes first; replies and refusals judge what the agent does, so the agent goes first.
_LIST_FIRST = [
    ScopeKind.SEGMENT,
    ScopeKind.CAMPAIGN,
    ScopeKind.INBOX,
    ScopeKind.SENDER_DOMAIN,
    ScopeKind.AGENT,
    ScopeKind.GLOBAL,
]
_AGENT_FIRST = [
    ScopeKind.AGENT,
    ScopeKind.CAMPAIGN,
    ScopeKind.SEGMENT,
    ScopeKind.INBOX,
    ScopeKind.SENDER_DOMAIN,
    ScopeKind.GLOBAL,
]


def exported_scopes(totals: Sequence[Totals], tripped: set[str], top: int) -> dict[str, Totals]:
    """The scopes whose gauges `/metrics` shows, with their window counts (0 for a scope with none).

    Global, every tripped scope, and the `top` busiest other scopes of each kind (most sends in the
    window, then most replies, then by name, so the choice is stable). Agents choose segment,
    campaign and From values: exporting every scope would let them add series without bound, while
    on-call needs the stopped scopes and the ones carrying the traffic.
    """
    counts = {t.scope: t for t in totals}
    chosen = {GLOBAL, *tripped}
    others: dict[str, list[Totals]] = defaultdict(list)
    for scope_totals in totals:
        if scope_totals.scope not in chosen:
            others[split_scope(scope_totals.scope)[0]].append(scope_totals)
    for candidates in others.values():
        candidates.sort(key=lambda t: (-t.sent, -t.replies, t.scope))
        chosen.update(t.scope for t in candidates[:top])
    return {
        scope: counts.get(scope) or Totals(scope=scope, sent=0, hard=0, complaints=0, replies=0, negative=0)
        for scope in chosen
    }


@dataclass(frozen=True)
class Resumed:
    """What a resume did: the trip it lifted (None if there was none) and the messages it freed."""

    scope: str
    trip: Trip | None
    released: int
    still_held: int
    resumed_before: bool  # the scope was resumed lately (by this call or an earlier one)

    @property
    def not_tripped(self) -> bool:
        """The scope was not in safe mode, nor resumed lately, and held nothing: nothing to resume."""
        return not self.resumed_before and not self.released and not self.still_held


class SafeMode:
    """Records signals, trips and resumes scopes, and keeps the safe-mode metrics current."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        store: Store,
        notifier: Notifier,
        rules: CurrentRules,
        metrics: Metrics,
        *,
        top_scopes: int,
    ) -> None:
        """`top_scopes`: how many of the busiest untripped scopes of each kind get gauges."""
        self._redis = client
        self._metrics = metrics
        self._top_scopes = top_scopes
        metrics.start_at_zero(metrics.trips, [*TRIP_CAUSES, "alert", "manual", "reply_rule", "blocklisted"])
        self._keys = keys
        self._store = store
        self._trip = scripts.register(client, keys, "safe_mode_trip")
        self._resume = scripts.register(client, keys, "safe_mode_resume")
        self._signals = Signals(client, keys)
        self._notifier = notifier
        self._rules = rules
        self._labelled: set[tuple[str, str]] = set()  # (kind, value) of every scope with gauges now
        self._sweeps: set[asyncio.Task[int]] = set()

    async def observe(
        self,
        scopes: Sequence[str],
        signals: Sequence[Signal],
        *,
        message_id: str = "",
        once: str = "",
        last_sent_to: str = "",
        agent_only: bool = False,
        activity: Sequence[str] = (),
    ) -> Recorded:
        """Count signals in the watched ones of `scopes`; announce any trip they cause.

        `agent_only`: the signals are the agent's own word (its report about its own message), so
        they count on its `agent:` scope alone, watched or not, and can stop nobody else.
        A trip they cause counts in the activity of the agent `scopes` name, with `activity`.
        """
        watched = self._watched(scopes, signals, agent_only)
        if not watched and not once and not last_sent_to and not activity:
            return Recorded(counted=True, trips=[])  # nothing to count: no round trip
        recorded = await self._signals.record(
            self._signals.call(
                watched,
                signals,
                self._rules.now.file.safe_mode,
                message_id=message_id,
                once=once,
                last_sent_to=last_sent_to,
                agent=agent_in(scopes),
                activity=activity,
            )
        )
        for trip in recorded.trips:
            self._announce(trip)
        return recorded

    def sent(self, scopes: Sequence[str], *, message_id: str, last_sent_to: str) -> ScriptArgs:
        """The `sent` count `observe` would make for a message the relay answered, as keys and
        arguments for the script that records the answer itself (Store.finish). A `sent` signal
        judges no cause, so it can trip nothing and there is nothing to announce."""
        signals = [Signal.SENT]
        return self._signals.call(
            self._watched(scopes, signals, agent_only=False),
            signals,
            self._rules.now.file.safe_mode,
            message_id=message_id,
            last_sent_to=last_sent_to,
            agent=agent_in(scopes),
        )

    def _watched(self, scopes: Sequence[str], signals: Sequence[Signal], agent_only: bool) -> list[str]:
        """The ones of `scopes` that count `signals`, most to blame first (see _LIST_FIRST)."""
        watched = {ScopeKind.AGENT} if agent_only else set(self._rules.now.file.safe_mode.scopes)
        if Signal.DENIAL in signals:
            watched.add(ScopeKind.AGENT)  # max_denials is about agents, whatever else is watched
        order = _LIST_FIRST if {Signal.HARD, Signal.COMPLAINT} & set(signals) else _AGENT_FIRST
        rank = {kind.value: order.index(kind) for kind in watched}
        return sorted((s for s in scopes if split_scope(s)[0] in rank), key=lambda s: rank[split_scope(s)[0]])

    async def trip(self, scope: str, cause: str, by: str, reason: str) -> tuple[Trip, bool]:
        """Trip a scope by hand, on an alert, a reply rule or a blocklisting; (the active trip, whether
        this call made it).

        `by` is the actor, `role:name`. The trip and its audit entry are one script, so a retry
        after a lost reply finds the trip and answers with it.
        """
        trail = audit_entry("safe_mode.tripped", by, {"outcome": "@"})  # the script writes the trip
        async with translated():
            created, raw = await self._trip(args=[scope, cause, by, reason, trail, agent_in([scope])])
        trip = Trip.from_json(str(raw))
        if created:
            self._announce(trip)
        return trip, bool(created)

    async def resume(self, scope: str, by: str, reason: str) -> Resumed:
        """Lift a trip, restart the scope's window and release what it held, with the audit entry.

        The first batch of held messages is released by the same script; the rest follow in
        batches (and the maintenance loop finishes them if this call is interrupted). A retry
        writes no second entry.
        """
        detail = f"{scope} resumed by {by}: {reason}"
        trail = audit_entry("safe_mode.resumed", by, {"scope": scope, "reason": reason, "outcome": "@"})
        async with translated():
            raw, released, still, left, before = await self._resume(
                args=[scope, RELEASE_BATCH, detail, trail, RESUMED_REMEMBERED_MS]
            )
        more, still_more = await self._store.release(scope, detail, RELEASE_BATCH) if int(left) else (0, 0)
        trip = Trip.from_json(str(raw)) if raw else None
        resumed = Resumed(scope, trip, int(released) + more, int(still) + still_more, bool(before))
        if trip is not None:
            self._metrics.resumes.inc()
            self._show_safe_mode(scope, 0)
            text = f"sendguard: {scope} resumed by {by} ({reason}); {resumed.released} held messages released"
            log.warning(text, extra={"scope": scope})
            self._notifier.post(
                text,
                {
                    "event": "resumed",
                    "scope": scope,
                    "by": by,
                    "reason": reason,
                    "released": resumed.released,
                },
            )
        return resumed

    async def finish_releases(self) -> int:
        """Release what resumes left held when they were interrupted; how many messages it freed."""
        async with translated():
            scopes = await self._redis.smembers(self._keys.releasing)
        freed = 0
        for scope in sorted(map(str, scopes)):
            released, _ = await self._store.release(
                scope, f"{scope} resumed; releasing what was left", RELEASE_BATCH
            )
            freed += released
        if freed:
            log.warning("released %d held messages that interrupted resumes left behind", freed)
        return freed

    async def active(self) -> list[Trip]:
        async with translated():
            raw = await self._redis.hgetall(self._keys.trips)
        return sorted((Trip.from_json(str(value)) for value in raw.values()), key=lambda t: t.at)

    async def refresh_metrics(self) -> None:
        """Set the per-scope gauges from Redis for the scopes `exported_scopes` picks, and remove
        the series of every scope that left that set, so none is left behind stale."""
        rules = self._rules.now.file.safe_mode
        for signal in ("bounce_rate", "complaint_rate", "negative_reply_rate", "min_sent", "min_replies"):
            self._metrics.threshold.labels(signal).set(getattr(rules, signal))
        totals = await self._signals.totals(rules)
        tripped = {trip.scope for trip in await self.active()}
        shown: set[tuple[str, str]] = set()
        for scope, counts in exported_scopes(totals, tripped, self._top_scopes).items():
            labels = split_scope(scope)
            shown.add(labels)
            self._metrics.bounce_rate.labels(*labels).set(counts.bounce_rate)
            self._metrics.complaint_rate.labels(*labels).set(counts.complaint_rate)
            self._metrics.negative_reply_rate.labels(*labels).set(counts.negative_reply_rate)
            self._metrics.window_sent.labels(*labels).set(counts.sent)
            self._metrics.window_replies.labels(*labels).set(counts.replies)
            self._metrics.safe_mode.labels(*labels).set(1 if scope in tripped else 0)
        for labels in self._labelled - shown:
            for gauge in self._metrics.per_scope:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self._labelled = shown

    def _show_safe_mode(self, scope: str, value: int) -> None:
        """Show a trip or a resume at once, before the next refresh; that refresh removes the scope's
        series again if it is not one `exported_scopes` picks."""
        labels = split_scope(scope)
        self._metrics.safe_mode.labels(*labels).set(value)
        self._labelled.add(labels)

    async def drain(self, within: float) -> None:
        """Give the background work of trips (holding their queue, notifying) `within` seconds each.

        A hold cut short loses nothing: claims and the start of a send check the trips anyway.
        """
        cut_short = await end_within(set(self._sweeps), within)
        if cut_short:
            log.warning("%d safe-mode holds cut short at shutdown: claims hold the rest when due", cut_short)
        await self._notifier.drain(within)

    def _announce(self, trip: Trip) -> None:
        """Hold the scope's queue now and tell people; the trip's audit entry is already written."""
        sweep = asyncio.create_task(self._store.hold_waiting(trip.scope))
        self._sweeps.add(sweep)
        sweep.add_done_callback(self._swept)
        self._metrics.trips.labels(trip.cause).inc()
        self._show_safe_mode(trip.scope, 1)
        text = f"sendguard: safe mode for {trip.scope} ({trip.cause}: {trip.detail}; by {trip.by})"
        log.warning(text, extra={"scope": trip.scope})
        self._notifier.post(text, {"event": "tripped", **trip.__dict__})

    def _swept(self, sweep: asyncio.Task[int]) -> None:
        self._sweeps.discard(sweep)
        if not sweep.cancelled() and (problem := sweep.exception()) is not None:
            # Claims hold these messages when they come due anyway; only the states lag.
            log.warning("could not hold the queue of a tripped scope now: %s", problem)
