"""Batches: one template, many recipients, a decision for each and one approval request for all.

Placeholders `{{ name }}` are filled from each recipient's `vars` (see templates.py); the template
is stored once and each recipient keeps only its values. Every recipient is filled and goes through
every ingress check and content boundary before any is admitted; admission (`admission.py`, where
a single message is a batch of one) is pipelined a few hundred recipients per round trip, so
10,000 recipients take seconds, not minutes. Here: the batch's form, its filling, its idempotency
claim, and its own record and audit entry.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from sendguard.errors import SendguardError
from sendguard.governance.approvals import Route, Routing
from sendguard.governance.audit import AuditLog, canonical_hash, content_hash
from sendguard.governance.tokens import Principal
from sendguard.metrics import Metrics
from sendguard.model import Reason, Status
from sendguard.rules import AgentEntry, Rules
from sendguard.state.redis_connection import translated
from sendguard.state.store import IDEMPOTENCY_TTL_MS, RETENTION_MS, Idempotency, Store
from sendguard.submission import MAX_BODY_BYTES, Content, MessageIn, SingleLine, TimeZoneName
from sendguard.templates import NAME, BatchTemplate, Filled

MAX_RECIPIENTS = 50_000
# The work of filling and checking all of a batch's recipients, in bytes: each recipient's text and
# html once filled (every recipient's content is checked, intake/boundaries.py, at 25 MB/s of one
# core for HTML to 80 for text) and PLACEHOLDER_WORK for each placeholder filled, which costs about
# that much whatever it is filled with (an empty value too). This bounds what one request costs to
# seconds: a 1 MiB template to a few hundred recipients, or 100,000 placeholders to a thousand,
# took half a minute and more.
MAX_BATCH_CONTENT = 256 * 1024 * 1024
PLACEHOLDER_WORK = 16
CHUNK = 500  # recipients per pipelined round trip, and between yields to the event loop


_VAR_NAME = re.compile(NAME)  # compiled once: a batch's recipients name thousands of values


def _var_name(name: str) -> str:
    if not _VAR_NAME.fullmatch(name):
        raise ValueError("a placeholder name is a letter or _, then up to 63 letters, digits, _ . or -")
    return name


VarName = Annotated[str, AfterValidator(_var_name)]


class BatchRecipient(BaseModel):
    """One recipient of a batch and the values for its placeholders."""

    model_config = ConfigDict(extra="forbid")

    to: SingleLine = Field(min_length=3, max_length=320)
    vars: dict[VarName, Annotated[SingleLine, Field(max_length=1000)]] = Field(
        default_factory=dict, max_length=50
    )
    recipient_timezone: TimeZoneName | None = None


class BatchIn(Content):
    """The body of `POST /v1/batches`: the message once, its recipients many times."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from": "Alice <alice@acme.example>",
                    "subject": "A question for {{company}}",
                    "text": "Hi {{first_name}}, ...",
                    "html": "<p>Hi {{first_name}}, ...</p>",
                    "campaign": "q4",
                    "agent_version": "sdr-bot@1.4.2",
                    "idempotency_key": "q4-launch-1",
                    "recipients": [
                        {"to": "ann@initech.example", "vars": {"first_name": "Ann", "company": "Initech"}},
                        {"to": "bo@globex.example", "vars": {"first_name": "Bo", "company": "Globex"}},
                    ],
                }
            ]
        }
    )

    recipients: list[BatchRecipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)

    @field_validator("recipients")
    @classmethod
    def _within_content_budget(
        cls, recipients: list[BatchRecipient], info: ValidationInfo
    ) -> list[BatchRecipient]:
        text, html = info.data.get("text") or "", info.data.get("html") or ""
        template = BatchTemplate(info.data.get("subject") or "", text, html)
        filled = sum(sum(template.body_sizes(recipient.vars)) for recipient in recipients)
        placeholders = template.placeholders * len(recipients)
        if filled + PLACEHOLDER_WORK * placeholders > MAX_BATCH_CONTENT:
            raise ValueError(
                f"the text and html filled for every recipient come to {filled:,} bytes, with "
                f"{placeholders:,} placeholders to fill ({PLACEHOLDER_WORK} bytes' work each); a batch "
                f"may have {MAX_BATCH_CONTENT:,} (256 MiB) in all, since each recipient's content is "
                "made and checked: send it as several smaller batches"
            )
        return recipients


class BatchConflict(SendguardError):
    """The idempotency key already names a different batch."""


@dataclass(frozen=True)
class BatchClaim:
    """A batch's id; on a retry of an attempt that got as far as choosing its approval request,
    also where approval put its messages then."""

    id: str
    route: Route | None = None


class BatchRecords:
    """A batch's own record, kept as long as its messages (idempotency, approval request), and its
    audit entry; each recipient's decision is recorded by admission like any message's."""

    def __init__(self, store: Store, audit: AuditLog, metrics: Metrics) -> None:
        self._metrics = metrics
        self._redis = store.redis
        self._keys = store.keys
        self._audit = audit

    async def claim(
        self, agent: AgentEntry, batch: BatchIn, idempotency: Idempotency, fingerprint: str
    ) -> BatchClaim:
        """A new batch id, or the one its idempotency key already names (a retry); `fingerprint` is
        the batch's (see `fingerprint`), which a retry must match."""
        fresh = secrets.token_hex(8)
        key = self._keys.batch_idempotency(agent.name, idempotency.key)
        async with translated():
            claimed = await self._redis.set(key, fresh, nx=True, px=idempotency.ms)
        if claimed:
            await self._keep(fresh, {"fingerprint": fingerprint})
            return BatchClaim(fresh)
        async with translated():
            batch_id = str(await self._redis.get(key))
            stored, approval, tier, why, released_by = await self._redis.hmget(
                self._keys.batch(batch_id), ["fingerprint", "approval", "tier", "why", "released_by"]
            )
        if stored is not None and stored != fingerprint:
            raise BatchConflict(
                f"idempotency key {batch.idempotency_key!r} was used for a different batch ({batch_id})"
            )
        if approval is None:  # the first attempt stopped before choosing its request
            return BatchClaim(batch_id)
        waits = Routing(str(approval), int(str(tier)), str(why)) if approval else None
        return BatchClaim(batch_id, Route(waits, str(released_by or "")))

    async def settle(self, batch_id: str, agent: AgentEntry, recipients: int, route: Route) -> None:
        """Keep where approval put the batch's accepted recipients, for its retries."""
        waits = route.waits
        await self._keep(
            batch_id,
            {
                "agent": agent.name,
                "recipients": str(recipients),
                "approval": waits.approval_id if waits else "",
                "tier": str(waits.tier if waits else 0),
                "why": waits.why if waits else "",
                "released_by": route.released_by,
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
DERIVED_MIN_MS = 3600 * 1000  # a derived idempotency key answers retries for at least an hour


def idempotency(submission: Submission, rules: Rules, fingerprinted: str | None = None) -> Idempotency:
    """The agent's own `idempotency_key` (kept 7 days), else one derived from the whole request.

    Every field counts (from, to or recipients, subject, text, html, headers, labels, run id,
    agent version, send_at, enrichment), so a retry of the same request is answered by the first
    and two requests that differ in anything never share a key. A derived key answers only with
    an accepted message: a rejected one is decided again, so a repeat after the cause went away
    (a suppression lifted, the rules changed) is not told the old rejection. It lives as long as
    the recipient cooldown, and at least an hour: within it the same content could not go to the
    same recipient again anyway, so it only turns a false `recipient_cooldown` into the first
    answer; after it, the same request is a new message, as the rules allow. An agent that means
    to send the same content twice gives each its own `idempotency_key`. `fingerprinted`: the
    submission's `fingerprint` when it was already taken (a batch's costs a tenth of a second).
    """
    if submission.idempotency_key is not None:
        return Idempotency(submission.idempotency_key, IDEMPOTENCY_TTL_MS, keeps_rejected=True)
    cooldown_ms = int(rules.file.ingress.recipient_cooldown * 1000)
    # 128 bits of the fingerprint name the key: as unique among one agent's requests, half the bytes.
    return Idempotency(
        f"content:{(fingerprinted or fingerprint(submission))[:32]}",
        max(cooldown_ms, DERIVED_MIN_MS),
        keeps_rejected=False,
    )


def recipients(submission: Submission) -> list[BatchRecipient]:
    """Who a submission goes to: a single message is a batch of one, with no values to fill in."""
    if isinstance(submission, BatchIn):
        return submission.recipients
    return [
        BatchRecipient.model_construct(
            to=submission.to, vars={}, recipient_timezone=submission.recipient_timezone
        )
    ]


_NO_TEMPLATE = BatchTemplate("", "", "")


class Renderer:
    """Makes the content each recipient gets from the submission: its values filled in.

    A single message is its own and only recipient's message: it has no values to fill (filling
    with none changes nothing) and its body was held to the cap by its model, so it is not split
    into a template.
    """

    def __init__(self, submission: Submission) -> None:
        self._single: MessageIn | None = None
        self._template = _NO_TEMPLATE
        if isinstance(submission, MessageIn):
            self._single = submission
        else:
            self._template = BatchTemplate(submission.subject, submission.text or "", submission.html or "")

    @property
    def placeholder_work(self) -> int:
        """What filling one recipient costs besides its content's bytes (see PLACEHOLDER_WORK)."""
        return PLACEHOLDER_WORK * self._template.placeholders

    def oversized(self, entry: BatchRecipient) -> Reason | None:
        """Why this recipient's filled text or html would be over the cap, found without filling it."""
        if self._single is not None:
            return None
        for part, size in zip(("text", "html"), self._template.body_sizes(entry.vars), strict=True):
            if size > MAX_BODY_BYTES:
                return Reason(
                    "content_too_large",
                    f"the {part} is {size:,} bytes once filled; the limit is {MAX_BODY_BYTES:,} (1 MiB)",
                )
        return None

    def content(self, entry: BatchRecipient) -> Filled:
        """The subject, text and html this recipient gets ("" for a part the message lacks). What
        filling can break, the subject's length and the body's size, admission checks; what the
        recipients share (sender, labels, headers) stays the submission's."""
        if self._single is not None:
            return Filled(self._single.subject, self._single.text or "", self._single.html or "")
        return self._template.fill(entry.vars)


def fingerprint(submission: Submission) -> str:
    """A hash of the whole request, so a reused idempotency key with other content is caught."""
    return canonical_hash(submission.model_dump(mode="json", by_alias=True))
