"""Signals in over HTTP: events, raw inbound mail (DSNs, ARF reports, replies) and one-click unsubscribe."""

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from sendguard.feedback.apply import Applied, Reporter
from sendguard.feedback.events import EventIn, EventType, ReportedEvent
from sendguard.feedback.receive import Unparsed
from sendguard.governance.tokens import Principal, Role
from sendguard.http.access import EventReporter, Operator, RuntimeDep
from sendguard.parts import Runtime

router = APIRouter()


class EventOut(BaseModel):
    type: str
    message_id: str | None = Field(description="the message the event was tied to; null if none")
    sentiment: str | None
    unsubscribe: bool
    suppressed: str | None
    cancelled: int = Field(
        description="waiting messages to the recipient cancelled because of it (an agent's: its own only)"
    )
    tripped: list[str] = Field(description="scopes this event put into safe mode")


class InboundOut(BaseModel):
    kind: str
    summary: str
    events: list[EventOut]


def _event_out(applied: Applied) -> EventOut:
    return EventOut(
        type=applied.type.value,
        message_id=applied.message_id,
        sentiment=applied.sentiment.value if applied.sentiment else None,
        unsubscribe=applied.unsubscribe,
        suppressed=applied.suppressed,
        cancelled=applied.cancelled,
        tripped=[trip.scope for trip in applied.trips],
    )


def _reporter(who: Principal) -> Reporter:
    return Reporter(f"api ({who.name})", agent=who.name if who.role is Role.AGENT else None)


@router.post("/v1/events", response_model=EventOut)
async def post_event(event: ReportedEvent, runtime: RuntimeDep, who: EventReporter) -> EventOut:
    """Report a bounce, complaint, reply, unsubscribe or delivery for a message sendguard sent.

    An agent names one of its own sent messages by `message_id` (404 otherwise, 409 if it was not
    sent); its report weighs only against its own `agent:` scope.
    """
    [applied] = await runtime.feedback.apply([event], _reporter(who))
    return _event_out(applied)


_UNSUBSCRIBE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>Unsubscribe</title></head><body>
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<p>Stop receiving these emails?</p><button type="submit">Unsubscribe</button></form>
</body></html>
"""
_UNSUBSCRIBED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unsubscribed</title></head><body>
<p>You are unsubscribed. You will not receive these emails again.</p></body></html>
"""


def _unsubscribe_link(runtime: Runtime, token: str) -> tuple[str, str]:
    checker = runtime.unsubscribe
    found = checker.verify(token) if checker is not None else None
    if found is None:
        raise HTTPException(404, "this unsubscribe link is not known here")
    return found


@router.get("/v1/unsubscribe/{token}", response_class=HTMLResponse, include_in_schema=False)
async def unsubscribe_page(token: str, runtime: RuntimeDep) -> HTMLResponse:
    """A person who opens the link gets a button: a GET never unsubscribes (link scanners follow them)."""
    _unsubscribe_link(runtime, token)
    return HTMLResponse(_UNSUBSCRIBE_PAGE)


@router.post("/v1/unsubscribe/{token}", response_class=HTMLResponse, include_in_schema=False)
async def unsubscribe(token: str, runtime: RuntimeDep) -> HTMLResponse:
    """RFC 8058 one-click: the mailbox provider POSTs here, and the address is suppressed at once."""
    message_id, address = _unsubscribe_link(runtime, token)
    event = EventIn(type=EventType.UNSUBSCRIBE, message_id=message_id, recipient=address)
    await runtime.feedback.apply([event], Reporter("one-click unsubscribe", signed=True))
    return HTMLResponse(_UNSUBSCRIBED_PAGE)


@router.post(
    "/v1/inbound",
    response_model=InboundOut,
    openapi_extra={"requestBody": {"content": {"message/rfc822": {"schema": {"type": "string"}}}}},
)
async def post_inbound(
    request: Request, runtime: RuntimeDep, who: EventReporter
) -> InboundOut | JSONResponse:
    """A raw message (DSN, ARF report or reply), detected and applied when it proves which message
    of ours it is about; mail that is unparsable or proves nothing is kept (422, `kept_as`).

    From an agent it is the agent's word: held to what the agent's own events may move.
    """
    raw = await request.body()
    if not raw.strip():
        raise HTTPException(422, "body: empty; send the raw message (Content-Type: message/rfc822)")
    result = await runtime.inbox.receive(raw, [], _reporter(who))
    if isinstance(result, Unparsed):
        return JSONResponse(
            {
                "error": "unparsable" if result.kind == "unparsed" else result.kind,
                "detail": result.reason,
                "kept_as": result.kept_as,
            },
            status_code=422,
        )
    return InboundOut(
        kind=result.inbound.kind.value,
        summary=result.inbound.summary,
        events=[_event_out(applied) for applied in result.applied],
    )


@router.get("/v1/inbound/unparsed")
async def list_unparsed(runtime: RuntimeDep, who: Operator) -> list[dict[str, Any]]:
    """Inbound mail kept for a person (not understood, or about no message of ours), newest first:
    why, from where, how large."""
    return await runtime.inbox.unparsed()


@router.get("/v1/inbound/unparsed/{kept_as}", response_class=Response)
async def get_unparsed(kept_as: str, runtime: RuntimeDep, who: Operator) -> Response:
    """One kept message, as it arrived (its first 32 KiB)."""
    raw = await runtime.inbox.unparsed_raw(kept_as)
    if raw is None:
        raise HTTPException(404, f"no kept message {kept_as}")
    return Response(raw, media_type="message/rfc822")
