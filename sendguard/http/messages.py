"""The agent's side of the API: submit, read, list and cancel messages, check recipients, and what
it may send now.

Each route's work is a plain function of the runtime and the caller (`submit`, `read`, ...), so the
MCP tools served in the daemon (`mcp_tools.py`) call exactly what the routes call: one admission
path (`runtime.admissions.submit`), one set of answers.
"""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from sendguard.delivery.throttle import MassSendLine
from sendguard.governance.approvals import Routing
from sendguard.governance.roles import Role
from sendguard.governance.tokens import Principal
from sendguard.http.access import Agent, Reader, RuntimeDep, Submitter, runtime_of
from sendguard.http.docs import Tag
from sendguard.http.errors import SIGNED_IN, error_responses
from sendguard.intake.admission import Forbidden, approval_reason, unregistered
from sendguard.intake.batches import BatchIn
from sendguard.model import CANCELLABLE, Reason, Status, iso_ms
from sendguard.parts import Runtime
from sendguard.record import MessageRecord
from sendguard.scopes import concerns
from sendguard.submission import MessageIn

router = APIRouter()

MAX_CHECKED = 100  # addresses one recipient check takes: a list's worth, not a whole list's
MAX_LISTED = 200  # messages one page of an agent's list holds


class ApprovalRef(BaseModel):
    """The approval request a submission waits for: who must approve it, and until when."""

    id: str
    tier: int
    why: str
    approvals_needed: int = Field(description="1 for tier 1; 2 for tier 2, from two people in two groups")
    who_approves: str = Field(description="who must approve, in words")
    expires: str = Field(description="when the request expires, and its messages with it, if nobody decides")


class Decision(BaseModel):
    """The answer to a submission: always an id and a status, with reasons when there are any."""

    id: str
    status: str
    reasons: list[Reason]
    # Present only while the message waits for one, so every other answer reads as it always has.
    approval: ApprovalRef | None = Field(
        default=None,
        exclude_if=lambda approval: approval is None,
        description="while `pending_approval`: the request the message waits for",
    )


class BatchRecipientOut(BaseModel):
    """One recipient's decision; `index` is its place in the request's list, from 0."""

    index: int
    to: str
    id: str
    status: str
    reasons: list[Reason]


class BatchOut(BaseModel):
    """Every recipient gets an id: accepted ones wait or go out, rejected ones say why."""

    id: str
    recipients: int
    accepted: list[BatchRecipientOut]
    rejected: list[BatchRecipientOut]
    approval: ApprovalRef | None = Field(description="the request the accepted recipients wait for, if any")


class Transition(BaseModel):
    at: str
    status: str
    cause: str
    detail: str


class MessageOut(BaseModel):
    id: str
    status: str
    agent: str
    agent_version: str
    # Read back as `from` too: the MCP tools check their answers against this model.
    from_: str = Field(validation_alias=AliasChoices("from", "from_"), serialization_alias="from")
    to: str
    subject: str
    segment: str | None
    campaign: str | None
    run_id: str | None
    batch: str | None
    attempts: int
    uncertain: int
    reasons: list[Reason]
    smtp_code: int | None
    smtp_text: str | None
    waiting_for: str | None
    held_by: str | None = Field(description="the tripped scope holding the message, while it is held")
    rules_version: str
    created_at: str
    history: list[Transition]


class MessageLine(BaseModel):
    """One message of an agent's list: enough to find it; `GET /v1/messages/{id}` has the rest."""

    id: str
    status: str
    to: str
    subject: str
    campaign: str | None
    batch: str | None
    reasons: list[Reason]
    created_at: str


class MessageList(BaseModel):
    messages: list[MessageLine] = Field(description="newest first")


class RecipientsIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"to": ["dana@customer.example", "info@customer.example"]}]},
    )

    to: list[Annotated[str, Field(min_length=1, max_length=320)]] = Field(
        min_length=1, max_length=MAX_CHECKED, description=f"up to {MAX_CHECKED} addresses"
    )


class RecipientVerdict(BaseModel):
    to: str = Field(description="as given")
    address: str = Field(description="as sendguard keeps it: lower case, Unicode domain")
    verdict: str = Field(
        description="`would_queue`: a message now would be accepted as far as the recipient goes; "
        "`deferred`: DNS failed for a moment, it would be checked again later; `rejected`: see reasons"
    )
    reasons: list[Reason]


class RecipientsOut(BaseModel):
    recipients: list[RecipientVerdict]


class WindowOut(BaseModel):
    scope: str = Field(description="the bucket: global, agent:<name>, inbox:<mailbox>, sender_domain:<d>...")
    limit: int
    per_seconds: float
    used: int = Field(description="sends the rolling window holds now")
    remaining: int = Field(description="how many more may reach the relay in this window now")


class RampOut(BaseModel):
    scope: str = Field(description="inbox:<mailbox> or sender_domain:<domain> warming up")
    limit: int = Field(description="sends its rolling window may hold now, by the day of its warm-up")
    ceiling: int
    per_seconds: float
    used: int = Field(description="sends the rolling window holds now")
    first_send: str | None = Field(description="when its first send was reserved; null: not started")


class WaitingRequest(BaseModel):
    id: str
    tier: int
    why: str
    messages: int = Field(description="messages waiting for it (tier 2; 0 for tier 1)")
    approvals_given: int
    approvals_needed: int
    who_approves: str
    expires: str


class SendingStatus(BaseModel):
    """What the calling agent may send now. Reads only: nothing is reserved or counted."""

    agent: str
    throttles: list[WindowOut] = Field(
        description="each rolling window every message of the agent falls into, whatever its recipient "
        "(a recipient domain's, or a campaign's, apply per message and are not listed), and last its "
        "mass-send line, `mass_send:<agent>`, which holds its messages no tier-2 approval released"
    )
    ramps: list[RampOut] = Field(
        description="the warm-up ramps of its inboxes and sender domains (of a `*@domain` inbox, the "
        "domain's), with today's limit"
    )
    approvals: list[WaitingRequest] = Field(description="its requests still waiting for a person")
    safe_mode: list[str] = Field(
        description="tripped scopes that hold messages the agent may send: global, its own, its inboxes "
        "and their domains, segments it may use, campaigns"
    )


async def submit(runtime: Runtime, who: Principal, payload: MessageIn) -> Decision:
    """One message, through the one admission path."""
    submitted = await runtime.admissions.submit(who, payload, runtime.rules)
    [outcome] = submitted.outcomes
    admission = outcome.admission
    reasons = list(admission.reasons)
    approval = None
    if admission.status is Status.PENDING_APPROVAL and submitted.approval is not None:
        # Named in a reason too, for readers of the reasons alone.
        reasons.append(approval_reason(submitted.approval))
        approval = await _approval_ref(runtime, submitted.approval)
    return Decision(
        id=admission.message_id, status=admission.status.value, reasons=reasons, approval=approval
    )


async def submit_batch(runtime: Runtime, who: Principal, payload: BatchIn) -> BatchOut:
    result = await runtime.admissions.submit(who, payload, runtime.rules)
    accepted: list[BatchRecipientOut] = []
    rejected: list[BatchRecipientOut] = []
    for outcome in result.outcomes:
        admission = outcome.admission
        row = BatchRecipientOut(
            index=outcome.index,
            to=outcome.to,
            id=admission.message_id,
            status=admission.status.value,
            reasons=list(admission.reasons),
        )
        (rejected if admission.status is Status.REJECTED else accepted).append(row)
    return BatchOut(
        id=result.batch,
        recipients=len(result.outcomes),
        accepted=accepted,
        rejected=rejected,
        approval=await _approval_ref(runtime, result.approval) if result.approval else None,
    )


async def read(runtime: Runtime, who: Principal, message_id: str) -> MessageOut:
    record, history = await _visible(runtime, message_id, who)
    return MessageOut(
        id=record.id,
        status=record.status.value,
        agent=record.agent,
        agent_version=record.agent_version,
        from_=record.from_addr,
        to=record.to,
        subject=record.subject,
        segment=record.segment,
        campaign=record.campaign,
        run_id=record.run_id,
        batch=record.batch,
        attempts=record.attempts,
        uncertain=record.uncertain,
        reasons=list(record.reasons),
        smtp_code=record.smtp_code,
        smtp_text=record.smtp_text,
        waiting_for=record.waiting_for.value if record.waiting_for else None,
        held_by=record.held_by,
        rules_version=record.rules_version,
        created_at=iso_ms(record.created),
        history=[
            Transition(at=iso_ms(h["at"]), status=h["status"], cause=h["cause"], detail=h["detail"])
            for h in history
        ],
    )


async def cancel(runtime: Runtime, who: Principal, message_id: str) -> Decision:
    record, _ = await _visible(runtime, message_id, who)
    done = await runtime.store.transition(
        message_id,
        to=Status.CANCELLED,
        cause="cancelled",
        detail=f"by {who.role.value} {who.name}",
        allowed_from=CANCELLABLE,
        mailbox=record.to_canonical or "-",
    )
    if not done:
        current = (await _visible(runtime, message_id, who))[0].status.value
        raise HTTPException(409, f"message {message_id} is {current} and can no longer be cancelled")
    return Decision(id=message_id, status=Status.CANCELLED.value, reasons=[])


async def list_own(runtime: Runtime, who: Principal, status: Status | None, limit: int) -> MessageList:
    """The agent's newest messages, from its index, read a page of records at a time."""
    found: list[MessageLine] = []
    offset = 0
    fields = ("to", "subject", "campaign", "batch", "reasons", "created")
    while len(found) < limit:
        ids = await runtime.store.agent_messages(who.name, offset, MAX_LISTED)
        if not ids:
            break
        offset += len(ids)
        for record in await runtime.store.records(ids, fields):
            if record is None or (status is not None and record.status is not status):
                continue  # expired since, or not asked for
            found.append(
                MessageLine(
                    id=record.id,
                    status=record.status.value,
                    to=record.to,
                    subject=record.subject,
                    campaign=record.campaign,
                    batch=record.batch,
                    reasons=list(record.reasons),
                    created_at=iso_ms(record.created),
                )
            )
    return MessageList(messages=found[:limit])


async def check_recipients(runtime: Runtime, who: Principal, body: RecipientsIn) -> RecipientsOut:
    verdicts = await runtime.admissions.check(who, body.to, runtime.rules)
    return RecipientsOut(
        recipients=[
            RecipientVerdict(to=v.to, address=v.address, verdict=v.verdict, reasons=list(v.reasons))
            for v in verdicts
        ]
    )


async def sending_status(runtime: Runtime, who: Principal) -> SendingStatus:
    rules = runtime.rules
    agent = rules.agent(who.name)
    if agent is None:
        raise Forbidden(unregistered(who.name))
    line = MassSendLine.of(agent.name, rules.file.approvals)
    windows = await runtime.throttles.headroom(rules.file.throttle, agent, line)
    ramps = await runtime.throttles.ramp_limits(rules.file.ramp, [agent])
    pending = await runtime.approvals.pending_of(agent.name)
    trips = await runtime.safe_mode.active()
    return SendingStatus(
        agent=agent.name,
        throttles=[
            WindowOut(scope=w.scope, limit=w.limit, per_seconds=w.per, used=w.used, remaining=w.remaining)
            for w in windows
        ],
        ramps=[
            RampOut(
                scope=r.scope,
                limit=r.limit,
                ceiling=r.ceiling,
                per_seconds=r.per,
                used=r.used,
                first_send=iso_ms(r.first_send_ms) if r.first_send_ms is not None else None,
            )
            for r in ramps
        ],
        approvals=[
            WaitingRequest(
                id=r.id,
                tier=r.tier,
                why=r.why,
                messages=r.messages,
                approvals_given=r.approvals_given,
                approvals_needed=r.approvals_needed,
                who_approves=_who_approves(r.tier),
                expires=iso_ms(r.expires),
            )
            for r in pending
        ],
        safe_mode=[trip.scope for trip in trips if concerns(agent, trip.scope)],
    )


def _who_approves(tier: int) -> str:
    if tier >= 2:
        return "two people with approver tokens, in two different groups (not the agent's own token)"
    return "one person with an approver token"


async def _approval_ref(runtime: Runtime, routing: Routing) -> ApprovalRef:
    request = await runtime.approvals.get(routing.approval_id)
    tier = request.tier if request else routing.tier
    return ApprovalRef(
        id=routing.approval_id,
        tier=tier,
        why=routing.why,
        approvals_needed=2 if tier >= 2 else 1,
        who_approves=_who_approves(tier),
        expires=iso_ms(request.expires) if request else "",
    )


async def _visible(
    runtime: Runtime, message_id: str, who: Principal
) -> tuple[MessageRecord, list[dict[str, Any]]]:
    found = await runtime.store.get(message_id) if message_id.isalnum() else None
    # Another agent's message is "not found", not "forbidden": ids must not leak.
    if found is None or (who.role is Role.AGENT and found[0].agent != who.name):
        raise HTTPException(404, f"no message {message_id}")
    return found


@router.post(
    "/v1/messages",
    status_code=201,
    response_model=Decision,
    tags=[Tag.MESSAGES],
    summary="Submit a message",
    responses=error_responses(*SIGNED_IN, 413, 422),
)
async def submit_route(payload: MessageIn, request: Request, who: Submitter) -> Decision:
    """One message to one recipient. The decision is data, always 201 with an id: `queued`,
    `deferred`, `held`, `pending_approval` (with the request it waits for in `approval`) or
    `rejected` with reason codes. The same `idempotency_key` (or, without one, the same body)
    returns the first message."""
    # The runtime read off the request, not as a dependency: the busiest route pays for one fewer.
    return await submit(runtime_of(request), who, payload)


@router.post(
    "/v1/batches",
    status_code=201,
    response_model=BatchOut,
    tags=[Tag.BATCHES],
    summary="Submit a batch",
    responses=error_responses(
        *SIGNED_IN, (409, "the idempotency key names a batch with other content"), 413, 422
    ),
)
async def submit_batch_route(payload: BatchIn, runtime: RuntimeDep, who: Agent) -> BatchOut:
    """The message once, its recipients many times, `{{ name }}` filled from each one's `vars`.
    Every recipient gets its own id, status and reasons; the batch is one approval request when
    its tier asks for one."""
    return await submit_batch(runtime, who, payload)


@router.get(
    "/v1/messages",
    response_model=MessageList,
    tags=[Tag.MESSAGES],
    summary="List your messages",
    responses=error_responses(*SIGNED_IN, 422),
)
async def list_route(
    runtime: RuntimeDep,
    who: Agent,
    status: Annotated[Status | None, Query(description="only messages in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = 50,
) -> MessageList:
    """The calling agent's own messages, newest first: its newest 1,000 of the last 30 days, each
    with its status now."""
    return await list_own(runtime, who, status, limit)


@router.get(
    "/v1/messages/{message_id}",
    response_model=MessageOut,
    response_model_by_alias=True,
    tags=[Tag.MESSAGES],
    summary="Read a message",
    responses=error_responses(*SIGNED_IN, (404, "no such message, or another agent's"), 422),
)
async def read_route(message_id: str, runtime: RuntimeDep, who: Reader) -> MessageOut:
    """Its status, attempts, reasons, the relay's last reply, and every transition it went
    through. An agent sees its own messages only."""
    return await read(runtime, who, message_id)


@router.post(
    "/v1/messages/{message_id}/cancel",
    response_model=Decision,
    tags=[Tag.MESSAGES],
    summary="Cancel a message",
    responses=error_responses(
        *SIGNED_IN,
        (404, "no such message, or another agent's"),
        (409, "the message is sending or done, and can no longer be cancelled"),
        422,
    ),
)
async def cancel_route(message_id: str, runtime: RuntimeDep, who: Reader) -> Decision:
    """A message not yet sent (queued, deferred, held or pending approval) becomes `cancelled`."""
    return await cancel(runtime, who, message_id)


@router.post(
    "/v1/recipients/check",
    response_model=RecipientsOut,
    tags=[Tag.MESSAGES],
    summary="Check recipients",
    responses=error_responses(*SIGNED_IN, 413, 422),
)
async def check_route(body: RecipientsIn, runtime: RuntimeDep, who: Agent) -> RecipientsOut:
    """The verdict admission would give each address now (syntax, free-mail, role account,
    disposable domain, MX, suppression, cooldown), from the same checks, queueing nothing: no
    cooldown is taken and nothing counts towards approval or denials. Only the recipient is
    judged; what depends on the message (inbox, segment, content, safe mode) is not."""
    return await check_recipients(runtime, who, body)


@router.get(
    "/v1/sending-status",
    response_model=SendingStatus,
    tags=[Tag.MESSAGES],
    summary="What you may send now",
    responses=error_responses(*SIGNED_IN),
)
async def status_route(runtime: RuntimeDep, who: Agent) -> SendingStatus:
    """For the calling agent: the headroom of each rolling window its messages fall into, its
    approval requests still waiting (who must approve, until when), and the tripped safe-mode
    scopes that would hold its messages. Reads only."""
    return await sending_status(runtime, who)
