"""Applying what came back: each event counts towards its message's scopes, suppresses, cancels.

Every path (the relay's synchronous 5xx, `POST /v1/events`, parsed DSNs, ARF reports and
replies) ends here, so a bounce means the same thing however it arrived. A signal is counted
once per message, so a report delivered twice does not count twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sendguard.feedback.counters import Signal, Trip
from sendguard.feedback.events import EventIn, EventType, Sentiment, sendguard_id
from sendguard.feedback.safe_mode import SafeMode
from sendguard.feedback.sentiment import classify
from sendguard.governance.audit import AuditLog
from sendguard.governance.suppressions import Suppressions
from sendguard.metrics import Metrics
from sendguard.model import Status
from sendguard.record import MessageRecord
from sendguard.state.store import Store

log = logging.getLogger("sendguard.feedback.apply")


@dataclass
class Applied:
    """What an event did, for the caller's answer."""

    type: EventType
    message_id: str | None
    sentiment: Sentiment | None = None
    unsubscribe: bool = False
    suppressed: str | None = None
    cancelled: int = 0
    trips: list[Trip] = field(default_factory=list)


class Feedback:
    """Ties events to messages and applies them."""

    def __init__(
        self,
        store: Store,
        suppressions: Suppressions,
        safe_mode: SafeMode,
        audit: AuditLog,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._suppressions = suppressions
        self._safe_mode = safe_mode
        self._audit = audit

    async def bounced(self, message_id: str, record: MessageRecord) -> list[Trip]:
        """The relay refused a message with a 5xx at RCPT or DATA: a hard bounce, and a send."""
        recorded = await self._safe_mode.observe(
            record.scopes,
            [Signal.SENT, Signal.HARD],
            message_id=message_id,
            once="hard_bounce",
            last_sent_to=record.to,
        )
        if recorded.counted:
            self._metrics.bounces.labels("hard").inc()
        await self._suppress(record.to, "recipient_suppressed", "the address bounced", message_id)
        return recorded.trips

    async def apply(self, event: EventIn, source: str) -> Applied:
        message_id, record = await self._find(event)
        applied = Applied(event.type, message_id)
        judged = _judge(event)
        applied.sentiment, applied.unsubscribe = judged.sentiment, judged.unsubscribe
        counted = True
        if message_id and record:
            if judged.signals:
                recorded = await self._safe_mode.observe(
                    record.scopes, judged.signals, message_id=message_id, once=judged.once
                )
                applied.trips, counted = recorded.trips, recorded.counted
            if event.hard:
                await self._store.transition(
                    message_id,
                    to=Status.BOUNCED,
                    cause="bounce_report",
                    detail=judged.note,
                    allowed_from=[Status.SENT],
                )
            await self._store.annotate(message_id, event.type.value, f"{judged.note} (via {source})")
        else:
            self._metrics.unmatched_events.labels(event.type.value).inc()
        if counted:
            _count(self._metrics, event, judged)
        # The address we mailed and the one the event names differ when a person replies from an
        # alias or a report names a forwarding target: both are meant.
        addresses = dict.fromkeys(a for a in (event.recipient, record.to if record else None) if a)
        for address in addresses:
            if event.type is EventType.REPLY:
                applied.cancelled += await self._cancel_waiting(
                    address, "recipient_replied", "the recipient replied"
                )
            if judged.suppress:
                applied.suppressed = applied.suppressed or address
                applied.cancelled += await self._suppress(
                    address, "recipient_suppressed", f"suppressed after a {event.type.value}", message_id
                )
        await self._audit.append(
            f"event.{event.type.value}",
            source,
            {
                "message_id": message_id,
                "agent": record.agent if record else None,
                "detail": judged.note,
                "suppressed": applied.suppressed,
                "cancelled": applied.cancelled,
                "tripped": [trip.scope for trip in applied.trips],
            },
        )
        log.info(
            "event %s applied",
            event.type.value,
            extra={"message_id": message_id or "", "status": judged.note},
        )
        return applied

    async def _find(self, event: EventIn) -> tuple[str | None, MessageRecord | None]:
        """The message an event is about: by its id, else the last one sent to the recipient."""
        message_id = sendguard_id(event.message_id) if event.message_id else None
        if message_id is None and event.recipient:
            message_id = await self._store.last_sent(event.recipient)
        record = await self._store.record(message_id) if message_id else None
        return message_id, record

    async def _suppress(self, address: str, cause: str, detail: str, message_id: str | None) -> int:
        await self._suppressions.add([address], [])
        return await self._cancel_waiting(address, cause, detail, keep=message_id)

    async def _cancel_waiting(self, address: str, cause: str, detail: str, keep: str | None = None) -> int:
        """Cancel the messages to `address` that have not been sent yet, in one script."""
        ids = [
            message_id for message_id in await self._store.recipient_messages(address) if message_id != keep
        ]
        return sum((await self._store.cancel(ids, cause, detail)).values())


@dataclass(frozen=True)
class _Judged:
    """What an event means: the signals it counts (once per message), and what else it does."""

    signals: list[Signal]
    once: str
    note: str
    suppress: bool
    sentiment: Sentiment | None = None
    unsubscribe: bool = False


def _judge(event: EventIn) -> _Judged:
    detail = event.detail or ""
    if event.type is EventType.BOUNCE:
        kind = "hard" if event.hard else "soft"
        words = f"{kind} bounce {event.status or ''} {detail}".split()
        signal = Signal.HARD if event.hard else Signal.SOFT
        return _Judged([signal], f"{kind}_bounce", " ".join(words), suppress=event.hard)
    if event.type is EventType.COMPLAINT:
        return _Judged([Signal.COMPLAINT], "complaint", f"complaint {detail}".strip(), suppress=True)
    if event.type is EventType.REPLY:
        verdict = classify(event.text or "")
        sentiment = event.sentiment or verdict.sentiment
        signals = [Signal.REPLY]
        if sentiment in (Sentiment.NEGATIVE, Sentiment.ABUSIVE):
            signals.append(Signal(sentiment.value))
        asks = ", asks to unsubscribe" if verdict.unsubscribe else ""
        return _Judged(
            signals,
            f"reply_{sentiment.value}",
            f"reply: {sentiment.value}{asks}",
            verdict.unsubscribe,
            sentiment,
            verdict.unsubscribe,
        )
    if event.type is EventType.UNSUBSCRIBE:
        return _Judged([], "", "unsubscribe request", suppress=True, unsubscribe=True)
    return _Judged([], "", f"delivered {detail}".strip(), suppress=False)


def _count(metrics: Metrics, event: EventIn, judged: _Judged) -> None:
    if event.type is EventType.BOUNCE:
        metrics.bounces.labels("hard" if event.hard else "soft").inc()
    elif event.type is EventType.COMPLAINT:
        metrics.complaints.inc()
    elif judged.sentiment is not None:
        metrics.replies.labels(judged.sentiment.value).inc()
    if judged.unsubscribe:
        metrics.unsubscribes.inc()
