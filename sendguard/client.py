"""A small typed client for sendguard's HTTP API: what the control commands do, they do through it.

A control action taken through the running daemon is counted in its metrics, notified through its
webhook and checked against the caller's token; one taken on a store of its own would be none of
these. Sync, on httpx. Each method is one route and returns the answer as a typed model; any
other answer raises, carrying the status, the detail and the reason codes, never the token:

ClientError              (a SendguardError) also: an answer this client cannot read
├── Unreachable          no answer: nothing listens there, a timeout, a name that does not resolve
└── ApiError             the API answered 4xx or 5xx: `status`, `detail`, `reasons`
    ├── TokenRefused     401 or 403: the token is not valid, or its role may not do this
    └── NotFound         404
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from sendguard.errors import SendguardError

M = TypeVar("M")


class ClientError(SendguardError):
    """The API could not be used; the message says where and why, never with the token."""


class Unreachable(ClientError):
    """Nothing answered at the API's address."""


class ApiError(ClientError):
    """The API answered with an error: its status, its `detail` and any reason codes."""

    def __init__(self, message: str, status: int, detail: str, reasons: list[str]) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.reasons = reasons


class TokenRefused(ApiError):
    """401 (no valid token) or 403 (the token's role may not do this)."""


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


class Client:
    """One deployment's API, as one token; a context manager that closes its connections."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        # httpx masks the Authorization header in its reprs; this object never holds the token.
        self._http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

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

    def _call(self, method: str, path: str, model: type[M], **kwargs: Any) -> M:
        return self._parse(self._send(method, path, **kwargs), model)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; every way it can fail becomes one of this module's errors."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach the sendguard API at {self.base_url}: {type(exc).__name__}"
                f"{f': {exc}' if str(exc) else ''}"
            ) from exc
        if response.is_success:
            return response
        detail, reasons = _problem(response)
        where = f"the sendguard API at {self.base_url}"
        status = response.status_code
        if status in (401, 403):
            what = "refused the token" if status == 401 else "refused this token's role"
            raise TokenRefused(f"{where} {what}: {detail} ({status})", status, detail, reasons)
        if status == 404:
            raise NotFound(f"{detail} ({status} from {where})", status, detail, reasons)
        failed = "refused" if status < 500 else "failed"
        raise ApiError(f"{where} {failed} {method} {path}: {detail} ({status})", status, detail, reasons)

    def _parse(self, response: httpx.Response, model: type[M]) -> M:
        try:
            parsed: M = TypeAdapter(model).validate_json(response.content)
        except ValidationError as exc:
            raise ClientError(
                f"the sendguard API at {self.base_url} gave an answer this client cannot read "
                f"({response.request.method} {response.request.url.path}): {exc.error_count()} problems"
            ) from exc
        return parsed


def _segment(value: str) -> str:
    """A value as one path segment: `/`, `?`, `#` and `%` in a scope or an entry stay data."""
    return quote(value, safe=":@")


def _problem(response: httpx.Response) -> tuple[str, list[str]]:
    """The error's `detail` and reason codes, whatever shape the body has."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return (response.reason_phrase or "no detail"), []
    detail = body.get("detail")
    if not isinstance(detail, str):  # FastAPI's own 422s carry a list
        detail = str(detail) if detail is not None else response.reason_phrase
    reasons = [r["code"] for r in body.get("reasons", []) if isinstance(r, dict) and "code" in r]
    return detail, reasons
