"""Batches: one template, many recipients, a decision for each and one approval request for all.

Placeholders `{{ name }}` are filled from each recipient's `vars` by plain substitution: no
template code runs, and a value goes into the HTML part escaped. A placeholder without a value
stays as it is, so the content boundary rejects that recipient as `unrendered_template`. Every
recipient goes through every ingress check; admission (`admission.py`, where a single message is
a batch of one) is pipelined a few hundred recipients per round trip, so 10,000 recipients take
seconds, not minutes. Here: the batch's form, its placeholders, and its own record and audit entry.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sendguard.errors import SendguardError
from sendguard.governance.approvals import Routing
from sendguard.governance.audit import AuditLog, canonical_hash, content_hash
from sendguard.governance.tokens import Principal
from sendguard.metrics import Metrics
from sendguard.model import Status
from sendguard.rules import AgentEntry, Rules
from sendguard.state.redis_connection import translated
from sendguard.state.store import IDEMPOTENCY_TTL_MS, RETENTION_MS, Store
from sendguard.submission import Content, MessageIn, SingleLine

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


@dataclass(frozen=True)
class BatchClaim:
    """A batch's id; on a retry, also the approval request its first attempt settled on."""

    id: str
    settled: bool = False  # a retry of an attempt that got as far as choosing its request
    routing: Routing | None = None


class BatchRecords:
    """A batch's own record, kept as long as its messages (idempotency, approval request), and its
    audit entry; each recipient's decision is recorded by admission like any message's."""

    def __init__(self, store: Store, audit: AuditLog, metrics: Metrics) -> None:
        self._metrics = metrics
        self._redis = store.redis
        self._keys = store.keys
        self._audit = audit

    async def claim(self, agent: AgentEntry, batch: BatchIn) -> BatchClaim:
        """A new batch id, or the one an idempotency key already names (a retry)."""
        fresh = secrets.token_hex(8)
        if batch.idempotency_key is None:
            return BatchClaim(fresh)
        key = self._keys.batch_idempotency(agent.name, batch.idempotency_key)
        fingerprint = _fingerprint(batch)
        async with translated():
            claimed = await self._redis.set(key, fresh, nx=True, px=IDEMPOTENCY_TTL_MS)
        if claimed:
            await self._keep(fresh, {"fingerprint": fingerprint})
            return BatchClaim(fresh)
        async with translated():
            batch_id = str(await self._redis.get(key))
            stored, approval, tier, why = await self._redis.hmget(
                self._keys.batch(batch_id), ["fingerprint", "approval", "tier", "why"]
            )
        if stored is not None and stored != fingerprint:
            raise BatchConflict(
                f"idempotency key {batch.idempotency_key!r} was used for a different batch ({batch_id})"
            )
        if approval is None:  # the first attempt stopped before choosing its request
            return BatchClaim(batch_id)
        return BatchClaim(
            batch_id, True, Routing(str(approval), int(str(tier)), str(why)) if approval else None
        )

    async def settle(
        self, batch_id: str, agent: AgentEntry, recipients: int, routing: Routing | None
    ) -> None:
        """Keep the request the batch's accepted recipients wait for, for its retries."""
        await self._keep(
            batch_id,
            {
                "agent": agent.name,
                "recipients": str(recipients),
                "approval": routing.approval_id if routing else "",
                "tier": str(routing.tier if routing else 0),
                "why": routing.why if routing else "",
            },
        )

    async def _keep(self, batch_id: str, fields: dict[str, str]) -> None:
        """Write to the batch's record, kept as long as its messages: one round trip."""
        record = self._keys.batch(batch_id)
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(record, items=["id", batch_id, *(part for pair in fields.items() for part in pair)])
            pipe.pexpire(record, RETENTION_MS)
            await pipe.execute()

    async def record(
        self,
        requester: Principal,
        agent: AgentEntry,
        batch: BatchIn,
        batch_id: str,
        statuses: Sequence[Status],
        routing: Routing | None,
        rules: Rules,
    ) -> None:
        """The batch as a whole in the audit trail and the size histogram."""
        counts: dict[str, int] = {}
        for status in statuses:
            counts[status.value] = counts.get(status.value, 0) + 1
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
                "recipients": len(statuses),
                "by_status": counts,
                "approval_id": routing.approval_id if routing else None,
                "tier": str(routing.tier if routing else 0),
                "rules_version": rules.version,
                "template_hash": content_hash(batch.subject, batch.text, batch.html),
            },
        )
        self._metrics.batch_recipients.observe(len(statuses))


Submission = MessageIn | BatchIn


def recipients(submission: Submission) -> list[BatchRecipient]:
    """Who a submission goes to: a single message is a batch of one, with no values to fill in."""
    if isinstance(submission, BatchIn):
        return submission.recipients
    return [BatchRecipient.model_construct(to=submission.to, vars={})]


class Renderer:
    """Makes the message each recipient gets from the submission: its address, its values filled in."""

    def __init__(self, batch: Content) -> None:
        self._shared = {name: getattr(batch, name) for name in Content.model_fields if name not in _FILLED}
        self._subject = Template(batch.subject)
        self._text = Template(batch.text) if batch.text else None
        self._html = Template(batch.html, escape=True) if batch.html else None

    def message(self, entry: BatchRecipient) -> MessageIn:
        """Built without validation: the submission was validated, and values cannot break a header
        (they are single lines); what filling can break, the subject's length, admission checks."""
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
