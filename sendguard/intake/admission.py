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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sendguard.errors import StoreFull, Unauthenticated
from sendguard.feedback.counters import Signal
from sendguard.feedback.reply_stops import ReplyStops, company_refusal
from sendguard.feedback.safe_mode import SafeMode
from sendguard.governance.approvals import Approvals, MassCount, Routing
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
from sendguard.record import MessageRecord, Wait
from sendguard.rules import AgentEntry, Rules, ScopeKind
from sendguard.scopes import admitted_scopes, scope_name
from sendguard.state.memory import MemoryBudget
from sendguard.state.store import Admission, Candidate, Idempotency, Refusable, Store
from sendguard.submission import (
    MAX_SUBJECT,
    Content,
    MessageIn,
    new_message_id,
)
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
    """One recipient decided, and the hash of the content it gets, for its audit entry (None when
    its content was refused unbuilt)."""

    candidate: Candidate
    content_hash: str | None


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
        StoreFull when Redis has no room for it, BatchConflict when a batch's idempotency key names
        another batch."""
        started = time.perf_counter()
        agent = await self._authorized(requester, submission, rules)
        # A single message of a tier-0 agent is counted and checked for a company's reply stop by
        # its admission script: the one round trip that writes it, which checks a recalled token too.
        single = not isinstance(submission, BatchIn)
        in_script = single and self._approvals.counts_in_admission(agent, submission, rules)
        if not in_script:
            await self._checked(requester)  # other writes come before that script's
        try:
            await self._memory.reserve(_footprint(submission))
        except StoreFull:
            await self._checked(requester)  # a revoked token hears that, not that Redis is full
            raise
        if isinstance(submission, BatchIn):
            fingerprinted = fingerprint(submission)  # once: the batch's key and its claim need it
            key = idempotency(submission, rules, fingerprinted)
            claim = await self._batches.claim(agent, submission, key, fingerprinted)
        else:
            key, claim = idempotency(submission, rules), BatchClaim("")
        counted = self._approvals.mass_count(agent, submission, 1, rules, requester) if in_script else None
        decided = await self._decide(agent, submission, claim.id, key, rules, in_script=in_script)
        candidates = [one.candidate for one in decided]
        if counted is None:
            # A retry of a single message is answered with its first decision by the admission
            # script: the request it waits for is looked up, not opened (and announced) again.
            first = await self._store.answered_approval(agent.name, key.key) if single else None
            if first is None:
                routing = await self._routing(agent, submission, claim, candidates, rules, requester)
            else:
                routing = await self._approvals.waited_for(first) if first else None
        if isinstance(submission, BatchIn) and any(
            candidate.record.status is not Status.REJECTED for candidate in candidates
        ):
            await self._store.keep_template(
                claim.id,
                submission.subject,
                submission.text or "",
                submission.html or "",
                json.dumps(submission.headers),
            )
        if counted is None:
            admissions = await self._admit(decided, routing)
        else:
            [admission] = await self._store.admit([_sealed(decided[0], "", counted, requester)])
            if admission.replied_until:  # nothing written: decided again with the company's refusal
                stop = company_refusal(candidates[0].record.to_domain, agent.name, admission.replied_until)
                decided = await self._decide(agent, submission, claim.id, key, rules, stopped=stop)
                candidates = [one.candidate for one in decided]
                [admission] = await self._store.admit([_sealed(decided[0], "", requester=requester)])
            if admission.revoked:  # nothing written, by either call
                raise Unauthenticated(REVOKED)
            if admission.existing:  # a retry: answered with its first decision, counted once
                routing = await self._approvals.waited_for(admission.approval) if admission.approval else None
            else:
                routing = self._approvals.routed(counted, admission.route, admission.approval, requester)
            admissions = [self._settled(admission, candidates[0])]
        await self._count_refusal(agent, admissions)
        outcomes = [
            Outcome(index, candidate.record.to, admission)
            for index, (candidate, admission) in enumerate(zip(candidates, admissions, strict=True))
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
        await self._ingress.warm(addresses, rules)
        checked = [await self._ingress.check(address, rules) for address in addresses]
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
            elif recipient.dns_temporary:
                verdict, reasons = Status.DEFERRED.value, (_DNS_TEMPORARY,)
            else:
                verdict = "would_queue"
            verdicts.append(Verdict(to, recipient.address, verdict, reasons))
        return verdicts

    async def _authorized(self, requester: Principal, payload: Content, rules: Rules) -> AgentEntry:
        """The requester's register entry; a refusal is counted and recorded before it is raised."""
        try:
            return _authorize(requester.name, payload, rules)
        except Forbidden as refused:
            about = {
                "agent_version": payload.agent_version,
                "run_id": payload.run_id,
                "from": payload.sender.address,
                "segment": payload.segment,
            }
            await self._refused(requester, [refused.reason], rules, about)
            raise

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
        """Each recipient's message filled and checked, before suppression, cooldown, approval and
        safe mode; a batch's recipients keep only their values (its template is stored once).

        A company's reply stop is looked up here, unless the admission script checks it
        (`in_script`) or it was found there already (`stopped`, for the single recipient).
        """
        entries = recipients(submission)
        await self._ingress.warm([entry.to for entry in entries], rules)
        decided: list[Decided] = []
        first_index: dict[str, int] = {}
        renderer = Renderer(submission)
        # Every recipient checked first, so one look-up finds the companies whose reply stopped this agent.
        checked: list[Recipient] = []
        for index, entry in enumerate(entries):
            checked.append(await self._ingress.check(entry.to, rules))
            if index % CHUNK == CHUNK - 1:
                await asyncio.sleep(0)  # a batch must not stall deliveries and other requests
        if stopped is not None:
            found = {checked[0].domain: stopped}
        elif in_script:
            found = {}
        else:
            found = await self._reply_stops.refusals(agent.name, {recipient.domain for recipient in checked})
        check_replied = in_script and self._reply_stops.by_domain()
        for index, (entry, recipient) in enumerate(zip(entries, checked, strict=True)):
            if too_large := renderer.oversized(entry):
                message, reasons, hashed = renderer.unfilled(entry), [too_large], None
            else:
                message = renderer.message(entry)
                reasons = _boundaries(agent, message, rules)
                hashed = content_hash(message.subject, message.text or "", message.html or "")
            if company := found.get(recipient.domain):
                reasons.append(company)
            seen = first_index.setdefault(recipient.address, index)
            if seen != index:
                duplicate = f"{recipient.address} is already recipient {seen} of this batch"
                reasons.append(Reason("duplicate_recipient", duplicate))
            # A batch's recipients answer a retry of the batch by their place in it.
            each = Idempotency(f"batch:{batch_id}:{index}", key.ms, key.keeps_rejected) if batch_id else key
            values = entry.vars if batch_id else None
            candidate = self._candidate(agent, message, recipient, reasons, rules, batch_id, values, each)
            if check_replied:
                candidate = dataclasses.replace(candidate, check_replied=True)
            decided.append(Decided(candidate, hashed))
            if index % CHUNK == CHUNK - 1:
                await asyncio.sleep(0)  # a batch must not stall deliveries and other requests
        return decided

    async def _routing(
        self,
        agent: AgentEntry,
        submission: Content,
        claim: BatchClaim,
        candidates: list[Candidate],
        rules: Rules,
        requester: Principal,
    ) -> Routing | None:
        """The request the accepted recipients wait for; a batch's retry keeps its first attempt's."""
        if claim.settled:
            return claim.routing
        accepted = sum(1 for candidate in candidates if candidate.record.status is not Status.REJECTED)
        routing = None
        if accepted:
            routing = await self._approvals.route(
                agent, submission, accepted, rules, requester, batch=claim.id
            )
        if claim.id:
            await self._batches.settle(claim.id, agent, len(candidates), routing)
        return routing

    async def _admit(self, decided: list[Decided], routing: Routing | None) -> list[Admission]:
        """Write the decisions, a pipelined round trip per chunk; the accepted ones wait for `routing`.

        Each chunk is sealed while Redis runs the one before, so Python and Redis work at once; only
        one chunk is ever on its way, so the chunks are written in order, as one after another.
        """
        waits_for = routing.approval_id if routing else ""
        admissions: list[Admission] = []

        async def settle(writing: Awaitable[list[Admission]], sealed: list[Candidate]) -> None:
            admitted = zip(await writing, sealed, strict=True)
            admissions.extend(self._settled(admission, candidate) for admission, candidate in admitted)

        before: tuple[asyncio.Future[list[Admission]], list[Candidate]] | None = None
        for start in range(0, len(decided), CHUNK):
            sealed = [
                _sealed(one, waits_for if one.candidate.record.status is not Status.REJECTED else "")
                for one in decided[start : start + CHUNK]
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
        message: MessageIn,
        recipient: Recipient,
        boundaries: list[Reason],
        rules: Rules,
        batch: str,
        values: Mapping[str, str] | None,
        key: Idempotency,
    ) -> Candidate:
        """The decision on one recipient: the agent's boundaries, then what the recipient checks found.

        With `values`, the content is the batch's template filled with them: the record keeps the
        values and names the template instead of holding a copy.
        """
        reasons = (*boundaries, *recipient.reasons)
        if reasons:
            status = Status.REJECTED
        elif recipient.dns_temporary:
            status = Status.DEFERRED
            reasons = (_DNS_TEMPORARY,)
        else:
            status = Status.QUEUED
        message_id = new_message_id()
        enrichment = message.enrichment
        now = now_ms()
        asked = int(message.send_at.timestamp() * 1000) if message.send_at else 0
        # Due later than now, it waits for a send window whatever its windows say (they open at or
        # after any time they are asked about): known before the record is built, not rebuilt for.
        waits_for_window = status is not Status.REJECTED and asked > now
        record = MessageRecord(
            id=message_id,
            status=status,
            reasons=reasons,
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
            recipient_timezone=message.recipient_timezone,
            enrichment_source=enrichment.source if enrichment else None,
            enrichment_fetched_at=enrichment.fetched_at if enrichment else None,
            rules_version=rules.version,
            dns_pending=status is Status.DEFERRED,
            dns_checks=1 if status is Status.DEFERRED else 0,
            scopes=admitted_scopes(
                recipient.domain, message.sender.address, message.segment, message.campaign, agent.name
            ),
            waiting_for=Wait.SEND_WINDOW if waits_for_window else None,
        )
        delay_ms = self._retry_base_ms if status is Status.DEFERRED else 0
        if status is not Status.REJECTED:
            # Due at its send windows' next opening from when it may go, so nothing polls meanwhile.
            window_wait = opening_ms(rules.file, record, max(now, asked)) - now
            if window_wait > 0:
                if not waits_for_window:  # due now, its windows closed
                    record = dataclasses.replace(record, waiting_for=Wait.SEND_WINDOW)
                delay_ms = max(delay_ms, window_wait)
        return Candidate(
            record=record,
            cooldown_ms=int(rules.file.ingress.recipient_cooldown * 1000),
            idempotency=key,
            delay_ms=delay_ms,
        )

    def _settled(self, admission: Admission, candidate: Candidate) -> Admission:
        """Count a new decision, wake the deliverer for it, and say why a held message waits."""
        if not admission.existing:
            first = admission.reasons[0].code if admission.reasons else "none"
            self._metrics.submissions.labels(admission.status.value, first).inc()
            if admission.status in (Status.QUEUED, Status.DEFERRED):
                self._wake(_due_in(candidate))
        if admission.held_by:
            held = Reason(
                "safe_mode",
                f"scope {admission.held_by} is in safe mode: accepted and held until a person resumes it",
            )
            admission = dataclasses.replace(admission, reasons=(*admission.reasons, held))
        return admission


def _due_in(candidate: Candidate) -> float:
    """Seconds from now until an admitted candidate is due (its delay, never before its send_at)."""
    send_at = candidate.record.send_at
    asked = send_at.timestamp() - time.time() if send_at else 0.0
    return max(candidate.delay_ms / 1000, asked)


def _sealed(
    decided: Decided, approval: str, counted: MassCount | None = None, requester: Principal | None = None
) -> Candidate:
    """The candidate with the request it waits for (or the mass-send count its script makes, which
    may name one), its audit entry, and the recalled token its script checks, ready to admit."""
    candidate = decided.candidate
    record = candidate.record
    # The labels a message may have are in its entry when it has them: a null costs every entry bytes.
    labels = {
        "run_id": record.run_id,
        "batch": record.batch,
        "segment": record.segment,
        "campaign": record.campaign,
    }
    trail = audit_entry(
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
            "content_hash": decided.content_hash,
            "outcome": "@",  # the admission script writes status, reasons, held_by and approval_id here
        },
    )
    return dataclasses.replace(
        candidate,
        record=dataclasses.replace(record, approval=approval) if approval != record.approval else record,
        audit_entry=trail,
        mass_count=counted.args if counted is not None and record.status is not Status.REJECTED else (),
        token=(requester.token_id, requester.unchecked_hash)
        if requester is not None and requester.unchecked_hash
        else ("", ""),
    )


_DNS_TEMPORARY = Reason("dns_temporary", "DNS failed temporarily; will check again")

# Redis bytes a queued recipient takes besides the content it shares: its record, indexes,
# idempotency key and audit entry (3,816 in bench/scenarios/footprint.py), rounded up.
RECIPIENT_BYTES = 4_000


def _footprint(submission: Submission) -> int:
    """About the Redis bytes admitting `submission` takes: its content once, and every recipient."""
    content = len(submission.subject) + len(submission.text or "") + len(submission.html or "")
    return content + len(recipients(submission)) * RECIPIENT_BYTES


def _boundaries(agent: AgentEntry, message: MessageIn, rules: Rules) -> list[Reason]:
    """What this agent may not send whoever the recipient is: its version, the content, stale data."""
    reasons = []
    if not agent.may_run_version(message.agent_version):
        reasons.append(
            Reason(
                "agent_version_not_allowed",
                f"agent {agent.name!r} may not send as version {message.agent_version!r}",
            )
        )
    reasons += check_content(message.subject, message.text, message.html)
    if message.enrichment is not None:
        age = datetime.now(UTC) - message.enrichment.fetched_at
        limit = rules.file.ingress.max_enrichment_age
        if age.total_seconds() > limit:
            reasons.append(
                Reason(
                    "stale_enrichment",
                    f"data from {message.enrichment.source} is {age.days} days old; "
                    f"the limit is {limit / 86400:g} days",
                )
            )
    if len(message.subject) > MAX_SUBJECT:  # a batch's values can lengthen its subject
        reasons.append(
            Reason(
                "subject_too_long",
                f"the subject is {len(message.subject)} characters once filled; the limit is {MAX_SUBJECT}",
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
