"""The HTTP API under /v1, plus /healthz, /readyz, /metrics and the OpenAPI document.

Malformed requests get a 4xx that names the field; policy decisions are data: a rejected
message still gets an id, a status and reason codes (201).
"""

import re
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import sendguard
from sendguard.errors import StoreError
from sendguard.governance.audit import canonical_hash
from sendguard.governance.suppressions import split_entries
from sendguard.governance.tokens import Principal, Role
from sendguard.http import feedback, governance, safe_mode
from sendguard.http.access import Admin, Agent, Reader
from sendguard.intake.admission import Forbidden
from sendguard.intake.batches import BatchConflict, BatchIn
from sendguard.model import CANCELLABLE, Status, decode_reasons, iso_ms
from sendguard.parts import Runtime
from sendguard.submission import MessageIn


class ReasonOut(BaseModel):
    code: str
    detail: str


class Decision(BaseModel):
    """The answer to a submission: always an id and a status, with reasons when there are any."""

    id: str
    status: str
    reasons: list[ReasonOut]


class BatchRecipientOut(BaseModel):
    """One recipient's decision; `index` is its place in the request's list, from 0."""

    index: int
    to: str
    id: str
    status: str
    reasons: list[ReasonOut]


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
    reasons: list[ReasonOut]
    smtp_code: int | None
    smtp_text: str | None
    waiting_for: str | None
    held_by: str | None = Field(description="the tripped scope holding the message, while it is held")
    rules_version: str
    created_at: str
    history: list[Transition]


class SuppressionsIn(BaseModel):
    entries: list[Annotated[str, Field(min_length=1, max_length=320)]] = Field(
        min_length=1,
        max_length=100_000,
        description="addresses (with @) and whole domains (without)",
    )


class SuppressionsOut(BaseModel):
    addresses: list[str]
    domains: list[str]


class BodyLimit:
    """Refuses request bodies over the limit with 413, before they are read into memory.

    `paths` gives some routes a limit of their own (raw inbound mail is larger than JSON).
    """

    def __init__(self, app: ASGIApp, limit: int, paths: dict[str, int]) -> None:
        self._app = app
        self._default = limit
        self._paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        limit = self._paths.get(scope["path"], self._default)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(limit)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
            return message

        try:
            await self._app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"error": "body_too_large", "detail": f"request body is over the {limit} byte limit"},
        status_code=413,
    )


_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_JSON_MEDIA = re.compile(r"application/(?:.+\+)?json")  # the bodies FastAPI parses as JSON


async def _text_only(request: Request) -> None:
    """Refuses a JSON body with a lone surrogate (`"\\ud800"`) in a string: valid JSON but not text.

    Redis, the audit trail and the email package would each fail on it later: a 500, or a message
    stuck in `sending`. Runs after FastAPI has parsed the body and before the route's model.
    """
    if not _JSON_MEDIA.fullmatch(request.headers.get("content-type", "").partition(";")[0].strip().lower()):
        return
    # JSON can only carry a surrogate as an escape: without one, no need to walk the whole body.
    if not _SURROGATE_ESCAPE.search(await request.body()):
        return
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON: the route's model refuses it, or it takes no body
        return
    if (where := _lone_surrogate(body)) is not None:
        raise RequestValidationError(
            [
                {
                    "type": "string_unicode",
                    "loc": ("body", *where),
                    "msg": "must be text: a lone surrogate (\\ud800-\\udfff) is not a character",
                }
            ]
        )


def _lone_surrogate(body: Any) -> tuple[str | int, ...] | None:
    """Where a string or key holding a lone surrogate is in decoded JSON; None if nowhere.

    Iterative: JSON nested as deep as the parser allows must not exhaust the stack here.
    """
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and _SURROGATE.search(value):
            return path
        items: Iterable[tuple[str | int, Any]] = (
            value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        )
        for key, item in items:
            if isinstance(key, str) and _SURROGATE.search(key):
                return (*path, key.encode("utf-8", "backslashreplace").decode())  # the answer is JSON too
            stack.append(((*path, key), item))
    return None


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="sendguard",
        version=sendguard.__version__,
        description="Safety gateway for outbound email sent by AI agents.",
        dependencies=[Depends(_text_only)],
    )
    app.state.runtime = runtime
    app.include_router(feedback.router)
    app.include_router(safe_mode.router)
    app.include_router(governance.router)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for error in exc.errors():
            loc = [str(part) for part in error["loc"] if part != "body"]
            field = ".".join(loc) or "body"
            message = str(error["msg"]).removeprefix("Value error, ")
            if field == "body" and error["type"] in ("model_attributes_type", "dict_type"):
                message = "must be a JSON object, sent with Content-Type: application/json"
            errors.append({"field": field, "message": message})
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse({"error": "invalid_request", "detail": detail, "errors": errors}, 422)

    @app.exception_handler(StoreError)
    async def _store_down(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse(
            {"error": "store_unavailable", "detail": "the state store is unreachable; retry"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.post("/v1/messages", status_code=201, response_model=Decision)
    async def submit(payload: MessageIn, who: Agent) -> Decision | JSONResponse:
        try:
            admission = await runtime.gateway.submit(who, payload, runtime.rules)
        except Forbidden as exc:
            return _forbidden(exc)
        return Decision(
            id=admission.message_id,
            status=admission.status.value,
            reasons=[ReasonOut(**r) for r in admission.reasons],
        )

    @app.post("/v1/batches", status_code=201, response_model=BatchOut)
    async def submit_batch(payload: BatchIn, who: Agent) -> BatchOut | JSONResponse:
        try:
            result = await runtime.batches.submit(who, payload, runtime.rules)
        except Forbidden as exc:
            return _forbidden(exc)
        except BatchConflict as exc:
            raise HTTPException(409, str(exc)) from exc
        accepted: list[BatchRecipientOut] = []
        rejected: list[BatchRecipientOut] = []
        for outcome in result.outcomes:
            admission = outcome.admission
            row = BatchRecipientOut(
                index=outcome.index,
                to=outcome.to,
                id=admission.message_id,
                status=admission.status.value,
                reasons=[ReasonOut(**r) for r in admission.reasons],
            )
            (rejected if admission.status is Status.REJECTED else accepted).append(row)
        approval = result.approval
        return BatchOut(
            id=result.id,
            recipients=len(result.outcomes),
            accepted=accepted,
            rejected=rejected,
            approval=ApprovalRef(id=approval.approval_id, tier=approval.tier, why=approval.why)
            if approval
            else None,
        )

    async def _visible(message_id: str, who: Principal) -> tuple[dict[str, str], list[dict[str, Any]]]:
        found = await runtime.store.get(message_id) if message_id.isalnum() else None
        # Another agent's message is "not found", not "forbidden": ids must not leak.
        if found is None or (who.role is Role.AGENT and found[0].get("agent") != who.name):
            raise HTTPException(404, f"no message {message_id}")
        return found

    @app.get("/v1/messages/{message_id}", response_model=MessageOut, response_model_by_alias=True)
    async def read(message_id: str, who: Reader) -> MessageOut:
        record, history = await _visible(message_id, who)
        return MessageOut(
            id=record["id"],
            status=record["status"],
            agent=record.get("agent", ""),
            agent_version=record.get("agent_version", ""),
            from_=record.get("from_addr", ""),
            to=record.get("to", ""),
            subject=record.get("subject", ""),
            segment=record.get("segment") or None,
            campaign=record.get("campaign") or None,
            run_id=record.get("run_id") or None,
            batch=record.get("batch") or None,
            attempts=int(record.get("attempts", 0)),
            uncertain=int(record.get("uncertain", 0)),
            reasons=[ReasonOut(**r) for r in decode_reasons(record.get("reasons"))],
            smtp_code=int(record["smtp_code"]) if record.get("smtp_code") else None,
            smtp_text=record.get("smtp_text") or None,
            waiting_for=record.get("waiting_for") or None,
            held_by=record.get("held_by") or None,
            rules_version=record.get("rules_version", ""),
            created_at=iso_ms(record.get("created")),
            history=[
                Transition(at=iso_ms(h["at"]), status=h["status"], cause=h["cause"], detail=h["detail"])
                for h in history
            ],
        )

    @app.post("/v1/messages/{message_id}/cancel", response_model=Decision)
    async def cancel(message_id: str, who: Reader) -> Decision:
        record, _ = await _visible(message_id, who)
        done = await runtime.store.transition(
            message_id,
            to=Status.CANCELLED,
            cause="cancelled",
            detail=f"by {who.role.value} {who.name}",
            allowed_from=CANCELLABLE,
            recipient=record.get("to", "-"),
        )
        if not done:
            current = (await _visible(message_id, who))[0]["status"]
            raise HTTPException(409, f"message {message_id} is {current} and can no longer be cancelled")
        return Decision(id=message_id, status=Status.CANCELLED.value, reasons=[])

    @app.get("/v1/suppressions", response_model=SuppressionsOut)
    async def list_suppressions(who: Admin) -> SuppressionsOut:
        addresses, domains = await runtime.suppressions.list()
        return SuppressionsOut(addresses=addresses, domains=domains)

    @app.post("/v1/suppressions", response_model=SuppressionsOut)
    async def add_suppressions(body: SuppressionsIn, who: Admin) -> SuppressionsOut:
        addresses, domains = _entries(body.entries)
        added = await runtime.suppressions.add(addresses, domains)
        listed = sorted(addresses) + sorted(domains)
        await runtime.audit.append(
            "suppression.added",
            who.actor,
            # Up to 100,000 entries at once: their count and a hash, and the first few to read.
            {"new": added, "entries": len(listed), "sha256": canonical_hash(listed), "first": listed[:20]},
        )
        return SuppressionsOut(addresses=sorted(addresses), domains=sorted(domains))

    @app.delete("/v1/suppressions/{entry}", status_code=204)
    async def remove_suppression(entry: str, who: Admin) -> Response:
        if not await runtime.suppressions.remove(*_entries([entry])):
            raise HTTPException(404, f"{entry} is not suppressed")
        await runtime.audit.append("suppression.lifted", who.actor, {"entry": entry})
        return Response(status_code=204)

    @app.get("/healthz", include_in_schema=True)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            await runtime.redis.ping()
        except Exception as exc:  # any failure to reach Redis means not ready
            return JSONResponse({"status": "not_ready", "redis": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ready", "rules_version": runtime.rules.version})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    settings = runtime.settings
    app.add_middleware(
        BodyLimit,
        limit=settings.max_request_bytes,
        paths={"/v1/inbound": settings.inbound_max_bytes, "/v1/batches": settings.batch_max_bytes},
    )
    return app


def _forbidden(exc: Forbidden) -> JSONResponse:
    return JSONResponse(
        {"error": "forbidden", "detail": exc.reason.detail, "reasons": [exc.reason.as_dict()]},
        status_code=403,
    )


def _entries(entries: list[str]) -> tuple[list[str], list[str]]:
    try:
        return split_entries(entries)
    except ValueError as exc:
        raise HTTPException(422, f"entries: {exc}") from exc
