"""A small typed client for sendguard's HTTP API: how a Python agent sends, and how the control
commands and the stdio MCP server act.

A control action taken through the running daemon is counted in its metrics, notified through its
webhook and checked against the caller's token; one taken on a store of its own would be none of
these. `Client` is sync and `AsyncClient` its async twin, both on httpx: each method names one
route and what its answer reads as (a `_Call`, built once for both), and only sending it differs.
A policy decision is an answer like any other (`Decision.status` `rejected`, with reason codes);
any other answer raises, carrying the status, the detail and the reason codes, never the token:

ClientError              (a SendguardError) also: an answer this client cannot read
├── Unreachable          no answer: nothing listens there, a timeout, a name that does not resolve
└── ApiError             the API answered 4xx or 5xx: `status`, `detail`, `reasons`, `body`
    ├── TokenRefused     401, or 403 without a reason code: the token is not valid, or its role
    │                    may not do this
    ├── Forbidden        403 with a reason code: a rule forbids this send (`inbox_not_allowed`...)
    └── NotFound         404
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from sendguard.errors import SendguardError

M = TypeVar("M")


class ClientError(SendguardError):
    """The API could not be used; the message says where and why, never with the token."""


class Unreachable(ClientError):
    """Nothing answered at the API's address."""


class ApiError(ClientError):
    """The API answered with an error: its status, its `detail` and any reason codes."""

    def __init__(
        self, message: str, status: int, detail: str, reasons: list[str], body: Mapping[str, Any]
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.reasons = reasons
        self.body = dict(body)  # the answer's JSON as the API gave it ({"detail": ...} at least)


class TokenRefused(ApiError):
    """401 (no valid token) or 403 (the token's role may not do this)."""


class Forbidden(ApiError):
    """403 with a reason code: the agent may not send this at all (an inbox, a segment it may not use)."""


class NotFound(ApiError):
    """404: the thing named does not exist (or is not in the state the call needs)."""


class _Answer(BaseModel):
    # Fields the daemon adds later are kept (extra) rather than refused: an older CLI still works.
    model_config = ConfigDict(extra="allow", frozen=True)


class Trip(_Answer):
    scope: str
    cause: str
    detail: str
    by: str
    at: str


class Resumed(_Answer):
    scope: str
    released: int
    still_held: int


class Decided(_Answer):
    by: str
    group: str
    verdict: str
    comment: str
    at: str


class Approval(_Answer):
    id: str
    tier: int
    status: str
    label: str
    why: str
    agent: str = ""
    requested_by: str = ""
    created: str = ""
    expires: str = ""
    rules_version: str = ""
    decisions: list[Decided] = []
    approvals_given: int = 0
    approvals_needed: int = 1
    releases: str = ""
    contents: dict[str, Any] | None = None  # `approval()` only: counts, breakdowns, samples


class RulesReloaded(_Answer):
    version: str
    previous_version: str
    path: str
    changed: list[str]
    agents_added: list[str]
    agents_removed: list[str]
    agents_changed: list[str]
    environments: dict[str, str] = {}  # an older daemon does not say


class Activity(_Answer):
    """An agent's last 24 hours (from `since`), as governance/register.py counts them."""

    since: str
    sent: int
    bounced: int
    failed: int
    rejected: int
    rejected_by_reason: dict[str, int]
    denied: int
    tripped: int


class Agent(_Answer):
    """One agent of the register in force: every `[[agent]]` field, its gaps, its last 24 hours."""

    name: str
    environment: str
    owner: str | None
    builder: str | None
    systems: list[str]
    data_classes: list[str]
    rollback_plan: str | None
    last_tested: str | None
    last_reviewed: str | None
    inboxes: list[str]
    segments: list[str]
    versions: list[str]
    tier: int
    gaps: list[str]
    activity: Activity


class Suppressed(_Answer):
    addresses: list[str]
    domains: list[str]


# -- the agent's side: what it sends, and what the API answers ------------------------------------


class _Content(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # `Email(from_=...)` in Python, `from` on the wire.
    from_: str = Field(
        validation_alias=AliasChoices("from", "from_"),
        serialization_alias="from",
        description="'Alice <alice@acme.example>': one of the agent's inboxes",
    )
    subject: str
    agent_version: str
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] | None = None
    segment: str | None = None
    campaign: str | None = None
    run_id: str | None = None
    idempotency_key: str | None = None
    send_at: datetime | None = None
    enrichment: dict[str, str] | None = None


class Email(_Content):
    """What `POST /v1/messages` takes: one message to one recipient (see the README's HTTP API)."""

    to: str
    recipient_timezone: str | None = None  # IANA, for send windows in the recipient's wall clock


class BatchRecipient(BaseModel):
    to: str
    vars: dict[str, str] = {}
    recipient_timezone: str | None = None


class BatchEmail(_Content):
    """What `POST /v1/batches` takes: the message once, `{{ name }}` filled from each recipient's vars."""

    recipients: list[BatchRecipient]


class Reason(_Answer):
    code: str
    detail: str


class ApprovalWait(_Answer):
    """The approval request a submission waits for: who must approve it, and until when."""

    id: str
    tier: int
    why: str
    approvals_needed: int = 1
    who_approves: str = ""
    expires: str = ""


class Decision(_Answer):
    """A submission's answer: `queued`, `deferred`, `held`, `pending_approval` (see `approval`),
    `rejected` (see `reasons`), or `cancelled` after a cancel."""

    id: str
    status: str
    reasons: list[Reason]
    # As the API answers: present only while the message waits for a request.
    approval: ApprovalWait | None = Field(default=None, exclude_if=lambda approval: approval is None)


class BatchRecipientDecision(_Answer):
    index: int
    to: str
    id: str
    status: str
    reasons: list[Reason]


class BatchDecision(_Answer):
    id: str
    recipients: int
    accepted: list[BatchRecipientDecision]
    rejected: list[BatchRecipientDecision]
    approval: ApprovalWait | None = None


class Transition(_Answer):
    at: str
    status: str
    cause: str
    detail: str


class Message(_Answer):
    """A message as `GET /v1/messages/{id}` shows it, with its history."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    status: str
    from_: str = Field(alias="from")
    to: str
    subject: str
    agent: str
    reasons: list[Reason]
    attempts: int
    smtp_code: int | None = None
    smtp_text: str | None = None
    held_by: str | None = None
    created_at: str
    history: list[Transition]


class MessageLine(_Answer):
    id: str
    status: str
    to: str
    subject: str
    reasons: list[Reason]
    created_at: str
    campaign: str | None = None
    batch: str | None = None


class MessageList(_Answer):
    messages: list[MessageLine]


class RecipientVerdict(_Answer):
    to: str
    address: str
    verdict: str  # would_queue, deferred or rejected
    reasons: list[Reason]


class RecipientVerdicts(_Answer):
    recipients: list[RecipientVerdict]


class Window(_Answer):
    scope: str
    limit: int
    per_seconds: float
    used: int
    remaining: int


class Ramp(_Answer):
    scope: str
    limit: int
    ceiling: int
    per_seconds: float
    used: int
    first_send: str | None


class WaitingRequest(_Answer):
    id: str
    tier: int
    why: str
    messages: int
    approvals_given: int
    approvals_needed: int
    who_approves: str
    expires: str


class SendingStatus(_Answer):
    agent: str
    throttles: list[Window]
    ramps: list[Ramp] = []  # absent from a daemon older than warm-up ramps
    approvals: list[WaitingRequest]
    safe_mode: list[str]


# -- one table of calls for both clients ------------------------------------------------------------


@dataclass(frozen=True)
class _Call(Generic[M]):
    """One request and the model its answer reads as; built once, sent by either client."""

    method: str
    path: str
    answer: type[M]
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)

    def send_args(self) -> dict[str, Any]:
        return {"json": self.json, "params": self.params or None}


def _body(given: BaseModel | Mapping[str, Any]) -> Any:
    """A request's JSON: a model as the API names its fields, or a mapping already in that form
    (sent as it is, so the API, not this client, says what is wrong with it)."""
    if isinstance(given, BaseModel):
        return given.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dict(given)


class _Agent:
    """The agent's calls, route by route (`Client` and `AsyncClient` send them)."""

    @staticmethod
    def send(email: Email | Mapping[str, Any]) -> _Call[Decision]:
        return _Call("POST", "/v1/messages", Decision, json=_body(email))

    @staticmethod
    def send_batch(batch: BatchEmail | Mapping[str, Any]) -> _Call[BatchDecision]:
        return _Call("POST", "/v1/batches", BatchDecision, json=_body(batch))

    @staticmethod
    def get_message(message_id: str) -> _Call[Message]:
        return _Call("GET", f"/v1/messages/{_segment(message_id)}", Message)

    @staticmethod
    def cancel(message_id: str) -> _Call[Decision]:
        return _Call("POST", f"/v1/messages/{_segment(message_id)}/cancel", Decision)

    @staticmethod
    def list_messages(status: str | None, limit: int) -> _Call[MessageList]:
        params: dict[str, Any] = {"limit": limit} | ({"status": status} if status else {})
        return _Call("GET", "/v1/messages", MessageList, params=params)

    @staticmethod
    def check_recipients(addresses: list[str]) -> _Call[RecipientVerdicts]:
        return _Call("POST", "/v1/recipients/check", RecipientVerdicts, json={"to": addresses})

    @staticmethod
    def sending_status() -> _Call[SendingStatus]:
        return _Call("GET", "/v1/sending-status", SendingStatus)


class _Base:
    """What both clients share: where the API is, the token in a header only, and reading answers."""

    def __init__(self, base_url: str, token: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        # httpx masks the Authorization header in its reprs; this object never holds the token.
        self._options: dict[str, Any] = {
            "base_url": self.base_url,
            "headers": {"Authorization": f"Bearer {token}"},
            "timeout": timeout,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def _unreachable(self, exc: httpx.TransportError) -> Unreachable:
        return Unreachable(
            f"cannot reach the sendguard API at {self.base_url}: {type(exc).__name__}"
            f"{f': {exc}' if str(exc) else ''}"
        )

    def _checked(self, method: str, path: str, response: httpx.Response) -> httpx.Response:
        """The response if it succeeded; otherwise the ApiError it means."""
        if response.is_success:
            return response
        detail, reasons, body = _problem(response)
        where = f"the sendguard API at {self.base_url}"
        status = response.status_code
        if status == 403 and reasons:
            raise Forbidden(f"{where} refused: {detail} ({status})", status, detail, reasons, body)
        if status in (401, 403):
            what = "refused the token" if status == 401 else "refused this token's role"
            raise TokenRefused(f"{where} {what}: {detail} ({status})", status, detail, reasons, body)
        if status == 404:
            raise NotFound(f"{detail} ({status} from {where})", status, detail, reasons, body)
        failed = "refused" if status < 500 else "failed"
        raise ApiError(
            f"{where} {failed} {method} {path}: {detail} ({status})", status, detail, reasons, body
        )

    def _parse(self, response: httpx.Response, model: type[M]) -> M:
        try:
            parsed: M = TypeAdapter(model).validate_json(response.content)
        except ValidationError as exc:
            raise ClientError(
                f"the sendguard API at {self.base_url} gave an answer this client cannot read "
                f"({response.request.method} {response.request.url.path}): {exc.error_count()} problems"
            ) from exc
        return parsed


class AsyncClient(_Base):
    """The agent's side of the API, async: `async with AsyncClient(url, token) as api: ...`."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0) -> None:
        super().__init__(base_url, token, timeout)
        self._http = httpx.AsyncClient(**self._options)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, email: Email | Mapping[str, Any]) -> Decision:
        """Submit one message; the decision, whatever it is (a rejection is an answer, not an error)."""
        return await self._run(_Agent.send(email))

    async def send_batch(self, batch: BatchEmail | Mapping[str, Any]) -> BatchDecision:
        return await self._run(_Agent.send_batch(batch))

    async def get_message(self, message_id: str) -> Message:
        return await self._run(_Agent.get_message(message_id))

    async def cancel(self, message_id: str) -> Decision:
        return await self._run(_Agent.cancel(message_id))

    async def list_messages(self, status: str | None = None, limit: int = 50) -> MessageList:
        return await self._run(_Agent.list_messages(status, limit))

    async def check_recipients(self, addresses: list[str]) -> RecipientVerdicts:
        return await self._run(_Agent.check_recipients(addresses))

    async def sending_status(self) -> SendingStatus:
        return await self._run(_Agent.sending_status())

    async def _run(self, call: _Call[M]) -> M:
        try:
            response = await self._http.request(call.method, call.path, **call.send_args())
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return self._parse(self._checked(call.method, call.path, response), call.answer)


class Client(_Base):
    """One deployment's API, as one token; a context manager that closes its connections."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0) -> None:
        super().__init__(base_url, token, timeout)
        self._http = httpx.Client(**self._options)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the agent's side (as AsyncClient's) -------------------------------------------------------

    def send(self, email: Email | Mapping[str, Any]) -> Decision:
        """Submit one message; the decision, whatever it is (a rejection is an answer, not an error)."""
        return self._run(_Agent.send(email))

    def send_batch(self, batch: BatchEmail | Mapping[str, Any]) -> BatchDecision:
        return self._run(_Agent.send_batch(batch))

    def get_message(self, message_id: str) -> Message:
        return self._run(_Agent.get_message(message_id))

    def cancel(self, message_id: str) -> Decision:
        return self._run(_Agent.cancel(message_id))

    def list_messages(self, status: str | None = None, limit: int = 50) -> MessageList:
        return self._run(_Agent.list_messages(status, limit))

    def check_recipients(self, addresses: list[str]) -> RecipientVerdicts:
        return self._run(_Agent.check_recipients(addresses))

    def sending_status(self) -> SendingStatus:
        return self._run(_Agent.sending_status())

    # -- safe mode ---------------------------------------------------------------------------------

    def safe_mode(self) -> list[Trip]:
        """The scopes in safe mode now."""
        return self._call("GET", "/v1/safe-mode", list[Trip])

    def trip(self, scope: str, reason: str) -> tuple[Trip, bool]:
        """Trip a scope by hand; (the active trip, whether this call made it)."""
        response = self._send("POST", "/v1/safe-mode", json={"scope": scope, "reason": reason})
        return self._parse(response, Trip), response.status_code == 201

    def resume(self, scope: str, reason: str) -> Resumed:
        """Resume a scope; NotFound when it is not in safe mode."""
        return self._call("DELETE", f"/v1/safe-mode/{_segment(scope)}", Resumed, params={"reason": reason})

    # -- approvals ---------------------------------------------------------------------------------

    def approvals(self, status: str | None = None) -> list[Approval]:
        params = {"status": status} if status else None
        return self._call("GET", "/v1/approvals", list[Approval], params=params)

    def approval(self, approval_id: str) -> Approval:
        """One request with `contents`: what exactly it would release."""
        return self._call("GET", f"/v1/approvals/{_segment(approval_id)}", Approval)

    def decide(self, approval_id: str, *, approve: bool, comment: str) -> Approval:
        verdict = "approve" if approve else "deny"
        path = f"/v1/approvals/{_segment(approval_id)}/{verdict}"
        return self._call("POST", path, Approval, json={"comment": comment})

    # -- rules, the register and suppressions ------------------------------------------------------

    def reload_rules(self) -> RulesReloaded:
        """Have the daemon (and, through it, every daemon on its Redis) read the rules file again."""
        return self._call("POST", "/v1/rules/reload", RulesReloaded)

    def agents(self) -> list[Agent]:
        """The agent register in force, with each agent's last 24 hours."""
        return self._call("GET", "/v1/agents", list[Agent])

    def suppressions(self) -> Suppressed:
        return self._call("GET", "/v1/suppressions", Suppressed)

    def suppress(self, entries: list[str]) -> Suppressed:
        """Suppress addresses and whole domains; the answer is what they came to, normalised."""
        return self._call("POST", "/v1/suppressions", Suppressed, json={"entries": entries})

    def lift_suppression(self, entry: str) -> None:
        """Lift one suppression; NotFound when it is not suppressed."""
        self._send("DELETE", f"/v1/suppressions/{_segment(entry)}")

    # -- one seam for every call -------------------------------------------------------------------

    def _run(self, call: _Call[M]) -> M:
        return self._call(call.method, call.path, call.answer, **call.send_args())

    def _call(self, method: str, path: str, model: type[M], **kwargs: Any) -> M:
        return self._parse(self._send(method, path, **kwargs), model)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; every way it can fail becomes one of this module's errors."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return self._checked(method, path, response)


def _segment(value: str) -> str:
    """A value as one path segment: `/`, `?`, `#` and `%` in a scope or an entry stay data."""
    return quote(value, safe=":@")


def _problem(response: httpx.Response) -> tuple[str, list[str], dict[str, Any]]:
    """The error's `detail`, reason codes and whole body, whatever shape the body has."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        detail = response.reason_phrase or "no detail"
        return detail, [], {"detail": detail}
    given = body.get("detail")
    # FastAPI's own 422s carry a list
    said = given if isinstance(given, str) else str(given) if given is not None else response.reason_phrase
    reasons = [r["code"] for r in body.get("reasons", []) if isinstance(r, dict) and "code" in r]
    return said, reasons, body
