"""The stop-sending API: signals in (events, raw inbound mail, Alertmanager alerts), safe mode out."""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sendguard.feedback.apply import Applied
from sendguard.feedback.counters import Trip
from sendguard.feedback.events import EventIn, EventType
from sendguard.feedback.receive import Unparsed
from sendguard.http.access import Admin, Operator, Reader, RuntimeDep
from sendguard.model import iso_ms
from sendguard.parts import Runtime
from sendguard.scopes import parse_scope

router = APIRouter()


class EventOut(BaseModel):
    type: str
    message_id: str | None = Field(description="the message the event was tied to; null if none")
    sentiment: str | None
    unsubscribe: bool
    suppressed: str | None
    cancelled: int = Field(description="waiting messages to the recipient cancelled because of it")
    tripped: list[str] = Field(description="scopes this event put into safe mode")


class InboundOut(BaseModel):
    kind: str
    summary: str
    events: list[EventOut]


class TripOut(BaseModel):
    scope: str
    cause: str
    detail: str
    value: float | None
    threshold: float | None
    at: str
    by: str


class TripIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: str = Field(description="'global' (the kill switch) or '<kind>:<value>', e.g. segment:cfo-na-q4")
    reason: str = Field(min_length=1, max_length=500)


class ResumeOut(BaseModel):
    scope: str
    resumed: TripOut | None
    released: int = Field(description="held messages put back in the queue")
    still_held: int = Field(description="held messages that another tripped scope still holds")


class AlertIn(BaseModel):
    status: str
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class AlertmanagerIn(BaseModel):
    """Alertmanager's webhook payload (version 4); only the fields sendguard acts on."""

    alerts: list[AlertIn]


class AlertsOut(BaseModel):
    tripped: list[str]
    already: list[str] = Field(description="scopes that were already in safe mode")
    ignored: list[str] = Field(description="alerts that trip nothing, and why")


def _trip_out(trip: Trip) -> TripOut:
    return TripOut(
        scope=trip.scope,
        cause=trip.cause,
        detail=trip.detail,
        value=trip.value,
        threshold=trip.threshold,
        at=iso_ms(trip.at),
        by=trip.by,
    )


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


def _scope(text: str) -> str:
    try:
        return parse_scope(text)
    except ValueError as exc:
        raise HTTPException(422, f"scope: {exc}") from exc


@router.post("/v1/events", response_model=EventOut)
async def post_event(event: EventIn, runtime: RuntimeDep, who: Reader) -> EventOut:
    """Report a bounce, complaint, reply, unsubscribe or delivery for a message sendguard sent."""
    return _event_out(await runtime.feedback.apply(event, f"api ({who.name})"))


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
    await runtime.feedback.apply(event, "one-click unsubscribe")
    return HTMLResponse(_UNSUBSCRIBED_PAGE)


@router.post(
    "/v1/inbound",
    response_model=InboundOut,
    openapi_extra={"requestBody": {"content": {"message/rfc822": {"schema": {"type": "string"}}}}},
)
async def post_inbound(request: Request, runtime: RuntimeDep, who: Reader) -> InboundOut | JSONResponse:
    """A raw message (DSN, ARF report or reply), detected and applied; unparsable mail is kept."""
    raw = await request.body()
    if not raw.strip():
        raise HTTPException(422, "body: empty; send the raw message (Content-Type: message/rfc822)")
    result = await runtime.inbox.receive(raw, [], f"api ({who.name})")
    if isinstance(result, Unparsed):
        return JSONResponse(
            {"error": "unparsable", "detail": result.reason, "kept_as": result.kept_as},
            status_code=422,
        )
    return InboundOut(
        kind=result.inbound.kind.value,
        summary=result.inbound.summary,
        events=[_event_out(applied) for applied in result.applied],
    )


@router.get("/v1/inbound/unparsed")
async def list_unparsed(runtime: RuntimeDep, who: Operator) -> list[dict[str, Any]]:
    """Inbound mail that was not understood, newest first: why, from where, how large."""
    return await runtime.inbox.unparsed()


@router.get("/v1/inbound/unparsed/{kept_as}", response_class=Response)
async def get_unparsed(kept_as: str, runtime: RuntimeDep, who: Operator) -> Response:
    """One kept message, as it arrived (its first 256 KiB)."""
    raw = await runtime.inbox.unparsed_raw(kept_as)
    if raw is None:
        raise HTTPException(404, f"no kept message {kept_as}")
    return Response(raw, media_type="message/rfc822")


@router.get("/v1/safe-mode", response_model=list[TripOut])
async def list_trips(runtime: RuntimeDep, who: Reader) -> list[TripOut]:
    """The scopes in safe mode now."""
    return [_trip_out(trip) for trip in await runtime.safe_mode.active()]


@router.post("/v1/safe-mode", response_model=TripOut, status_code=201)
async def trip(body: TripIn, runtime: RuntimeDep, who: Operator) -> TripOut | JSONResponse:
    """Trip a scope by hand; `global` stops everything (the kill switch)."""
    active, created = await runtime.safe_mode.trip(_scope(body.scope), "manual", who.name, body.reason)
    if not created:
        return JSONResponse(_trip_out(active).model_dump(), status_code=200)
    return _trip_out(active)


@router.delete("/v1/safe-mode/{scope:path}", response_model=ResumeOut)
async def resume(
    scope: str,
    runtime: RuntimeDep,
    who: Admin,
    reason: Annotated[str, Query(min_length=1, max_length=500, description="why sending may resume")],
) -> ResumeOut:
    """Resume a scope: lift the trip, restart its signal window, release its held messages."""
    resumed = await runtime.safe_mode.resume(_scope(scope), who.name, reason)
    if resumed.trip is None and not resumed.released and not resumed.still_held:
        raise HTTPException(404, f"{resumed.scope} is not in safe mode")
    return ResumeOut(
        scope=resumed.scope,
        resumed=_trip_out(resumed.trip) if resumed.trip else None,
        released=resumed.released,
        still_held=resumed.still_held,
    )


@router.post("/v1/alerts", response_model=AlertsOut)
async def alerts(body: AlertmanagerIn, runtime: RuntimeDep, who: Operator) -> AlertsOut:
    """Alertmanager's webhook: a firing alert labelled `sendguard_scope` trips that scope.

    A resolved alert does not resume: a person does.
    """
    out = AlertsOut(tripped=[], already=[], ignored=[])
    for alert in body.alerts:
        name = alert.labels.get("alertname", "unnamed alert")
        raw_scope = alert.labels.get("sendguard_scope")
        if alert.status != "firing" or raw_scope is None:
            why = "not firing" if alert.status != "firing" else "no sendguard_scope label"
            out.ignored.append(f"{name}: {why}")
            continue
        try:
            scope = parse_scope(raw_scope)
        except ValueError as exc:
            out.ignored.append(f"{name}: {exc}")
            continue
        reason = alert.annotations.get("summary") or name
        _, created = await runtime.safe_mode.trip(scope, "alert", f"alertmanager ({name})", reason)
        (out.tripped if created else out.already).append(scope)
    return out
