"""The admission pipeline: who may send a submission, which checks each recipient fails, where it waits.

A single message is a batch of one: both go through `Admissions.submit`, which authorises the
agent, makes sure Redis has room, decides every recipient, opens the one approval request they
wait for, admits them into the durable store and counts a policy refusal. What only a batch has
(its id, idempotency claim, template, record and audit entry) is `batches.py`'s. Form was checked
by the API model; here policy decides, and every decision is recorded with an id, a status and
reason codes, rejections included.

Every submission has an idempotency key, the agent's or one derived from its content (see
`batches.idempotency`), and every recipient is decided before any is admitted: a submission that
failed part way (Redis gone between two chunks, an answer lost after the write) is completed by
its retry, whose already admitted recipients answer with their first decision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from sendguard.errors import StoreFull, StoreWiped, Unauthenticated
from sendguard.feedback.counters import Signal
from sendguard.feedback.reply_stops import ReplyStops, company_refusal
from sendguard.feedback.safe_mode import SafeMode
from sendguard.governance.approvals import Approvals, MassCount, Route, Routing, TooManyRequests
from sendguard.governance.audit import AuditLog, content_hash
from sendguard.governance.audit import entry as audit_entry
from sendguard.governance.register import rejection_counted
from sendguard.governance.tokens import REVOKED, Principal, Tokens
from sendguard.intake.batches import (
    CHUNK,
    BatchClaim,
    BatchIn,
    BatchRecords,
    Renderer,
    Submission,
    fingerprint,
    idempotency,
    recipients,
)
from sendguard.intake.boundaries import check_content
from sendguard.intake.recipients import Ingress, Recipient
from sendguard.metrics import Metrics
from sendguard.model import Reason, Status, now_ms
from sendguard.record import MessageRecord, Wait, new_record
from sendguard.rules import AgentEntry, Rules, ScopeKind
from sendguard.scopes import admitted_scopes, scope_name
from sendguard.state.memory import MemoryBudget
from sendguard.state.store import Admission, Candidate, Idempotency, Refusable, Store
from sendguard.submission import (
    MAX_SUBJECT,
    Content,
    new_message_ids,
)
from sendguard.templates import Filled
from sendguard.windows import opening_ms


class Forbidden(Exception):
    """The agent may not do this at all (403), as opposed to a rejected message (201)."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.detail)
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    """What became of one recipient; `index` is its place in the submission's list."""

    index: int
    to: str
    admission: Admission


@dataclass(frozen=True)
class Decided:
    """One recipient decided by every check made before the write: the recipient as checked, its
    status and reasons; what it shares with the submission's other recipients is the submission's.

    Its record is built only as it is written (`Admissions._candidate`): the request the accepted
    recipients wait for is known by then, so each record is built once, and a batch builds a
    chunk's records while Redis writes the chunk before.
    """

    recipient: Recipient
    recipient_timezone: str | None
    status: Status
    reasons: tuple[Reason, ...]
    content: Filled | None  # what it gets, hashed for its audit entry; None when refused unbuilt
    idempotency: Idempotency
    values: Mapping[str, str] | None  # a batch's recipient's, filled into its batch's stored template
    check_replied: bool = False
    # When it may first go, in ms (0 if rejected): its send_at or now, moved to its send windows'
    # next opening. Its mass-send count is made at this time, since that is when it goes.
    due_ms: int = 0


@dataclass(frozen=True)
class Submitted:
    """What became of a submission: a single message has one outcome and no batch id."""

    batch: str
    outcomes: list[Outcome]
    approval: Routing | None


@dataclass(frozen=True)
class Verdict:
    """The ingress verdict on one recipient, as admission would decide it now: `would_queue`,
    `deferred` (DNS failed for a moment; admission would check again later) or `rejected`."""

    to: str
    address: str
    verdict: str
    reasons: tuple[Reason, ...]


def approval_reason(routing: Routing) -> Reason:
    """Why a message waits, for an answer that has no field naming its approval request."""
    return Reason(
        "approval_required",
        f"tier {routing.tier} ({routing.why}): waits for approval request {routing.approval_id}",
    )


class Admissions:
    """Runs the checks and admits a submission, one message or a batch, into the durable store."""

    def __init__(
        self,
        store: Store,
        ingress: Ingress,
        safe_mode: SafeMode,
        approvals: Approvals,
        audit: AuditLog,
        memory: MemoryBudget,
        retry_base: float,
        wake: Callable[[float], None],
        metrics: Metrics,
        reply_stops: ReplyStops,
        tokens: Tokens,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._reply_stops = reply_stops
        self._memory = memory
        self._metrics = metrics
        self._ingress = ingress
        self._safe_mode = safe_mode
        self._approvals = approvals
        self._audit = audit
        self._batches = BatchRecords(store, audit, metrics)
        self._retry_base_ms = int(retry_base * 1000)
        self._wake = wake

    async def submit(self, requester: Principal, submission: Submission, rules: Rules) -> Submitted:
        """Decide and admit every recipient; raises Forbidden when the agent may not send it at all,
        StoreFull when Redis has no room for it, StoreWiped when Redis is no longer the store this
        daemon started on (its trips and suppressions gone: state/marker.py), BatchConflict when a
        batch's idempotency key names another batch."""
        started = time.perf_counter()
        agent = await self._authorized(requester, submission, rules)
        if self._store.marker.lost:
            raise StoreWiped(f"{self._store.marker.lost}; nothing is admitted until a person acts")
        # A single message of a tier-0 agent is counted and checked for a company's reply stop by
        # its admission script: the one round trip that writes it, which checks a recalled token too.
        single = not isinstance(submission, BatchIn)
        in_script = single and self._approvals.counts_in_admission(agent, submission, rules)
        if not in_script:
            await self._checked(requester)  # other writes come before that script's
        try:
            await self._memory.reserve(_footprint(submission))
        except StoreFull:
            if in_script:  # not asked yet: a revoked token hears that, not that Redis is full
                await self._checked(requester)
            raise
        if isinstance(submission, BatchIn):
            fingerprinted = fingerprint(submission)  # once: the batch's key and its claim need it
            key = idempotency(submission, rules, fingerprinted)
            claim = await self._batches.claim(agent, submission, key, fingerprinted)
        else:
            key, claim = idempotency(submission, rules), BatchClaim("")
        decided = await self._decide(agent, submission, claim.id, key, rules, in_script=in_script)
        counted = None
        if in_script:
            dues = Counter({decided[0].due_ms: 1})
            counted = self._approvals.mass_count(agent, dues, rules, requester)
        if counted is None:
            # A retry of a single message is answered with its first decision by the admission
            # script: the request it waits for is looked up, not opened (and announced) again.
            first = await self._store.answered_approval(agent.name, key.key) if single else None
            if first is None:
                try:
                    route = await self._route(agent, submission, claim, decided, rules, requester)
                except TooManyRequests as capped:
                    raise await self._capped(requester, submission, rules, capped) from None
            else:
                route = Route(await self._approvals.waited_for(first) if first else None)
            routing = route.waits
        if isinstance(submission, BatchIn) and any(one.status is not Status.REJECTED for one in decided):
            await self._store.keep_template(
                claim.id,
                submission.subject,
                submission.text or "",
                submission.html or "",
                json.dumps(submission.headers),
            )
        if counted is None:
            admissions = await self._admit(agent, submission, decided, claim.id, route, rules)
        else:

            def recipient(counting: MassCount | None) -> Candidate:
                """The message's one recipient as decided now, counted by its script or not."""
                [message_id] = new_message_ids(1)
                return self._candidate(
                    agent,
                    submission,
                    decided[0],
                    rules,
                    claim.id,
                    "",
                    counting,
                    requester,
                    message_id=message_id,
                )

            candidate = recipient(counted)
            [admission] = await self._store.admit([candidate])
            if admission.replied_until:  # nothing written: decided again with the company's refusal
                stop = company_refusal(decided[0].recipient.domain, agent.name, admission.replied_until)
                decided = await self._decide(agent, submission, claim.id, key, rules, stopped=stop)
                candidate = recipient(None)
                [admission] = await self._store.admit([candidate])
            if admission.revoked:  # nothing written, by either call
                raise Unauthenticated(REVOKED)
            if admission.existing:  # a retry: answered with its first decision, counted once
                routing = await self._approvals.waited_for(admission.approval) if admission.approval else None
            else:
                try:
                    routing = self._approvals.routed(
                        counted, admission.route, admission.approval, requester, agent, rules
                    )
                except TooManyRequests as capped:
                    raise await self._capped(requester, submission, rules, capped) from None
            admissions = self._settled([admission], [candidate])
        await self._count_refusal(agent, admissions)
        outcomes = [
            Outcome(index, one.recipient.address, admission)
            for index, (one, admission) in enumerate(zip(decided, admissions, strict=True))
        ]
        if isinstance(submission, BatchIn):
            statuses = [admission.status for admission in admissions]
            await self._batches.record(requester, agent, submission, claim.id, statuses, routing, rules)
        else:
            self._metrics.decision_seconds.observe(time.perf_counter() - started)
        return Submitted(claim.id, outcomes, routing)

    async def check_sender(self, requester: Principal, address: str, rules: Rules) -> None:
        """Raise Forbidden, counted and recorded as `submit` does, if the agent may not send from
        `address`: the SMTP door asks at MAIL FROM, before there is any content."""
        if refused := sender_refusal(requester.name, address, rules):
            await self._refused(requester, [refused], rules, {"from": address})
            raise Forbidden(refused)

    async def refuse_recipient(
        self, requester: Principal, address: str, reasons: list[Reason], rules: Rules
    ) -> None:
        """Count and record recipients refused before any content (the SMTP door's RCPT verdicts),
        as `submit` counts and records a rejected message: the denial rule sees them all."""
        await self._refused(requester, reasons, rules, {"to": address})

    async def check(self, requester: Principal, addresses: list[str], rules: Rules) -> list[Verdict]:
        """The verdict admission would give each recipient now, from the same checks, writing
        nothing: no cooldown is taken, no approval counted, nothing queued, no denial counted.

        Only the recipient is judged: the agent's own boundaries (its inbox, segment, version, the
        content) and safe mode depend on a message, not on a recipient."""
        if rules.agent(requester.name) is None:
            raise Forbidden(unregistered(requester.name))
        checked = await self._ingress.check_all(addresses, rules)
        shared = await self._store.refusals(
            [Refusable(r.address, r.canonical, r.domain, bool(r.reasons)) for r in checked],
            cooldown=rules.file.ingress.recipient_cooldown > 0,
        )
        stopped = await self._reply_stops.refusals(requester.name, {r.domain for r in checked})
        verdicts = []
        for to, recipient, more in zip(addresses, checked, shared, strict=True):
            reasons = (*recipient.reasons, *more)
            if company := stopped.get(recipient.domain):
                reasons = (*reasons, company)
            if reasons:
                verdict = Status.REJECTED.value
            elif recipient.dns_deferral:
                verdict, reasons = Status.DEFERRED.value, (recipient.dns_deferral,)
            else:
                verdict = "would_queue"
            verdicts.append(Verdict(to, recipient.address, verdict, reasons))
        return verdicts

    async def _authorized(self, requester: Principal, payload: Content, rules: Rules) -> AgentEntry:
        """The requester's register entry; a refusal is counted and recorded before it is raised."""
        try:
            return _authorize(requester.name, payload, rules)
        except Forbidden as refused:
            await self._refused(requester, [refused.reason], rules, _about(payload))
            raise

    async def _capped(
        self, requester: Principal, payload: Content, rules: Rules, capped: TooManyRequests
    ) -> Forbidden:
        """A submission that would open an approval request past its agent's cap, refused as a
        forbidden one is (counted and recorded; nothing of it was admitted): the 403 to raise."""
        await self._refused(requester, [capped.reason], rules, _about(payload))
        return Forbidden(capped.reason)

    async def _checked(self, requester: Principal) -> None:
        """Raise Unauthenticated if `requester` was recalled from memory (tokens.py `recall`) and
        its token is gone: for every path where something else than the admission script, which
        checks it itself, would act on the token's word first."""
        if requester.unchecked_hash and not await self._tokens.in_force(requester):
            raise Unauthenticated(REVOKED)

    async def _refused(
        self, requester: Principal, reasons: list[Reason], rules: Rules, about: dict[str, str | None]
    ) -> None:
        """A submission refused before it was admitted: counted as a denial and in the agent's
        activity (a rejection, by its reason codes), and recorded."""
        await self._checked(requester)
        await self._denied(requester.name, rejection_counted([reason.code for reason in reasons]))
        await self._audit.append(
            "submission.refused",
            f"agent:{requester.name}",
            {
                "agent": requester.name,
                **about,
                "reasons": [reason.code for reason in reasons],
                "rules_version": rules.version,
            },
        )

    async def _decide(
        self,
        agent: AgentEntry,
        submission: Submission,
        batch_id: str,
        key: Idempotency,
        rules: Rules,
        *,
        in_script: bool = False,
        stopped: Reason | None = None,
    ) -> list[Decided]:
        """Each recipient's content filled and checked, before suppression, cooldown, approval and
        safe mode (the admission script's); a batch's recipients keep only their values (its
        template is stored once).

        A company's reply stop is looked up here, unless the admission script checks it
        (`in_script`) or it was found there already (`stopped`, for the single recipient).
        """
        entries = recipients(submission)
        decided: list[Decided] = []
        first_index: dict[str, int] = {}
        renderer = Renderer(submission)
        # Every recipient checked first, so one look-up finds the companies whose reply stopped this agent.
        checked = await self._ingress.check_all([entry.to for entry in entries], rules)
        if stopped is not None:
            found = {checked[0].domain: stopped}
        elif in_script:
            found = {}
        else:
            found = await self._reply_stops.refusals(agent.name, {recipient.domain for recipient in checked})
        check_replied = in_script and self._reply_stops.by_domain()
        standing = _standing(agent, submission, rules)
        now = now_ms()
        checked_chars = 0  # content checked since the last yield to the event loop
        for index, (entry, recipient) in enumerate(zip(entries, checked, strict=True)):
            if too_large := renderer.oversized(entry):
                reasons, content = [too_large], None
            else:
                content = renderer.content(entry)
                reasons = _boundaries(standing, content)
                checked_chars += len(content.text) + len(content.html) + renderer.placeholder_work
            if company := found.get(recipient.domain):
                reasons.append(company)
            # By mailbox, as the cooldown goes: `Bob+1@` after `bob@` is the same person again.
            seen = first_index.setdefault(recipient.canonical, index)
            if seen != index:
                duplicate = f"{recipient.address} is already recipient {seen} of this batch"
                if checked[seen].address != recipient.address:
                    duplicate = f"{recipient.address} reaches the mailbox of recipient {seen} of this batch"
                reasons.append(Reason("duplicate_recipient", duplicate))
            # A batch's recipients answer a retry of the batch by their place in it.
            each = Idempotency(f"batch:{batch_id}:{index}", key.ms, key.keeps_rejected) if batch_id else key
            values = entry.vars if batch_id else None
            refused = (*reasons, *recipient.reasons)
            if refused:
                status = Status.REJECTED
            elif recipient.dns_deferral:
                status, refused = Status.DEFERRED, (recipient.dns_deferral,)
            else:
                status = Status.QUEUED
            timezone = entry.recipient_timezone
            due = (
                0
                if status is Status.REJECTED
                else _due_ms(agent, submission, recipient, timezone, rules, now)
            )
            decided.append(
                Decided(recipient, timezone, status, refused, content, each, values, check_replied, due)
            )
            # A batch must not stall deliveries and other requests: a yield every chunk of recipients
            # and every few milliseconds of checking, however large each recipient's content is.
            if index % CHUNK == CHUNK - 1 or checked_chars >= _CHECKED_BETWEEN_YIELDS:
                checked_chars = 0
                await asyncio.sleep(0)
        return decided

    async def _route(
        self,
        agent: AgentEntry,
        submission: Content,
        claim: BatchClaim,
        decided: list[Decided],
        rules: Rules,
        requester: Principal,
    ) -> Route:
        """The request the accepted recipients wait for. A batch's retry keeps its first attempt's,
        unless it accepts recipients that attempt did not admit (refused then, accepted now: a
        domain that resolves since, a reply stop that ended): those are counted and routed anew, as
        that route was counted for, and shown to its approvers with, the first attempt's alone."""
        accepted = [one for one in decided if one.status is not Status.REJECTED]
        if claim.route is not None:
            answered = await self._store.answered(agent.name, [one.idempotency.key for one in accepted])
            accepted = [one for one, known in zip(accepted, answered, strict=True) if not known]
            if not accepted:
                return claim.route
        dues = Counter(one.due_ms for one in accepted)
        route = Route(None)
        if dues:
            route = await self._approvals.route(agent, submission, dues, rules, requester, batch=claim.id)
        if claim.id:
            await self._batches.settle(claim.id, agent, len(decided), route)
        return route

    async def _admit(
        self,
        agent: AgentEntry,
        submission: Content,
        decided: list[Decided],
        batch: str,
        route: Route,
        rules: Rules,
    ) -> list[Admission]:
        """Write the decisions, a pipelined round trip per chunk; the accepted ones go as `route` says.

        Each chunk's records are built while Redis writes the one before, so Python and Redis work
        at once; only one chunk is ever on its way, so the chunks are written in order, as one
        after another.
        """
        waits_for = route.waits.approval_id if route.waits else ""
        admissions: list[Admission] = []

        async def settle(writing: Awaitable[list[Admission]], sealed: list[Candidate]) -> None:
            admissions.extend(self._settled(await writing, sealed))

        before: tuple[asyncio.Future[list[Admission]], list[Candidate]] | None = None
        for start in range(0, len(decided), CHUNK):
            chunk = decided[start : start + CHUNK]
            sealed = [
                self._candidate(
                    agent,
                    submission,
                    one,
                    rules,
                    batch,
                    waits_for,
                    message_id=message_id,
                    released_by=route.released_by,
                )
                for one, message_id in zip(chunk, new_message_ids(len(chunk)), strict=True)
            ]
            if before is not None:
                await settle(*before)
            before = asyncio.ensure_future(self._store.admit(sealed)), sealed
            await asyncio.sleep(0)  # it sends the chunk, then waits for Redis while the next is sealed
        if before is not None:
            await settle(*before)
        return admissions

    async def _count_refusal(self, agent: AgentEntry, admissions: list[Admission]) -> None:
        """The denial rule: a submission refused by policy counts once towards `max_denials`.

        A single message is one submission, and so is a batch, however many of its recipients
        were rejected: a list with some bad rows is one mistake, not thousands. A retry that
        found its messages already decided (an idempotency key) counts nothing again. A
        submission the agent may not send at all (403) is counted in `_authorized`.
        """
        if any(admission.status is Status.REJECTED and not admission.existing for admission in admissions):
            await self._denied(agent.name)

    async def _denied(self, agent: str, activity: Sequence[str] = ()) -> None:
        """A policy refusal counts against the agent: many in a row look like a hijacked agent.

        `activity`: what a 403 counts in the agent's activity (a rejection admitted is counted by
        its admission script).
        """
        await self._safe_mode.observe(
            [scope_name(ScopeKind.AGENT, agent)], [Signal.DENIAL], activity=activity
        )

    def _candidate(
        self,
        agent: AgentEntry,
        message: Content,
        decided: Decided,
        rules: Rules,
        batch: str,
        approval: str,
        counted: MassCount | None = None,
        requester: Principal | None = None,
        *,
        message_id: str,
        released_by: str = "",
    ) -> Candidate:
        """The record of one decided recipient, ready to admit with its audit entry: waiting for
        `approval` if accepted, or counted towards the mass-send threshold by its script (`counted`,
        which may name one); with the `requester`'s token, when recalled from memory, for its
        script to check. `message_id` is its id, one of `new_message_ids`; `released_by`, the approved
        tier-2 request whose headroom let it through, if one did.

        `message` is what every recipient of the submission shares. With the recipient's `values`,
        the content is the batch's template filled with them: the record keeps the values and names
        the template instead of holding a copy; without, it is the message's own.
        """
        recipient, status, values = decided.recipient, decided.status, decided.values
        accepted = status is not Status.REJECTED
        delay_ms = self._retry_base_ms if status is Status.DEFERRED else 0
        waiting_for: Wait | None = None
        window_wait = decided.due_ms - now_ms()  # how long after now it may first go
        if accepted and window_wait > 0:
            # Due at its send windows' next opening from when it may go, so nothing polls meanwhile.
            waiting_for = Wait.SEND_WINDOW
            delay_ms = max(delay_ms, window_wait)
        enrichment = message.enrichment
        record = new_record(
            id=message_id,
            status=status,
            reasons=decided.reasons,
            approval=approval if accepted else "",
            released_by=released_by if accepted else "",
            agent=agent.name,
            agent_version=message.agent_version,
            from_name=message.sender.display_name,
            from_addr=message.sender.address,
            to=recipient.address,
            to_canonical=recipient.canonical,
            to_domain=recipient.domain,
            subject="" if values is not None else message.subject,
            text="" if values is not None else message.text or "",
            html="" if values is not None else message.html or "",
            headers="" if values is not None or not message.headers else json.dumps(message.headers),
            template=batch if values is not None else "",
            values=json.dumps(values) if values is not None else "",
            segment=message.segment,
            campaign=message.campaign,
            run_id=message.run_id,
            batch=batch or None,
            idempotency_key=message.idempotency_key,
            send_at=message.send_at,
            recipient_timezone=decided.recipient_timezone,
            enrichment_source=enrichment.source if enrichment else None,
            enrichment_fetched_at=enrichment.fetched_at if enrichment else None,
            rules_version=rules.version,
            dns_pending=status is Status.DEFERRED,
            dns_checks=1 if status is Status.DEFERRED else 0,
            waiting_for=waiting_for,
            scopes=admitted_scopes(
                recipient.domain, message.sender.address, message.segment, message.campaign, agent.name
            ),
        )
        # The cooldown runs from when the message goes, not from now: held until its due time and a
        # cooldown after, so a message due in 71 h does not let another go in the 72nd.
        cooldown_ms = int(rules.file.ingress.recipient_cooldown * 1000)
        if cooldown_ms and accepted:
            cooldown_ms += max(0, window_wait)
        return Candidate(
            record=record,
            cooldown_ms=cooldown_ms,
            idempotency=decided.idempotency,
            delay_ms=delay_ms,
            audit_entry=_audit_entry(record, decided.content),
            check_replied=decided.check_replied,
            mass_count=counted.args if counted is not None and accepted else (),
            token=(requester.token_id, requester.unchecked_hash)
            if requester is not None and requester.unchecked_hash
            else ("", ""),
        )

    def _settled(self, admissions: Sequence[Admission], candidates: Sequence[Candidate]) -> list[Admission]:
        """Count the new decisions, wake the deliverer for the soonest due, and say why a held
        message waits; a chunk at a time, so a batch counts each status once a chunk, not once a
        recipient."""
        counts: Counter[tuple[str, str]] = Counter()
        soonest: float | None = None
        settled = []
        for admission, candidate in zip(admissions, candidates, strict=True):
            if not admission.existing:
                first = admission.reasons[0].code if admission.reasons else "none"
                counts[admission.status.value, first] += 1
                if admission.status in (Status.QUEUED, Status.DEFERRED):
                    due_in = _due_in(candidate)
                    soonest = due_in if soonest is None else min(soonest, due_in)
            if admission.held_by:
                held = Reason(
                    "safe_mode",
                    f"scope {admission.held_by} is in safe mode: accepted and held until a person resumes it",
                )
                admission = dataclasses.replace(admission, reasons=(*admission.reasons, held))
            settled.append(admission)
        for (status, first), count in counts.items():
            self._metrics.submissions.labels(status, first).inc(count)
        if soonest is not None:
            self._wake(soonest)
        return settled


def _about(payload: Content) -> dict[str, str | None]:
    """What a refused submission's audit entry says about it."""
    return {
        "agent_version": payload.agent_version,
        "run_id": payload.run_id,
        "from": payload.sender.address,
        "segment": payload.segment,
    }


def _due_in(candidate: Candidate) -> float:
    """Seconds from now until an admitted candidate is due (its delay, never before its send_at)."""
    send_at = candidate.record.send_at
    asked = send_at.timestamp() - time.time() if send_at else 0.0
    return max(candidate.delay_ms / 1000, asked)


def _due_ms(
    agent: AgentEntry, message: Content, recipient: Recipient, timezone: str | None, rules: Rules, now: int
) -> int:
    """When an accepted recipient may first go: its send_at or `now`, at its send windows' next
    opening from then."""
    asked = int(message.send_at.timestamp() * 1000) if message.send_at else 0
    windowed = _Windowed(
        recipient.domain, message.sender.address, message.segment, message.campaign, agent.name, timezone
    )
    return opening_ms(rules.file, windowed, max(now, asked))


class _Windowed(NamedTuple):
    """The fields of a recipient's record that its send windows read (`windows.Windowed`), for
    their opening before the record is built: a tuple costs a tenth of a record."""

    to_domain: str
    from_addr: str
    segment: str | None
    campaign: str | None
    agent: str
    recipient_timezone: str | None


def _audit_entry(record: MessageRecord, content: Filled | None) -> str:
    """The record's `submission.decided` entry, with the hash of the `content` it gets (hashed here,
    as the chunk before is written, rather than while every recipient is decided); the admission
    script writes its outcome."""
    # The labels a message may have are in its entry when it has them: a null costs every entry bytes.
    labels = {
        "run_id": record.run_id,
        "batch": record.batch,
        "segment": record.segment,
        "campaign": record.campaign,
    }
    return audit_entry(
        "submission.decided",
        f"agent:{record.agent}",
        {
            "message_id": record.id,
            "agent": record.agent,
            "agent_version": record.agent_version,
            **{name: value for name, value in labels.items() if value is not None},
            "from": record.from_addr,
            "to": record.to,
            "rules_version": record.rules_version,
            "content_hash": content_hash(content.subject, content.text, content.html) if content else None,
            "outcome": "@",  # the admission script writes status, reasons, held_by and approval_id here
        },
    )


# Characters of content checked between two yields to the event loop: ~10 ms at the slowest (HTML).
_CHECKED_BETWEEN_YIELDS = 256 * 1024

# Redis bytes a queued recipient takes besides the content it shares: its record, indexes,
# idempotency key and audit entry (3,816 in bench/scenarios/footprint.py), rounded up.
RECIPIENT_BYTES = 4_000


def _footprint(submission: Submission) -> int:
    """About the Redis bytes admitting `submission` takes: its content once, and every recipient."""
    content = len(submission.subject) + len(submission.text or "") + len(submission.html or "")
    return content + len(recipients(submission)) * RECIPIENT_BYTES


@dataclass(frozen=True)
class _Standing:
    """What the agent may not send whatever the content, the same for every recipient of its
    submission: found once a submission, not once a recipient."""

    version: Reason | None
    stale: Reason | None


def _standing(agent: AgentEntry, message: Content, rules: Rules) -> _Standing:
    """The submission's agent version and enrichment age, judged once for all its recipients."""
    version = None
    if not agent.may_run_version(message.agent_version):
        version = Reason(
            "agent_version_not_allowed",
            f"agent {agent.name!r} may not send as version {message.agent_version!r}",
        )
    stale = None
    if message.enrichment is not None:
        age = datetime.now(UTC) - message.enrichment.fetched_at
        limit = rules.file.ingress.max_enrichment_age
        if age.total_seconds() > limit:
            stale = Reason(
                "stale_enrichment",
                f"data from {message.enrichment.source} is {age.days} days old; "
                f"the limit is {limit / 86400:g} days",
            )
    return _Standing(version, stale)


def _boundaries(standing: _Standing, content: Filled) -> list[Reason]:
    """What this agent may not send whoever the recipient is: its version, the `content` the
    recipient gets, stale data."""
    reasons = [standing.version] if standing.version else []
    reasons += check_content(content.subject, content.text, content.html)
    if standing.stale:
        reasons.append(standing.stale)
    if len(content.subject) > MAX_SUBJECT:  # a batch's values can lengthen its subject
        reasons.append(
            Reason(
                "subject_too_long",
                f"the subject is {len(content.subject)} characters once filled; the limit is {MAX_SUBJECT}",
            )
        )
    return reasons


def sender_refusal(agent_name: str, address: str, rules: Rules) -> Reason | None:
    """Why the agent may not send from `address` (not registered, not one of its inboxes), or None."""
    agent = rules.agent(agent_name)
    if agent is None:
        return unregistered(agent_name)
    if not agent.may_use_inbox(address):
        return Reason("inbox_not_allowed", f"agent {agent.name!r} may not send from {address}")
    return None


def _authorize(agent_name: str, payload: Content, rules: Rules) -> AgentEntry:
    """The register entry for the agent, if it may use this From address and segment."""
    if refused := sender_refusal(agent_name, payload.sender.address, rules):
        raise Forbidden(refused)
    agent = rules.agent(agent_name)
    assert agent is not None  # sender_refusal said it is registered
    if agent.needs_segment and payload.segment is None:
        raise Forbidden(
            Reason(
                "segment_required",
                f"agent {agent.name!r} may send only to segments {', '.join(agent.segments)}: name one",
            )
        )
    if not agent.may_use_segment(payload.segment):
        raise Forbidden(
            Reason(
                "segment_not_allowed",
                f"agent {agent.name!r} may not send to segment {payload.segment!r}",
            )
        )
    return agent


def unregistered(agent_name: str) -> Reason:
    """The refusal of an agent the rules file's register does not name."""
    return Reason("agent_not_registered", f"agent {agent_name!r} is not in the rules file")
