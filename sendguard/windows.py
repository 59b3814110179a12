"""Send windows: when a message may go by a zone's wall clock, and the exact instant they next open.

A window (`[[window]]` in the rules) is open at an instant when the wall clock of its zone reads
one of its days, not one of its skipped dates, and a time in one of its spans (opening included,
closing not). Several windows that apply to one message must all be open at once (their
intersection): each says when that scope may send, and none may be broken for another.

Daylight saving follows from judging by the wall clock: a span that opens at a time the clock
skips (02:30 when it jumps from 02:00 to 03:00) opens at the jump, the first valid instant after;
one that opens at a time the clock shows twice (01:30 when it falls back) opens at the first
showing, and is open during both showings of a time it covers. The next opening is computed, not
polled: it is the earliest of a few candidate instants (each span's opening resolved both ways, and
the day's offset changes), checked against the definition above.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from sendguard.model import time_zone
from sendguard.rules import RECIPIENT, WEEKDAYS, RulesFile, WindowRule
from sendguard.scopes import Scoped, scope_values

# Windows that do not all open within this long are looked at again after it, not searched further.
HORIZON = timedelta(days=400)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_MICROS = 1_000_000


@dataclass(frozen=True)
class Window:
    """One `[[window]]` rule with its zone settled (for `recipient`, the message's)."""

    zone: ZoneInfo
    days: frozenset[int]  # date.weekday() numbers
    spans: tuple[tuple[int, int], ...]  # opening, closing: seconds after local midnight
    skip: frozenset[date]

    @classmethod
    def of(cls, rule: WindowRule, recipient_zone: ZoneInfo) -> Window:
        return cls(
            zone=recipient_zone if rule.timezone == RECIPIENT else ZoneInfo(rule.timezone),
            days=frozenset(WEEKDAYS.index(day) for day in rule.days),
            spans=tuple(rule.spans),
            skip=frozenset(rule.skip_dates),
        )

    def is_open(self, at: datetime) -> bool:
        local = at.astimezone(self.zone)
        if local.weekday() not in self.days or local.date() in self.skip:
            return False
        micros = ((local.hour * 60 + local.minute) * 60 + local.second) * _MICROS + local.microsecond
        return any(opens * _MICROS <= micros < closes * _MICROS for opens, closes in self.spans)

    def next_opening(self, at: datetime) -> datetime | None:
        """The earliest instant at or after `at` when this window is open; None beyond the horizon."""
        if self.is_open(at):
            return at
        # From the day before: a clock falling back across midnight shows an earlier date later.
        first = at.astimezone(self.zone).date() - timedelta(days=1)
        best: datetime | None = None
        for offset in range(HORIZON.days + 2):
            day = first + timedelta(days=offset)
            if best is not None and day > best.astimezone(self.zone).date() + timedelta(days=1):
                break  # a later day's candidates come later, bar a fall-back at midnight: one more day
            if day.weekday() not in self.days or day in self.skip:
                continue
            for candidate in self._candidates(day):
                if candidate >= at and (best is None or candidate < best) and self.is_open(candidate):
                    best = candidate
        return best

    def _candidates(self, day: date) -> Iterator[datetime]:
        """Where the window can open on `day`: the wall clock reaching a span's opening (at its first
        or second showing) or jumping into a span at an offset change."""
        midnight = datetime.combine(day, time())
        for opens, _ in self.spans:
            wall = midnight + timedelta(seconds=opens)
            for fold in (0, 1):
                yield wall.replace(tzinfo=self.zone, fold=fold).astimezone(UTC)
        yield from self._offset_changes(midnight.replace(tzinfo=self.zone).astimezone(UTC))

    def _offset_changes(self, midnight: datetime) -> Iterator[datetime]:
        """The instants the zone's offset changes within the 36 hours around a local day."""
        points = [midnight + timedelta(hours=hours) for hours in range(-6, 31, 6)]
        for low, high in itertools.pairwise(points):
            if self._offset(low) == self._offset(high):
                continue
            while high - low > _SECOND:  # bisect to the second: zones change offset on one
                middle = low + (high - low) // 2 // _SECOND * _SECOND
                if self._offset(middle) == self._offset(low):
                    low = middle
                else:
                    high = middle
            yield high

    def _offset(self, at: datetime) -> timedelta | None:
        return at.astimezone(self.zone).utcoffset()


def next_opening(windows: Sequence[Window], at: datetime) -> datetime | None:
    """The earliest instant at or after `at` when every window is open; None beyond the horizon.

    Each round moves to the latest of the windows' next openings, which no common opening can
    precede, until they are all open there.
    """
    moment = at
    while moment - at <= HORIZON:
        latest = moment
        for window in windows:
            opening = window.next_opening(moment)
            if opening is None:
                return None
            latest = max(latest, opening)
        if latest == moment:
            return moment
        moment = latest
    return None


class Windowed(Scoped, Protocol):
    """What the windows that apply to a message are read from: its scopes and its recipient's zone."""

    @property
    def recipient_timezone(self) -> str | None: ...


def applicable(rules: RulesFile, record: Windowed) -> list[Window]:
    """The windows of every `[[window]]` rule whose scope the message is in."""
    if not rules.window:
        return []
    values = scope_values(record)
    default = rules.windows.default_recipient_timezone
    try:
        recipient = time_zone(record.recipient_timezone or default)
    except ValueError:  # checked at admission; gone from this machine's tz database since
        recipient = time_zone(default)
    return [Window.of(rule, recipient) for rule in rules.window if rule.applies_to(values.get(rule.scope))]


def opening_ms(rules: RulesFile, record: Windowed, now_ms: int) -> int:
    """When the message may next go by its send windows, in ms: `now_ms` when they are open now, the
    horizon's end when they do not open before it (it is looked at again then)."""
    windows = applicable(rules, record)
    if not windows:
        return now_ms
    now = _EPOCH + timedelta(milliseconds=now_ms)
    opening = next_opening(windows, now)
    if opening is None:
        return now_ms + HORIZON // timedelta(milliseconds=1)
    return -((_EPOCH - opening) // timedelta(milliseconds=1))  # rounded up: never before it opens
