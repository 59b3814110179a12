"""sendguard's MCP tools, defined once for both doors an agent host may use.

`build_server(backend_for)` makes the MCP server; each tool turns its arguments into the body the
HTTP API takes and hands it to a `Backend`: in the daemon (`/mcp`, see mcp_endpoint.py) the
functions the HTTP routes call, in the same process; for `sendguard mcp` over stdio, the typed API
client talking to the running daemon. Either way the answer is the API's own JSON, so a tool's
structured result has the same `id`, `status` and `reasons` as `POST /v1/messages`.

A policy decision (rejected, pending_approval, held...) is a normal result (`isError` false) a
model can act on. An answer the API gives as an error (403 a rule forbids this send, 404, 409, 422)
is a tool result with `isError` true and the API's error body, reason codes included. Arguments
that do not fit a tool's schema are refused by the SDK before a tool runs.
"""

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Protocol

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

import sendguard
from sendguard.http.messages import (
    MAX_CHECKED,
    MAX_LISTED,
    BatchOut,
    Decision,
    MessageList,
    MessageOut,
    RecipientsOut,
    SendingStatus,
)
from sendguard.model import Status

Json = dict[str, Any]


class Refused(Exception):
    """The API did not do what was asked: its HTTP status and error body, as it answers them."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(f"{status}: {body.get('detail', '')}")
        self.status = status
        self.body = dict(body)


class Backend(Protocol):
    """What the tools call, one method per API route; each answers the route's JSON, or raises
    Refused with the error the route would answer."""

    async def send(self, body: Json) -> Json: ...
    async def send_batch(self, body: Json) -> Json: ...
    async def get_message(self, message_id: str) -> Json: ...
    async def cancel(self, message_id: str) -> Json: ...
    async def list_messages(self, status: str | None, limit: int) -> Json: ...
    async def check_recipients(self, addresses: list[str]) -> Json: ...
    async def sending_status(self) -> Json: ...


STATUSES = (
    "Statuses: `queued` accepted, waiting for its turn under the throttles; `deferred` accepted, a "
    "temporary problem (DNS, the relay), tried again later; `held` accepted but a scope it belongs to "
    "is in safe mode, it waits until a person resumes it; `pending_approval` accepted but a person must "
    "approve it first (`approval` says who must, and until when; it expires unsent otherwise); "
    "`rejected` refused by policy, never sent (each reason has a code and a sentence: do not retry the "
    "same thing, fix what the reason names or drop the recipient); then `sending`, `sent`, `bounced`, "
    "`failed`, `cancelled`, `expired`."
)
_SENDING = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True
)
_READING = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_CANCELLING = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)

Sender = Annotated[
    str,
    Field(description="the From: 'Alice <alice@acme.example>' or an address; must be one of your inboxes"),
]
Subject = Annotated[str, Field(description="one line, at most 998 characters")]
AgentVersion = Annotated[str, Field(description="your name and version, e.g. 'sdr-bot 1.4.2'")]
Text = Annotated[str | None, Field(description="the plain-text body (give text, html or both)")]
Html = Annotated[str | None, Field(description="the HTML body")]
Label = Annotated[str | None, Field(description="a label people filter and stop sends by")]
IdempotencyKey = Annotated[
    str | None, Field(description="the same key returns the first message instead of sending twice")
]
SendAt = Annotated[str | None, Field(description="RFC 3339 time with a zone: not before then")]
Headers = Annotated[dict[str, str] | None, Field(description="extra headers; custom ones start with X-")]
RecipientTimezone = Annotated[
    str | None,
    Field(description="the recipient's IANA time zone (Europe/Berlin): send windows in their hours use it"),
]


def _body(**fields: Any) -> Json:
    """The API's body: what was given, `sender` as `from`."""
    body = {name: value for name, value in fields.items() if value is not None}
    if "sender" in body:
        body["from"] = body.pop("sender")
    return body


def _answer(answer: Json) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(answer, ensure_ascii=False))],
        structured_content=answer,
    )


def _refused(refused: Refused) -> CallToolResult:
    body = {**refused.body, "http_status": refused.status}
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(body, ensure_ascii=False))],
        structured_content=body,
        is_error=True,
    )


def build_server(backend_for: Callable[[Context[Any, Any]], Backend]) -> MCPServer[Any]:
    """The MCP server with sendguard's tools; `backend_for` finds the backend of a call (the caller's,
    in the daemon; the one API client, over stdio)."""
    server: MCPServer[Any] = MCPServer(
        "sendguard",
        title="sendguard",
        version=sendguard.__version__,
        instructions=(
            "sendguard is the gateway your email goes through: it checks each recipient, throttles, "
            "records every decision, and may ask a person to approve a send. A refusal is an answer "
            "with reason codes, not a failure: read the reasons before trying again. " + STATUSES
        ),
    )

    async def call(ctx: Context[Any, Any], step: Callable[[Backend], Awaitable[Json]]) -> CallToolResult:
        try:
            return _answer(await step(backend_for(ctx)))
        except Refused as refused:
            return _refused(refused)

    async def send_email(
        ctx: Context[Any, Any],
        sender: Sender,
        to: Annotated[str, Field(description="one recipient address")],
        subject: Subject,
        agent_version: AgentVersion,
        text: Text = None,
        html: Html = None,
        segment: Label = None,
        campaign: Label = None,
        run_id: Annotated[str | None, Field(description="your run, to find its messages later")] = None,
        idempotency_key: IdempotencyKey = None,
        send_at: SendAt = None,
        headers: Headers = None,
        recipient_timezone: RecipientTimezone = None,
    ) -> Annotated[CallToolResult, Decision]:
        body = _body(
            sender=sender,
            to=to,
            recipient_timezone=recipient_timezone,
            subject=subject,
            agent_version=agent_version,
            text=text,
            html=html,
            segment=segment,
            campaign=campaign,
            run_id=run_id,
            idempotency_key=idempotency_key,
            send_at=send_at,
            headers=headers,
        )
        return await call(ctx, lambda backend: backend.send(body))

    async def send_batch(
        ctx: Context[Any, Any],
        sender: Sender,
        recipients: Annotated[
            list[dict[str, Any]],
            Field(
                description="[{'to': 'ann@initech.example', 'vars': {'first_name': 'Ann'}}, ...]: "
                "up to 50,000; {{ name }} in the subject and bodies is filled from each one's vars",
                min_length=1,
            ),
        ],
        subject: Subject,
        agent_version: AgentVersion,
        text: Text = None,
        html: Html = None,
        segment: Label = None,
        campaign: Label = None,
        run_id: Annotated[str | None, Field(description="your run, to find its messages later")] = None,
        idempotency_key: IdempotencyKey = None,
        send_at: SendAt = None,
        headers: Headers = None,
    ) -> Annotated[CallToolResult, BatchOut]:
        body = _body(
            sender=sender,
            recipients=recipients,
            subject=subject,
            agent_version=agent_version,
            text=text,
            html=html,
            segment=segment,
            campaign=campaign,
            run_id=run_id,
            idempotency_key=idempotency_key,
            send_at=send_at,
            headers=headers,
        )
        return await call(ctx, lambda backend: backend.send_batch(body))

    async def get_message(
        ctx: Context[Any, Any], message_id: Annotated[str, Field(description="the id a send answered")]
    ) -> Annotated[CallToolResult, MessageOut]:
        return await call(ctx, lambda backend: backend.get_message(message_id))

    async def cancel_message(
        ctx: Context[Any, Any], message_id: Annotated[str, Field(description="the id a send answered")]
    ) -> Annotated[CallToolResult, Decision]:
        return await call(ctx, lambda backend: backend.cancel(message_id))

    async def list_my_messages(
        ctx: Context[Any, Any],
        status: Annotated[Status | None, Field(description="only messages in this status")] = None,
        limit: Annotated[int, Field(ge=1, le=MAX_LISTED, description="how many, newest first")] = 50,
    ) -> Annotated[CallToolResult, MessageList]:
        wanted = status.value if status else None
        return await call(ctx, lambda backend: backend.list_messages(wanted, limit))

    async def check_recipients(
        ctx: Context[Any, Any],
        addresses: Annotated[list[str], Field(min_length=1, max_length=MAX_CHECKED)],
    ) -> Annotated[CallToolResult, RecipientsOut]:
        return await call(ctx, lambda backend: backend.check_recipients(addresses))

    async def sending_status(ctx: Context[Any, Any]) -> Annotated[CallToolResult, SendingStatus]:
        return await call(ctx, lambda backend: backend.sending_status())

    tools: list[tuple[Callable[..., Any], str, ToolAnnotations]] = [
        (
            send_email,
            "Send one email to one recipient through sendguard. It is checked first (the address, "
            "suppression, a per-recipient cooldown, throttles, safe mode) and may need a person's "
            "approval: the answer is a decision with an `id`, a `status` and `reasons`, never an "
            "error for a policy refusal. " + STATUSES,
            _SENDING,
        ),
        (
            send_batch,
            "Send one message to many recipients, each checked and decided on its own (`accepted` and "
            "`rejected`, each with its id, status and reasons). A large send waits for two people to "
            "approve it: `approval` then names the request, who must approve and until when. " + STATUSES,
            _SENDING,
        ),
        (
            get_message,
            "Read one of your messages: its status now, reasons, the relay's last reply and every "
            "transition with its time and cause. " + STATUSES,
            _READING,
        ),
        (
            cancel_message,
            "Cancel one of your messages that has not been sent yet (queued, deferred, held or waiting "
            "for approval). A message already sending or done cannot be cancelled (an error says so).",
            _CANCELLING,
        ),
        (
            list_my_messages,
            "List your own messages, newest first (your newest 1,000 of the last 30 days), optionally "
            "only those in one status.",
            _READING,
        ),
        (
            check_recipients,
            f"Check up to {MAX_CHECKED} recipient addresses before sending, without sending or "
            "reserving anything: each gets `would_queue`, `deferred` (DNS failed for a moment) or "
            "`rejected` with reason codes (invalid_address, free_domain, role_account, "
            "disposable_domain, domain_not_found, null_mx, no_mail_host, suppressed, "
            "recipient_cooldown). Only the recipient is judged; a send can still wait for approval "
            "or be held by safe mode.",
            _READING,
        ),
        (
            sending_status,
            "What you may send now: the headroom of each rolling throttle window your messages fall "
            "into, your approval requests still waiting for a person (who must approve, until when), "
            "and the scopes in safe mode that would hold your messages.",
            _READING,
        ),
    ]
    for function, description, annotations in tools:
        server.add_tool(function, name=function.__name__, description=description, annotations=annotations)
    return server
