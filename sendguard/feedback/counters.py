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

from sendguard.governance.audit_entries import entry as audit_entry
from sendguard.rules import SafeModeRules
from sendguard.state import scripts
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated
from sendguard.state.scripts import ScriptArgs
from sendguard.state.store import RETENTION_MS

SLOTS = 60  # the window moves in steps of window / SLOTS
AUTOMATIC = "sendguard"  # the actor of decisions no person took; a person is always `role:name`


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
# The causes a signal is judged on: a bounce can trip a scope on its bounce rate only, never on
# old complaints or denials that happen to sit in the window. The other signals only move the
# denominators.
CAUSES: dict[Signal, tuple[str, ...]] = {
    Signal.HARD: ("bounce_rate",),
    Signal.COMPLAINT: ("complaint_rate",),
    Signal.NEGATIVE: ("negative_reply_rate",),
    Signal.ABUSIVE: ("negative_reply_rate", "abusive_replies"),
    Signal.DENIAL: ("denials",),
}
BAD = frozenset(CAUSES)  # the signals that can trip a scope
TRIP_CAUSES = tuple(dict.fromkeys(cause for causes in CAUSES.values() for cause in causes))


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
    """Whether a signal counted for its message for the first time, and the trips it caused."""

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
        self._record = scripts.register(client, keys, "signals_record")
        self._totals = scripts.register(client, keys, "signals_totals")
        self._judged_by: tuple[SafeModeRules, str] | None = None

    async def record(self, call: ScriptArgs) -> Recorded:
        """Make the recording `call` describes, in a step of its own; the trips it caused."""
        async with translated():
            raw = await self._record(keys=call.keys, args=call.args)
        return Recorded(counted=raw[0] == 1, trips=[Trip.from_json(trip) for trip in raw[1:]])

    def call(
        self,
        scopes: Sequence[str],
        signals: Sequence[Signal],
        rules: SafeModeRules,
        *,
        message_id: str = "",
        once: str = "",
        last_sent_to: str = "",
        agent: str = "",
        activity: Sequence[str] = (),
    ) -> ScriptArgs:
        """Counting `signals` in each scope, as keys and arguments for lua/shared/signals.lua: made
        alone (`record`) or by a script that records something else in the same step (Store.finish).
        With a bad signal, the first scope that crosses trips.

        `scopes` must come most specific first (see the script for why). A bad signal is judged
        only on the causes it bears on (CAUSES). A scope already tripped absorbs the signal: the
        scopes above it do not count it, and a scope that trips takes its window's counts out of
        the scopes above it, so they trip later only on evidence of their own.
        `once` names a field on the message: a signal already counted for it in a scope is not
        counted there again (a DSN posted twice is one bounce), while a scope that has not counted
        it yet does (an agent's own report counted on its agent scope alone, then the same bounce
        from a trusted source counts on the rest). `last_sent_to` remembers the message as the
        latest sent to that address, for events that only name the recipient. `agent` is whose mail
        (or refusal) it is: a trip it causes counts in that agent's activity, as do the fields in
        `activity` (see governance/register.py).
        """
        k = self._keys
        causes = sorted({cause for s in signals for cause in CAUSES.get(s, ())})
        return ScriptArgs(
            [
                k.trips,
                k.active_scopes,
                k.msg(message_id) if once else k.msg("-"),
                k.last_sent(last_sent_to) if last_sent_to else k.last_sent("-"),
                *(k.signals(scope) for scope in scopes),
            ],
            [
                int(rules.window * 1000),
                SLOTS,
                json.dumps([s.value for s in signals]),
                f"counted_{once}" if once else "",
                message_id if last_sent_to else "",
                self._thresholds(rules),
                AUTOMATIC,
                RETENTION_MS,
                json.dumps(causes),
                # written with a trip; a signal that judges no cause trips nothing
                audit_entry("safe_mode.tripped", AUTOMATIC, {"outcome": "@"}) if causes else "",
                agent,
                json.dumps(list(activity)),
                *scopes,
            ],
        )

    def _thresholds(self, rules: SafeModeRules) -> str:
        """The thresholds the script judges by, as JSON, made once per rules version."""
        if self._judged_by is None or self._judged_by[0] is not rules:
            self._judged_by = (rules, json.dumps(rules.model_dump(exclude={"window", "scopes"})))
        return self._judged_by[1]

    async def totals(self, rules: SafeModeRules) -> list[Totals]:
        """Window totals of every scope that saw a signal within the window."""
        k = self._keys
        async with translated():
            flat = await self._totals(keys=[k.active_scopes], args=[int(rules.window * 1000), SLOTS])
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
