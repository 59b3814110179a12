"""Applying what came back: each event counts towards its message's scopes, suppresses, cancels.

Every path (the relay's synchronous 5xx, `POST /v1/events`, parsed DSNs, ARF reports and
replies) ends here, so a bounce means the same thing however it arrived. A signal is counted
once per message in each scope, so a report delivered twice does not count twice; and an event
alike one recorded on its message before (what it means, how it is proved: `_effect`) does
nothing again and writes nothing, so replaying a proved report cannot grow the audit trail.

Who reports decides what an event may move. An agent may be hijacked, so its word is taken only
about its own messages that left, named by id, and weighs only against itself: it counts on its
own `agent:` scope alone, and only when it is bad news (good news could only dilute its own
rates); it suppresses only the address its message went to (which, like any suppression, cancels
every message still waiting for that mailbox) and its reply cancels only its own waiting messages.
Trusted sources count on every scope: operators and admins (whose JSON events may also be tied
by the recipient alone), the relay, a signed one-click link, and raw mail that reaches a bounce
address sendguard signed (see the last paragraph). An event that matches no message suppresses
and cancels nothing, whoever sends it, except a one-click link: its signature proves the address
was mailed.

Raw mail (DSNs, ARF reports, replies; by SMTP or `POST /v1/inbound`, whoever hands it in) is
written by strangers: anyone can name any address, and a recipient address alone once let one
forged DSN suppress 3,000 of them. So it acts only on proof that it is about a message sendguard
sent (`apply_mail`): a report must reach a bounce address sendguard signed (signing.py) or
return a sendguard Message-ID whose message went to the recipient the report names; a reply must
name, by In-Reply-To or References, a message that left for the reply's From. Either way it acts
only on that message and its recipient, never on other addresses it names. Mail with anything
less is refused whole (`Unreferenced`): the caller keeps it for a person, and it suppresses,
cancels and counts nothing. A reply counts once per message, whatever its sentiment, so a
replier cannot stop an agent by answering the same message over and over; a later reply to the
same message that means something else (another sentiment, a request to unsubscribe) is still
recorded on it and still cancels and unsubscribes (it is genuine mail from the recipient), but
counts in no window.

What the proof counts on depends on who could have forged it. Mail from the SMTP listener comes
from anyone, and a sendguard Message-ID with its recipient (or a reply's In-Reply-To and From) is
no secret: the agent chose the recipient and was told the id, and the recipient holds the
message. Such mail counts on its message's `agent:` scope alone (watched or not), so no one who
merely saw a message can stop another agent or a shared scope with it; unlike the agent's own
word its good news counts there too (a genuine reply's sentiment keeps the rate honest). Only a
bounce address sendguard signed with its secret, which the agent never sees (the receiving MTA
delivers a DSN to it; a feedback loop returns it as the original's Return-Path or
Original-Mail-From), counts on every watched scope: DSNs and ARF complaints alike. A reply can
carry no such proof, so from the listener it always counts on `agent:` alone. Raw mail an
operator or admin hands in is their word, trusted as their JSON events are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sendguard.errors import InvalidValue, SendguardError
from sendguard.feedback.counters import BAD, Signal, Trip
from sendguard.feedback.events import BounceType, EventIn, EventType, Sentiment, sendguard_id
from sendguard.feedback.parse import Away, Inbound, InboundKind, Reference
from sendguard.feedback.reply_stops import ReplyStops
from sendguard.feedback.safe_mode import SafeMode
from sendguard.feedback.sentiment import classify
from sendguard.feedback.signing import BounceAddresses
from sendguard.governance.audit import AuditLog
from sendguard.governance.audit import entry as audit_entry
from sendguard.governance.suppressions import Suppressions
from sendguard.metrics import Metrics
from sendguard.model import Status, folded_address
from sendguard.record import MessageRecord
from sendguard.state.store import Store

log = logging.getLogger("sendguard.feedback.apply")

# An agent's events are about messages that reached the relay; others never met a recipient.
_LEFT = (Status.SENT, Status.BOUNCED)


class UnknownMessage(SendguardError):
    """An agent named a message that is not one of its own, or no message at all: 404, nothing applied.

    Another agent's message gets the same answer as an unknown id, so its existence is not told.
    """


class NotSent(SendguardError):
    """An agent reported an event about its own message that never left: 409, nothing applied."""


class Unreferenced(SendguardError):
    """Raw mail that does not prove which message of ours it is about: nothing applied, kept."""


@dataclass(frozen=True)
class Reporter:
    """Who reports events: `source` names it in the history and the audit trail.

    `agent` is set for an agent's token: its word moves only its own messages and scope.
    `signed` marks a one-click link, whose message id and address sendguard signed itself.
    `stranger` marks raw mail anyone may have handed in (the SMTP listener): unless it reaches a
    bounce address sendguard signed, it counts on its message's `agent:` scope alone.
    """

    source: str
    agent: str | None = None
    signed: bool = False
    stranger: bool = False


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
    repeated: bool = False  # the same event was recorded on the message before: nothing done again


class Feedback:
    """Ties events to messages and applies them."""

    def __init__(
        self,
        store: Store,
        suppressions: Suppressions,
        safe_mode: SafeMode,
        audit: AuditLog,
        metrics: Metrics,
        bounces: BounceAddresses | None,
        reply_stops: ReplyStops,
    ) -> None:
        self._store = store
        self._reply_stops = reply_stops
        self._bounces = bounces
        self._metrics = metrics
        metrics.start_at_zero(metrics.bounces, BounceType)
        metrics.start_at_zero(metrics.replies, Sentiment)
        metrics.start_at_zero(metrics.unmatched_events, EventType)
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
        await self._suppress(record.to, "the address bounced")
        return recorded.trips

    async def apply(self, events: Sequence[EventIn], reporter: Reporter) -> list[Applied]:
        """Tie every event to its message first, then apply each.

        An agent's report is refused whole (UnknownMessage, NotSent, InvalidValue), before
        anything is applied, if one of its events is not about a message of its own that left.
        """
        tied = [await self._tie(event, reporter) for event in events]
        return [
            await self._apply(
                event, message_id, record, reporter, named=True, narrow=reporter.agent is not None
            )
            for event, (message_id, record) in zip(events, tied, strict=True)
        ]

    async def apply_mail(self, inbound: Inbound, reporter: Reporter) -> list[Applied]:
        """Apply parsed raw mail, each event to the message its references prove (module docstring).

        Raises Unreferenced, before anything is applied, when one of its events has no such
        message; from an agent, also UnknownMessage or NotSent as for its JSON events. Of the
        events tied to one message, only the first of each kind is applied: a report naming
        3,000 addresses under one signed address is one bounce of one message.
        """
        if not inbound.events and inbound.away is None:
            return []  # understood, and says nothing: its references need no checking
        tied: dict[tuple[str, EventType, bool], tuple[EventIn, _Proof]] = {}
        checked = await self._checked(inbound)
        if inbound.away is not None:
            return await self._away(inbound.away, reporter, checked)
        for event in inbound.events:
            found = _referenced(event, checked)
            if isinstance(found, str):
                raise Unreferenced(f"no valid reference: {found}")
            if reporter.agent is not None:
                _own(found.message_id, found.record, reporter.agent)
            tied.setdefault((found.message_id, event.type, event.hard), (event, found))
        return [
            await self._apply(
                event,
                proved.message_id,
                proved.record,
                reporter,
                named=False,
                # Proof the agent or the recipient could write weighs on the agent alone.
                narrow=reporter.agent is not None or (reporter.stranger and not proved.signed),
            )
            for event, proved in tied.values()
        ]

    async def _away(self, away: Away, reporter: Reporter, checked: list[_Proof | str]) -> list[Applied]:
        """An out-of-office reply with a return date, tied as a reply is: its agent's follow-ups
        to the sender wait until then. It counts and cancels nothing."""
        found = _referenced(EventIn(type=EventType.REPLY, recipient=away.sender), checked)
        if isinstance(found, str):
            raise Unreferenced(f"no valid reference: {found}")
        if reporter.agent is not None:
            _own(found.message_id, found.record, reporter.agent)
        await self._reply_stops.away(found.record, away.until, reporter.source)
        return [Applied(EventType.REPLY, found.message_id)]

    async def _checked(self, inbound: Inbound) -> list[_Proof | str]:
        """Each reference of the mail checked once, whatever the number of its events: a mac
        verified, the messages named read in one round trip. In the mail's order, a reference that
        holds as a `_Proof`, one that does not as why (each reason once); whether a proof holds for
        an event is `_referenced`'s to say.

        Every event used to check every reference, HMAC and all: one DSN with 12,000 bad macs and
        90 per-recipient groups held the daemon's loop for 3 s. The parser caps how many there are
        (parse.py), this makes each cost once.
        """
        report = inbound.kind is not InboundKind.REPLY
        # A reply proves itself by what it answers, not by where it was delivered.
        references = [ref for ref in inbound.references if report or not ref.mac]
        verdicts: list[Reference | str] = [
            f"the bounce address in {ref.where} is not signed by this deployment"
            if ref.mac and (self._bounces is None or not self._bounces.valid(ref.message_id, ref.mac))
            else ref
            for ref in references
        ]
        named = list(dict.fromkeys(v.message_id for v in verdicts if isinstance(v, Reference)))
        records = dict(zip(named, await self._store.whole_records(named), strict=True))
        checked: list[_Proof | str] = []
        reasons: set[str] = set()
        for verdict in verdicts:
            if isinstance(verdict, Reference):
                record = records[verdict.message_id]
                if record is not None:
                    checked.append(_Proof(verdict, record))
                    continue
                verdict = f"{verdict.where} names no message known here"
            if verdict not in reasons:  # the reasons are joined once each anyway (`_referenced`)
                reasons.add(verdict)
                checked.append(verdict)
        return checked

    async def _apply(
        self,
        event: EventIn,
        message_id: str | None,
        record: MessageRecord | None,
        reporter: Reporter,
        *,
        named: bool,
        narrow: bool,
    ) -> Applied:
        """Apply one tied event; `named`: a trusted reporter's named recipient is meant too;
        `narrow`: its proof is no more than the agent knows, so it counts on `agent:` alone."""
        applied = Applied(event.type, message_id)
        judged = _judge(event)
        applied.sentiment, applied.unsubscribe = judged.sentiment, judged.unsubscribe
        effect = _effect(event, judged, reporter, named=named, narrow=narrow) if message_id and record else ""
        if effect and message_id and await self._store.event_recorded(message_id, effect):
            applied.repeated = True
            return applied
        counted = True
        addresses: list[str] = []
        if message_id and record:
            if judged.signals:
                # An agent's good news about itself counts nothing: it could only lower its own
                # rates. `once` still marks the message, so its metrics count it once.
                mine = reporter.agent is not None
                signals = judged.signals if not mine or BAD.intersection(judged.signals) else []
                recorded = await self._safe_mode.observe(
                    record.scopes if signals else [],
                    signals,
                    message_id=message_id,
                    once=judged.once,
                    agent_only=narrow,
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
            # The address we mailed and the one the event names differ when an operator reports a
            # forwarding target: a trusted person means both. An agent's word and raw mail reach
            # only the address the message went to.
            also = (event.recipient,) if named and reporter.agent is None else ()
            addresses = list(dict.fromkeys(a for a in (*also, record.to) if a))
        else:
            self._metrics.unmatched_events.labels(event.type.value).inc()
            if reporter.signed and event.recipient:
                addresses = [event.recipient]  # the link outlives the record; its signature is proof
        if event.type is EventType.REPLY and record is not None:
            applied.cancelled += await self._reply_stops.replied(record, reporter.source)
        if counted:
            _count(self._metrics, event, judged)
        for address in addresses:
            if event.type is EventType.REPLY:
                applied.cancelled += await self._cancel_waiting(
                    address, "recipient_replied", "the recipient replied", agent=reporter.agent
                )
            if judged.suppress:
                applied.suppressed = applied.suppressed or address
                applied.cancelled += await self._suppress(address, f"suppressed after a {event.type.value}")
        kind, fields = (
            f"event.{event.type.value}",
            {
                "message_id": message_id,
                "agent": record.agent if record else None,
                "detail": judged.note,
                "suppressed": applied.suppressed,
                "cancelled": applied.cancelled,
                "tripped": [trip.scope for trip in applied.trips],
            },
        )
        if effect and message_id:
            note = f"{judged.note} (via {reporter.source})"
            entry = audit_entry(kind, reporter.source, fields)
            # A copy that came in at once and recorded first: this one wrote nothing.
            applied.repeated = not await self._store.record_event(
                message_id, effect, event.type.value, note, entry
            )
        else:
            await self._audit.append(kind, reporter.source, fields)
        log.info(
            "event %s applied",
            event.type.value,
            extra={"message_id": message_id or "", "status": judged.note},
        )
        return applied

    async def _tie(self, event: EventIn, reporter: Reporter) -> tuple[str | None, MessageRecord | None]:
        """The message an event is about: by its id, else (trusted sources only) the last one
        sent to the recipient. An agent's must be its own and have left, or nothing is applied."""
        message_id = sendguard_id(event.message_id) if event.message_id else None
        if reporter.agent is None:
            if message_id is None and event.recipient:
                message_id = await self._store.last_sent(event.recipient)
            return message_id, await self._store.record(message_id) if message_id else None
        if message_id is None:
            raise InvalidValue(
                "message_id",
                "an agent reports events about its own messages by message_id (sendguard's id or "
                "the Message-ID it sent); a recipient alone ties nothing",
            )
        return message_id, _own(message_id, await self._store.record(message_id), reporter.agent)

    async def _suppress(self, address: str, detail: str) -> int:
        """Suppress the recipient's mailbox, cancelling every message still waiting for it in the
        same step, whoever's: a suppression holds for all, so they could never be sent anyway."""
        return await self._suppressions.add(address, detail)

    async def _cancel_waiting(self, address: str, cause: str, detail: str, agent: str | None = None) -> int:
        """Cancel the messages to the mailbox of `address` that have not been sent yet (only
        `agent`'s, if given)."""
        ids = await self._store.recipient_messages(address)
        filters = {"agent": agent} if agent else None
        return sum((await self._store.cancel(ids, cause, detail, filters)).values())


@dataclass(frozen=True)
class _Proof:
    """A reference that holds by itself: a valid signed bounce address, or a Message-ID of a
    message known here (`Feedback._checked`)."""

    ref: Reference
    record: MessageRecord

    @property
    def message_id(self) -> str:
        return self.ref.message_id

    @property
    def signed(self) -> bool:
        """Proved by a bounce address we signed (a secret of ours), not by a Message-ID with its
        recipient (known to the agent and the recipient)."""
        return bool(self.ref.mac)


def _referenced(event: EventIn, checked: list[_Proof | str]) -> _Proof | str:
    """The message a checked reference of the mail proves `event` is about, or why there is none.

    A report: a signed bounce address with a valid mac, or a returned Message-ID whose message
    left for the recipient the report names. A reply: In-Reply-To or References naming a
    message that left for the reply's From (`event.recipient`). A message left when it was sent
    (or bounced), or may have (an attempt whose outcome the relay never told us).
    """
    problems: list[str] = []
    for proof in checked:
        if isinstance(proof, str):
            problems.append(proof)
            continue
        ref, record = proof.ref, proof.record
        if ref.mac:
            return proof
        if event.recipient is None:
            problems.append(f"{ref.where} names a message, but the report names no recipient")
        elif event.recipient != folded_address(record.to):
            problems.append(f"{ref.where} names a message that was not sent to {event.recipient}")
        elif record.status in _LEFT or record.uncertain:
            return proof
        else:  # a report too: anyone can name a message still waiting, or one refused, and its recipient
            problems.append(f"{ref.where} names a message that was not sent ({record.status.value})")
    return "; ".join(dict.fromkeys(problems)) or "no sendguard Message-ID or signed bounce address"


def _own(message_id: str, record: MessageRecord | None, agent: str) -> MessageRecord:
    """The record, if it is the agent's own message and it left; else refused."""
    if record is None or record.agent != agent:
        raise UnknownMessage(
            f"no message {message_id} of agent {agent}: an agent reports events only about its own messages"
        )
    if record.status not in _LEFT:
        raise NotSent(
            f"message {message_id} is {record.status.value}: "
            "events are about messages that were sent, and this one was not"
        )
    return record


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
            "reply",  # once per message, whatever its sentiment: see the module docstring
            f"reply: {sentiment.value}{asks}",
            verdict.unsubscribe,
            sentiment,
            verdict.unsubscribe,
        )
    if event.type is EventType.UNSUBSCRIBE:
        return _Judged([], "", "unsubscribe request", suppress=True, unsubscribe=True)
    return _Judged([], "", f"delivered {detail}".strip(), suppress=False)


def _effect(event: EventIn, judged: _Judged, reporter: Reporter, *, named: bool, narrow: bool) -> str:
    """What an event tied to a message means, and how well it is proved: two events alike in this
    are one, so a replay (of a report, a reply, a DSN) does nothing again and writes nothing, while
    a later event that means more (a reply that asks to unsubscribe) or is better proved (a signed
    DSN after the agent's own report) still acts. The recipient it names counts only where it acts
    (a trusted reporter's forwarding target, `_apply`): elsewhere a new name in each replay of one
    signed report would make each a new event, and grow the trail as before."""
    proof = "agent" if reporter.agent is not None else "narrow" if narrow else "wide"
    sentiment = judged.sentiment.value if judged.sentiment else ""
    unsubscribe = "unsubscribe" if judged.unsubscribe else ""
    recipient = event.recipient or "" if named and reporter.agent is None else ""
    return ":".join((event.type.value, judged.once, sentiment, unsubscribe, proof, recipient))


def _count(metrics: Metrics, event: EventIn, judged: _Judged) -> None:
    if event.type is EventType.BOUNCE:
        metrics.bounces.labels("hard" if event.hard else "soft").inc()
    elif event.type is EventType.COMPLAINT:
        metrics.complaints.inc()
    elif judged.sentiment is not None:
        metrics.replies.labels(judged.sentiment.value).inc()
    if judged.unsubscribe:
        metrics.unsubscribes.inc()
