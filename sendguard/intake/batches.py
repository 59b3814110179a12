"""Batches: one template, many recipients, a decision for each and one approval request for all.

Placeholders `{{ name }}` are filled from each recipient's `vars` by plain substitution: no
template code runs, and a value goes into the HTML part escaped. A placeholder without a value
stays as it is, so the content boundary rejects that recipient as `unrendered_template`. Every
recipient goes through every ingress check; admission is pipelined a few hundred recipients per
round trip, so 10,000 recipients take seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import html
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sendguard.errors import SendguardError
from sendguard.governance.approvals import Approvals, Routing
from sendguard.governance.audit import AuditLog, canonical_hash, content_hash
from sendguard.governance.tokens import Principal
from sendguard.intake.admission import Gateway
from sendguard.intake.recipients import Ingress
from sendguard.metrics import Metrics
from sendguard.model import Reason, Status
from sendguard.rules import AgentEntry, Rules
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated
from sendguard.state.store import IDEMPOTENCY_TTL_MS, RETENTION_MS, Admission, Candidate, Store
from sendguard.submission import MAX_SUBJECT, Content, MessageIn, SingleLine

MAX_RECIPIENTS = 50_000
CHUNK = 500  # recipients per pipelined round trip, and between yields to the event loop
_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,63}"
PLACEHOLDER = re.compile(rf"(\{{\{{[ \t]*({_NAME})[ \t]*\}}\}})")


def _var_name(name: str) -> str:
    if not re.fullmatch(_NAME, name):
        raise ValueError("a placeholder name is a letter or _, then up to 63 letters, digits, _ . or -")
    return name


VarName = Annotated[str, AfterValidator(_var_name)]
_FILLED = ("subject", "text", "html")


class BatchRecipient(BaseModel):
    """One recipient of a batch and the values for its placeholders."""

    model_config = ConfigDict(extra="forbid")

    to: SingleLine = Field(min_length=3, max_length=320)
    vars: dict[VarName, Annotated[SingleLine, Field(max_length=1000)]] = Field(
        default_factory=dict, max_length=50
    )


class BatchIn(Content):
    """The body of `POST /v1/batches`: the message once, its recipients many times."""

    recipients: list[BatchRecipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)


class BatchConflict(SendguardError):
    """The idempotency key already names a different batch."""


@dataclass(frozen=True)
class Outcome:
    """What became of one recipient."""

    index: int
    to: str
    admission: Admission


@dataclass(frozen=True)
class BatchResult:
    id: str
    outcomes: list[Outcome]
    approval: Routing | None


class Template:
    """A subject or body split once at its placeholders, so filling it per recipient is a join."""

    def __init__(self, text: str, *, escape: bool = False) -> None:
        # split() with two groups: literal, whole placeholder, name, literal, ...
        pieces = PLACEHOLDER.split(text)
        self._literals = pieces[0::3]
        self._placeholders = pieces[1::3]
        self._names = pieces[2::3]
        self._escape = escape

    def fill(self, values: Mapping[str, str]) -> str:
        """Each known name's value in place of its placeholder; unknown ones stay as they are."""
        out = [self._literals[0]]
        for placeholder, name, literal in zip(
            self._placeholders, self._names, self._literals[1:], strict=True
        ):
            value = values.get(name)
            if value is None:
                out.append(placeholder)
            else:
                out.append(html.escape(value) if self._escape else value)
            out.append(literal)
        return "".join(out)


class Batches:
    """Decides every recipient of a batch and admits them under one approval request."""

    def __init__(
        self,
        gateway: Gateway,
        ingress: Ingress,
        approvals: Approvals,
        store: Store,
        audit: AuditLog,
        keys: Keys,
        metrics: Metrics,
    ) -> None:
        self._gateway = gateway
        self._metrics = metrics
        self._ingress = ingress
        self._approvals = approvals
        self._store = store
        self._audit = audit
        self._keys = keys

    async def submit(self, requester: Principal, batch: BatchIn, rules: Rules) -> BatchResult:
        agent = await self._gateway.authorized(requester, batch, rules)
        batch_id, replayed = await self._claim(agent, batch)
        candidates, overstepped = await self._decide(agent, batch, batch_id, rules)
        accepted = sum(1 for candidate in candidates if candidate.status is not Status.REJECTED)
        routing = await self._routing(agent, batch, batch_id, accepted, rules, requester, replayed)
        waits_for = routing.approval_id if routing else ""
        admissions: list[Admission] = []
        for start in range(0, len(candidates), CHUNK):
            sealed = [
                self._gateway.sealed(candidate, waits_for if candidate.status is not Status.REJECTED else "")
                for candidate in candidates[start : start + CHUNK]
            ]
            admissions += [self._gateway.settled(admission) for admission in await self._store.admit(sealed)]
        if overstepped:
            # One count per batch: a template that breaks a boundary is one mistake, not thousands.
            await self._gateway.denied(agent.name)
        outcomes = [
            Outcome(index, candidate.address, admission)
            for index, (candidate, admission) in enumerate(zip(candidates, admissions, strict=True))
        ]
        await self._record(requester, agent, batch, batch_id, outcomes, routing, rules)
        self._metrics.batch_recipients.observe(len(outcomes))
        return BatchResult(batch_id, outcomes, routing)

    async def _decide(
        self, agent: AgentEntry, batch: BatchIn, batch_id: str, rules: Rules
    ) -> tuple[list[Candidate], bool]:
        """Each recipient's message and checks; True if any crossed a content or version boundary."""
        await self._ingress.warm([entry.to for entry in batch.recipients], rules)
        candidates: list[Candidate] = []
        first_index: dict[str, int] = {}
        overstepped = False
        renderer = Renderer(batch)
        for index, entry in enumerate(batch.recipients):
            message = renderer.message(entry)
            recipient = await self._ingress.check(entry.to, rules)
            boundaries = self._gateway.boundaries(agent, message, rules)
            if len(message.subject) > MAX_SUBJECT:
                boundaries.append(
                    Reason(
                        "subject_too_long",
                        f"the subject is {len(message.subject)} characters once filled; "
                        f"the limit is {MAX_SUBJECT}",
                    )
                )
            overstepped = overstepped or bool(boundaries)
            seen = first_index.setdefault(recipient.address, index)
            if seen != index:
                duplicate = f"{recipient.address} is already recipient {seen} of this batch"
                boundaries.append(Reason("duplicate_recipient", duplicate))
            recipient.reasons[:0] = boundaries
            key = f"batch:{batch_id}:{index}"
            candidates.append(
                self._gateway.candidate(agent, message, recipient, rules, batch=batch_id, idempotency_key=key)
            )
            if index % CHUNK == CHUNK - 1:
                await asyncio.sleep(0)  # a batch must not stall deliveries and other requests
        return candidates, overstepped

    async def _claim(self, agent: AgentEntry, batch: BatchIn) -> tuple[str, bool]:
        """A new batch id, or the one an idempotency key already names (True: a retry)."""
        fresh = secrets.token_hex(8)
        if batch.idempotency_key is None:
            return fresh, False
        k = self._keys
        key = k.batch_idempotency(agent.name, batch.idempotency_key)
        fingerprint = _fingerprint(batch)
        redis = self._store.redis
        async with translated():
            claimed = await redis.set(key, fresh, nx=True, px=IDEMPOTENCY_TTL_MS)
        if claimed:
            await self._keep(fresh, {"fingerprint": fingerprint})
            return fresh, False
        async with translated():
            batch_id = str(await redis.get(key))
            stored = await redis.hget(k.batch(batch_id), "fingerprint")
        if stored is not None and stored != fingerprint:
            raise BatchConflict(
                f"idempotency key {batch.idempotency_key!r} was used for a different batch ({batch_id})"
            )
        return batch_id, True

    async def _routing(
        self,
        agent: AgentEntry,
        batch: BatchIn,
        batch_id: str,
        accepted: int,
        rules: Rules,
        requester: Principal,
        replayed: bool,
    ) -> Routing | None:
        """The batch's approval request; a retry keeps the one the first attempt opened."""
        if replayed:
            async with translated():
                found = await self._store.redis.hmget(self._keys.batch(batch_id), ["approval", "tier", "why"])
            if found[0] is not None:
                return Routing(str(found[0]), int(str(found[1])), str(found[2])) if found[0] else None
        routing = None
        if accepted:
            routing = await self._approvals.route(agent, batch, accepted, rules, requester, batch=batch_id)
        await self._keep(
            batch_id,
            {
                "agent": agent.name,
                "recipients": str(len(batch.recipients)),
                "approval": routing.approval_id if routing else "",
                "tier": str(routing.tier if routing else 0),
                "why": routing.why if routing else "",
            },
        )
        return routing

    async def _keep(self, batch_id: str, fields: dict[str, str]) -> None:
        """Write to the batch's record, kept as long as its messages: one round trip."""
        record = self._keys.batch(batch_id)
        async with translated(), self._store.redis.pipeline(transaction=True) as pipe:
            pipe.hset(record, items=["id", batch_id, *(part for pair in fields.items() for part in pair)])
            pipe.pexpire(record, RETENTION_MS)
            await pipe.execute()

    async def _record(
        self,
        requester: Principal,
        agent: AgentEntry,
        batch: BatchIn,
        batch_id: str,
        outcomes: list[Outcome],
        routing: Routing | None,
        rules: Rules,
    ) -> None:
        """The batch as a whole in the audit trail; each recipient's decision has its own entry."""
        counts: dict[str, int] = {}
        for outcome in outcomes:
            status = outcome.admission.status.value
            counts[status] = counts.get(status, 0) + 1
        await self._audit.append(
            "batch.submitted",
            requester.actor,
            {
                "batch": batch_id,
                "agent": agent.name,
                "agent_version": batch.agent_version,
                "run_id": batch.run_id,
                "from": batch.sender.address,
                "segment": batch.segment,
                "campaign": batch.campaign,
                "recipients": len(outcomes),
                "by_status": counts,
                "approval_id": routing.approval_id if routing else None,
                "tier": str(routing.tier if routing else 0),
                "rules_version": rules.version,
                "template_hash": content_hash(batch.subject, batch.text, batch.html),
            },
        )


class Renderer:
    """Makes the message each recipient gets from the batch: its address, its values filled in."""

    def __init__(self, batch: BatchIn) -> None:
        self._shared = {name: getattr(batch, name) for name in Content.model_fields if name not in _FILLED}
        self._subject = Template(batch.subject)
        self._text = Template(batch.text) if batch.text else None
        self._html = Template(batch.html, escape=True) if batch.html else None

    def message(self, entry: BatchRecipient) -> MessageIn:
        """Built without validation: the batch was validated, and values cannot break a header
        (they are single lines); what filling can break, the subject's length, the caller checks."""
        values = entry.vars
        return MessageIn.model_construct(
            **self._shared,
            to=entry.to,
            subject=self._subject.fill(values),
            text=self._text.fill(values) if self._text else None,
            html=self._html.fill(values) if self._html else None,
        )


def _fingerprint(batch: BatchIn) -> str:
    """A hash of the whole request, so a reused idempotency key with other content is caught."""
    return canonical_hash(batch.model_dump(mode="json", by_alias=True))
