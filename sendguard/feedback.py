"""Applying what came back: each event counts towards its message's scopes, suppresses, cancels.

Every path (the relay's synchronous 5xx, `POST /v1/events`, parsed DSNs, ARF reports and
replies) ends here, so a bounce means the same thing however it arrived. A signal is counted
once per message, so a report delivered twice does not count twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from sendguard import metrics
from sendguard.events import EventIn, EventType, Sentiment, sendguard_id
from sendguard.safemode import SafeMode
from sendguard.sentiment import classify
from sendguard.signals import Signal, Trip
from sendguard.store import CANCELLABLE, Status, Store, translated
from sendguard.suppression import Suppressions

log = logging.getLogger("sendguard.feedback")


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

    def __init__(self, store: Store, suppressions: Suppressions, safe_mode: SafeMode) -> None:
        self._store = store
        self._suppressions = suppressions
        self._safe_mode = safe_mode

    async def bounced(self, message_id: str, record: dict[str, str]) -> list[Trip]:
        """The relay refused a message with a 5xx at RCPT or DATA: a hard bounce, and a send."""
        metrics.BOUNCES.labels("hard").inc()
        trips = await self._safe_mode.observe(
            _scopes(record),
            [Signal.SENT, Signal.HARD],
            message_id=message_id,
            once="hard_bounce",
            last_sent_to=record["to"],
        )
        await self._suppress(record["to"], "recipient_suppressed", "the address bounced", message_id)
        return trips

    async def apply(self, event: EventIn, source: str) -> Applied:
        message_id, record = await self._find(event)
        applied = Applied(event.type, message_id)
        recipient = event.recipient or (record or {}).get("to")
        if record is None:
            metrics.UNMATCHED_EVENTS.labels(event.type.value).inc()
        scopes = _scopes(record) if record else []
        note = ""
        if event.type is EventType.BOUNCE:
            kind = "hard" if event.hard else "soft"
            metrics.BOUNCES.labels(kind).inc()
            note = f"{kind} bounce {event.status or ''} {event.detail or ''}".strip()
            if message_id and record:
                signal = Signal.HARD if event.hard else Signal.SOFT
                applied.trips = await self._safe_mode.observe(
                    scopes, [signal], message_id=message_id, once=f"{kind}_bounce"
                )
                if event.hard:
                    await self._store.transition(
                        message_id,
                        to=Status.BOUNCED,
                        cause="bounce_report",
                        detail=note,
                        allowed_from=[Status.SENT],
                    )
            if event.hard and recipient:
                applied.suppressed = recipient
        elif event.type is EventType.COMPLAINT:
            metrics.COMPLAINTS.inc()
            note = f"complaint {event.detail or ''}".strip()
            if message_id and record:
                applied.trips = await self._safe_mode.observe(
                    scopes, [Signal.COMPLAINT], message_id=message_id, once="complaint"
                )
            applied.suppressed = recipient
        elif event.type is EventType.REPLY:
            verdict = classify(event.text or "")
            sentiment = event.sentiment or verdict.sentiment
            applied.sentiment, applied.unsubscribe = sentiment, verdict.unsubscribe
            metrics.REPLIES.labels(sentiment.value).inc()
            note = f"reply: {sentiment.value}" + (", asks to unsubscribe" if verdict.unsubscribe else "")
            if message_id and record:
                signals = [Signal.REPLY]
                if sentiment in (Sentiment.NEGATIVE, Sentiment.ABUSIVE):
                    signals.append(Signal(sentiment.value))
                applied.trips = await self._safe_mode.observe(
                    scopes, signals, message_id=message_id, once=f"reply_{sentiment.value}"
                )
            if verdict.unsubscribe:
                metrics.UNSUBSCRIBES.inc()
                applied.suppressed = recipient
        elif event.type is EventType.UNSUBSCRIBE:
            metrics.UNSUBSCRIBES.inc()
            note = "unsubscribe request"
            applied.suppressed = recipient
        else:
            note = f"delivered {event.detail or ''}".strip()
        if message_id and record:
            await self._store.annotate(message_id, event.type.value, f"{note} (via {source})")
        if recipient and event.type is EventType.REPLY:
            applied.cancelled += await self._cancel_waiting(
                recipient, "recipient_replied", "the recipient replied"
            )
        if recipient and applied.suppressed:
            applied.cancelled += await self._suppress(
                recipient, "recipient_suppressed", f"suppressed after a {event.type.value}", message_id
            )
        log.info("event %s applied", event.type.value, extra={"message_id": message_id or "", "status": note})
        return applied

    async def _find(self, event: EventIn) -> tuple[str | None, dict[str, str] | None]:
        """The message an event is about: by its id, else the last one sent to the recipient."""
        message_id = sendguard_id(event.message_id) if event.message_id else None
        if message_id is None and event.recipient:
            async with translated():
                last = await self._store.redis.get(self._store.keys.last_sent(event.recipient))
            message_id = str(last) if last else None
        found = await self._store.get(message_id) if message_id else None
        if found is None:
            return message_id, None
        return message_id, found[0]

    async def _suppress(self, address: str, cause: str, detail: str, message_id: str | None) -> int:
        await self._suppressions.add([address], [])
        return await self._cancel_waiting(address, cause, detail, keep=message_id)

    async def _cancel_waiting(self, address: str, cause: str, detail: str, keep: str | None = None) -> int:
        """Cancel the messages to `address` that have not been sent yet."""
        cancelled = 0
        for message_id in await self._store.recipient_messages(address):
            if message_id != keep and await self._store.transition(
                message_id,
                to=Status.CANCELLED,
                cause=cause,
                detail=detail,
                allowed_from=CANCELLABLE,
                fields={"reasons": json.dumps([{"code": cause, "detail": detail}])},
            ):
                cancelled += 1
        return cancelled


def _scopes(record: dict[str, str]) -> list[str]:
    scopes: list[str] = json.loads(record.get("scopes") or "[]")
    return scopes
