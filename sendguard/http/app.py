"""The HTTP API under /v1, plus /healthz, /readyz, /metrics and the OpenAPI document.

Malformed requests get a 4xx that names the field; policy decisions are data: a rejected
message still gets an id, a status and reason codes (201).
"""

import hmac
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

import sendguard
from sendguard.governance.tokens import Principal, Role
from sendguard.http import feedback, governance, safe_mode
from sendguard.http.access import Admin, Agent, Reader
from sendguard.http.bodies import BodyLimit, StrictJson
from sendguard.http.console.app import mount as mount_console
from sendguard.http.docs import TAGS, Tag, serve_docs
from sendguard.http.errors import HANDLERS, SIGNED_IN, error_responses
from sendguard.intake.admission import approval_reason
from sendguard.intake.batches import BatchIn
from sendguard.model import CANCELLABLE, Reason, Status, iso_ms
from sendguard.parts import Runtime
from sendguard.record import MessageRecord
from sendguard.submission import MessageIn


class Decision(BaseModel):
    """The answer to a submission: always an id and a status, with reasons when there are any."""

    id: str
    status: str
    reasons: list[Reason]


class BatchRecipientOut(BaseModel):
    """One recipient's decision; `index` is its place in the request's list, from 0."""

    index: int
    to: str
    id: str
    status: str
    reasons: list[Reason]


class ApprovalRef(BaseModel):
    id: str
    tier: int
    why: str


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
    from_: str = Field(serialization_alias="from")
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


class SuppressionsIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"entries": ["dana@customer.example", "competitor.example"]}]}
    )

    entries: list[Annotated[str, Field(min_length=1, max_length=320)]] = Field(
        min_length=1,
        max_length=100_000,
        description="addresses (with @) and whole domains (without)",
    )


class SuppressionsOut(BaseModel):
    addresses: list[str] = Field(description="mailboxes: lower case, without a +tag")
    domains: list[str]


class SuppressionsAdded(SuppressionsOut):
    new: int = Field(description="entries that were not suppressed before")
    cancelled: int = Field(description="waiting messages the entries cover, cancelled at once")


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="sendguard",
        version=sendguard.__version__,
        description="Safety gateway for outbound email sent by AI agents.",
        exception_handlers=HANDLERS,
        openapi_tags=TAGS,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    serve_docs(app)
    app.include_router(feedback.router)
    app.include_router(safe_mode.router)
    app.include_router(governance.router)
    mount_console(app)

    @app.post(
        "/v1/messages",
        status_code=201,
        response_model=Decision,
        tags=[Tag.MESSAGES],
        summary="Submit a message",
        responses=error_responses(*SIGNED_IN, 413, 422),
    )
    async def submit(payload: MessageIn, who: Agent) -> Decision:
        """One message to one recipient. The decision is data, always 201 with an id: `queued`,
        `deferred`, `held`, `pending_approval` or `rejected` with reason codes. The same
        `idempotency_key` (or, without one, the same body) returns the first message."""
        submitted = await runtime.admissions.submit(who, payload, runtime.rules)
        [outcome] = submitted.outcomes
        admission = outcome.admission
        reasons = list(admission.reasons)
        if admission.status is Status.PENDING_APPROVAL and submitted.approval is not None:
            # The answer to one message has no `approval` field: the request is named in a reason.
            reasons.append(approval_reason(submitted.approval))
        return Decision(id=admission.message_id, status=admission.status.value, reasons=reasons)

    @app.post(
        "/v1/batches",
        status_code=201,
        response_model=BatchOut,
        tags=[Tag.BATCHES],
        summary="Submit a batch",
        responses=error_responses(
            *SIGNED_IN, (409, "the idempotency key names a batch with other content"), 413, 422
        ),
    )
    async def submit_batch(payload: BatchIn, who: Agent) -> BatchOut:
        """The message once, its recipients many times, `{{ name }}` filled from each one's `vars`.
        Every recipient gets its own id, status and reasons; the batch is one approval request when
        its tier asks for one."""
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
        approval = result.approval
        return BatchOut(
            id=result.batch,
            recipients=len(result.outcomes),
            accepted=accepted,
            rejected=rejected,
            approval=ApprovalRef(id=approval.approval_id, tier=approval.tier, why=approval.why)
            if approval
            else None,
        )

    async def _visible(message_id: str, who: Principal) -> tuple[MessageRecord, list[dict[str, Any]]]:
        found = await runtime.store.get(message_id) if message_id.isalnum() else None
        # Another agent's message is "not found", not "forbidden": ids must not leak.
        if found is None or (who.role is Role.AGENT and found[0].agent != who.name):
            raise HTTPException(404, f"no message {message_id}")
        return found

    @app.get(
        "/v1/messages/{message_id}",
        response_model=MessageOut,
        response_model_by_alias=True,
        tags=[Tag.MESSAGES],
        summary="Read a message",
        responses=error_responses(*SIGNED_IN, (404, "no such message, or another agent's"), 422),
    )
    async def read(message_id: str, who: Reader) -> MessageOut:
        """Its status, attempts, reasons, the relay's last reply, and every transition it went
        through. An agent sees its own messages only."""
        record, history = await _visible(message_id, who)
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

    @app.post(
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
    async def cancel(message_id: str, who: Reader) -> Decision:
        """A message not yet sent (queued, deferred, held or pending approval) becomes `cancelled`."""
        record, _ = await _visible(message_id, who)
        done = await runtime.store.transition(
            message_id,
            to=Status.CANCELLED,
            cause="cancelled",
            detail=f"by {who.role.value} {who.name}",
            allowed_from=CANCELLABLE,
            recipient=record.to or "-",
        )
        if not done:
            current = (await _visible(message_id, who))[0].status.value
            raise HTTPException(409, f"message {message_id} is {current} and can no longer be cancelled")
        return Decision(id=message_id, status=Status.CANCELLED.value, reasons=[])

    @app.get(
        "/v1/suppressions",
        response_model=SuppressionsOut,
        tags=[Tag.SUPPRESSIONS],
        summary="List suppressions",
        responses=error_responses(*SIGNED_IN),
    )
    async def list_suppressions(who: Admin) -> SuppressionsOut:
        """Every suppressed mailbox and domain: nothing is ever sent to them."""
        addresses, domains = await runtime.suppressions.list()
        return SuppressionsOut(addresses=addresses, domains=domains)

    @app.post(
        "/v1/suppressions",
        response_model=SuppressionsAdded,
        tags=[Tag.SUPPRESSIONS],
        summary="Suppress addresses and domains",
        responses=error_responses(*SIGNED_IN, 413, 422),
    )
    async def add_suppressions(body: SuppressionsIn, who: Admin) -> SuppressionsAdded:
        """Up to 100,000 entries at once; waiting messages to them are cancelled at once."""
        added = await runtime.suppressions.suppress(body.entries, who.actor)
        return SuppressionsAdded(
            addresses=added.addresses, domains=added.domains, new=added.new, cancelled=added.cancelled
        )

    @app.delete(
        "/v1/suppressions/{entry}",
        status_code=204,
        tags=[Tag.SUPPRESSIONS],
        summary="Lift a suppression",
        responses=error_responses(*SIGNED_IN, (404, "the entry is not suppressed"), 422),
    )
    async def remove_suppression(entry: str, who: Admin) -> Response:
        """Any spelling of a suppressed mailbox lifts it (case, a +tag)."""
        if not await runtime.suppressions.lift(entry, who.actor):
            raise HTTPException(404, f"{entry} is not suppressed")
        return Response(status_code=204)

    @app.get("/healthz", tags=[Tag.HEALTH], summary="Liveness")
    async def healthz() -> dict[str, str]:
        """The process is alive; it asks nothing of Redis."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=[Tag.HEALTH],
        summary="Readiness",
        responses={
            503: {
                "description": "Redis does not answer",
                "content": {
                    "application/json": {"example": {"status": "not_ready", "redis": "ConnectionError"}}
                },
            }
        },
    )
    async def readyz() -> JSONResponse:
        """Redis answers and the rules are loaded: the answer names the rules' version."""
        try:
            await runtime.redis.ping()
        except Exception as exc:  # any failure to reach Redis means not ready
            return JSONResponse({"status": "not_ready", "redis": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ready", "rules_version": runtime.rules.version})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(authorization: Annotated[str | None, Header()] = None) -> Response:
        expected = runtime.settings.metrics_token
        if expected is not None and not hmac.compare_digest(
            (authorization or "").encode(), f"Bearer {expected.get_secret_value()}".encode()
        ):
            raise HTTPException(401, "missing or wrong metrics token", headers={"WWW-Authenticate": "Bearer"})
        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    settings = runtime.settings
    app.add_middleware(StrictJson)  # inside BodyLimit: the size is checked first
    app.add_middleware(
        BodyLimit,
        limit=settings.max_request_bytes,
        paths={"/v1/inbound": settings.inbound_max_bytes, "/v1/batches": settings.batch_max_bytes},
    )
    return app
