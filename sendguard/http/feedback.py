"""Signals in over HTTP: events, raw inbound mail (DSNs, ARF reports, replies) and one-click unsubscribe."""

from html import escape
from typing import Any, NamedTuple

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from sendguard.feedback.apply import Applied, Reporter
from sendguard.feedback.events import EventIn, EventType, ReportedEvent
from sendguard.feedback.receive import Unparsed
from sendguard.governance.roles import Role
from sendguard.governance.tokens import Principal
from sendguard.http.access import EventReporter, Operator, RuntimeDep
from sendguard.http.docs import Tag
from sendguard.http.errors import SIGNED_IN, error_responses
from sendguard.parts import Runtime

router = APIRouter(tags=[Tag.FEEDBACK])


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
    repeated: bool = Field(
        description="an event alike (what it means, how it is proved) was recorded on the message "
        "before: this one did nothing again and wrote nothing"
    )


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
        repeated=applied.repeated,
    )


def _reporter(who: Principal) -> Reporter:
    return Reporter(f"api ({who.name})", agent=who.name if who.role is Role.AGENT else None)


@router.post(
    "/v1/events",
    response_model=EventOut,
    summary="Report an event",
    responses=error_responses(
        *SIGNED_IN,
        (404, "an agent named a message that is not its own"),
        (409, "an agent named its own message, which was not sent"),
        413,
        422,
    ),
)
async def post_event(event: ReportedEvent, runtime: RuntimeDep, who: EventReporter) -> EventOut:
    """A bounce, complaint, reply, unsubscribe or delivery for a message sendguard sent.

    An agent names one of its own sent messages by `message_id`; its report weighs only against its
    own `agent:` scope. An operator or admin may name the recipient alone: the last message sent to it.
    """
    [applied] = await runtime.feedback.apply([event], _reporter(who))
    return _event_out(applied)


# The pages a person sees from an unsubscribe link: readable on a phone, no scripts, nothing
# fetched from elsewhere (the policy says so to the browser too), every value HTML-escaped: the
# sender's name is the agent's to choose.
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title>
<style>
body{{font:1.125rem/1.5 system-ui,sans-serif;margin:0;padding:1.5rem;color:#1a1a1a;background:#fff}}
main{{max-width:32rem;margin:0 auto}} h1{{font-size:1.5rem;margin:0 0 1rem}}
strong{{overflow-wrap:anywhere}}
button{{font:inherit;width:100%;padding:.875rem;border:0;border-radius:.5rem;background:#b3261e;color:#fff}}
</style></head>
<body><main><h1>{title}</h1>
{body}
</main></body></html>
"""
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",  # the link is the recipient's credential
}
_NOT_VALID = (
    "<p>This unsubscribe link is not valid: it may be cut short or changed. "
    "To stop these emails, reply to one of them and ask.</p>"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=title, body=body), status_code=status, headers=_PAGE_HEADERS)


class _Link(NamedTuple):
    message_id: str
    recipient: str
    sender: str  # the message's From, as its recipient saw it; "" once its record has expired

    def html(self) -> tuple[str, str]:
        """(" from <the sender>" or "", the recipient), escaped and emphasised for a page."""
        sender = f" from <strong>{escape(self.sender)}</strong>" if self.sender else ""
        return sender, f"<strong>{escape(self.recipient)}</strong>"


async def _unsubscribe_link(runtime: Runtime, token: str) -> _Link | None:
    checker = runtime.unsubscribe
    found = checker.verify(token) if checker is not None else None
    if found is None:
        return None
    message_id, recipient = found
    [record] = await runtime.store.records([message_id], only=["from_name", "from_addr"])
    sender = ""
    if record is not None and record.from_addr:
        sender = f"{record.from_name} <{record.from_addr}>" if record.from_name else record.from_addr
    return _Link(message_id, recipient, sender)


@router.get("/v1/unsubscribe/{token}", response_class=HTMLResponse, include_in_schema=False)
async def unsubscribe_page(token: str, runtime: RuntimeDep) -> HTMLResponse:
    """A person who opens the link gets a button: a GET never unsubscribes (link scanners follow them)."""
    link = await _unsubscribe_link(runtime, token)
    if link is None:
        return _page("Link not valid", _NOT_VALID, 404)
    sender, recipient = link.html()
    return _page(
        "Unsubscribe",
        f"<p>Stop emails{sender} to {recipient}?</p>\n"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>',
    )


@router.post("/v1/unsubscribe/{token}", response_class=HTMLResponse, include_in_schema=False)
async def unsubscribe(token: str, runtime: RuntimeDep) -> HTMLResponse:
    """RFC 8058 one-click: the mailbox provider POSTs here, and the address is suppressed at once."""
    link = await _unsubscribe_link(runtime, token)
    if link is None:
        return _page("Link not valid", _NOT_VALID, 404)
    # Anyone with the link may post it again and again: once the address is suppressed, a repeat
    # is answered the same and writes nothing (no event, no audit entry), so replays cannot grow
    # the trail, which is never trimmed.
    if not await runtime.suppressions.holds(link.recipient):
        event = EventIn(type=EventType.UNSUBSCRIBE, message_id=link.message_id, recipient=link.recipient)
        await runtime.feedback.apply([event], Reporter("one-click unsubscribe", signed=True))
    sender, recipient = link.html()
    return _page(
        "Unsubscribed",
        f"<p>You are unsubscribed: {recipient} will not be sent these emails{sender} again.</p>",
    )


@router.post(
    "/v1/inbound",
    response_model=InboundOut,
    summary="Hand in raw inbound mail",
    openapi_extra={"requestBody": {"content": {"message/rfc822": {"schema": {"type": "string"}}}}},
    responses=error_responses(
        *SIGNED_IN,
        413,
        (422, "the mail is empty, cannot be parsed, or proves nothing; kept for a person as `kept_as`"),
    ),
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


@router.get("/v1/inbound/unparsed", summary="List kept inbound mail", responses=error_responses(*SIGNED_IN))
async def list_unparsed(runtime: RuntimeDep, who: Operator) -> list[dict[str, Any]]:
    """Inbound mail kept for a person (not understood, or about no message of ours), newest first:
    why, from where, how large."""
    return await runtime.inbox.unparsed()


@router.get(
    "/v1/inbound/unparsed/{kept_as}",
    response_class=Response,
    summary="Read one kept inbound mail",
    responses={
        200: {"content": {"message/rfc822": {"schema": {"type": "string"}}}},
        **error_responses(*SIGNED_IN, (404, "no kept mail by that name"), 422),
    },
)
async def get_unparsed(kept_as: str, runtime: RuntimeDep, who: Operator) -> Response:
    """One kept message, as it arrived (its first 32 KiB)."""
    raw = await runtime.inbox.unparsed_raw(kept_as)
    if raw is None:
        raise HTTPException(404, f"no kept message {kept_as}")
    return Response(raw, media_type="message/rfc822")
