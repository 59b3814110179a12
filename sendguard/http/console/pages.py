"""What every console page shares: templates, headers, the signed-in person and their forms.

Pages are rendered on the server with autoescaping and carry a Content-Security-Policy that lets
no script run and nothing load from anywhere but the daemon: what agents wrote (subjects, bodies,
names) is shown as text, and a message's HTML only in a sandboxed frame of its own
(`SAMPLE_POLICY`). Every state-changing form carries the session's CSRF secret and is refused
without it, or when the browser says it came from another origin. A form for admins alone also
needs the admin's break-glass elevation in force (governance/break_glass.py says why).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sendguard.governance.audit import AuditEntry, AuditError
from sendguard.governance.roles import Role
from sendguard.governance.sessions import Session
from sendguard.http.access import runtime_of
from sendguard.parts import Runtime

HERE = Path(__file__).parent
STATIC = HERE / "static"
COOKIE = "sg_session"

POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; frame-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# A message's HTML in its frame: no script, nothing remote, an origin of its own; only the
# console may frame it.
SAMPLE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'self'"
)
_HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    # Not `no-referrer`: with it Chromium sends `Origin: null` on the console's own forms.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def section_router() -> APIRouter:
    """A console section's routes: under /ui/, and not in the OpenAPI document, which is for programs."""
    return APIRouter(prefix="/ui", include_in_schema=False)


PEOPLE = frozenset(role for role in Role if role is not Role.AGENT)


@dataclass(frozen=True)
class NavItem:
    title: str
    path: str
    roles: frozenset[Role]


# The console's sections, in the order of its menu; each page checks its own roles too.
NAV = (
    NavItem("Approvals", "/ui/approvals", frozenset({Role.APPROVER, Role.OPERATOR, Role.ADMIN})),
    NavItem("Safe mode", "/ui/safe-mode", frozenset({Role.OPERATOR, Role.ADMIN})),
    NavItem("Messages", "/ui/messages", frozenset({Role.OPERATOR, Role.ADMIN})),
    NavItem("Agents", "/ui/agents", frozenset({Role.OPERATOR, Role.ADMIN, Role.AUDITOR})),
    NavItem("Audit", "/ui/audit", frozenset({Role.AUDITOR, Role.ADMIN})),
    NavItem("Suppressions", "/ui/suppressions", frozenset({Role.ADMIN})),
    NavItem("Break-glass", "/ui/break-glass", frozenset({Role.ADMIN})),
)
# How many of the audit trail's latest entries a page reads, at most: the trail has no index yet.
AUDIT_EXAMINED = 20_000


def _moment(ms: int | None) -> str:
    """Epoch milliseconds as people read them: `2026-11-28 10:42:07 UTC`."""
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _within(ms: int, now_ms: int) -> str:
    """How far a moment is from now, in words: `in 3 h 20 min`, `5 min ago`."""
    seconds = abs(ms - now_ms) // 1000
    if seconds < 60:
        words = f"{seconds} s"
    elif seconds < 3600:
        words = f"{seconds // 60} min"
    elif seconds < 86400:
        words = f"{seconds // 3600} h {seconds % 3600 // 60} min"
    else:
        words = f"{seconds // 86400} d {seconds % 86400 // 3600} h"
    return f"in {words}" if ms >= now_ms else f"{words} ago"


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["moment"] = _moment
_templates.globals["within"] = _within


def page(
    request: Request, template: str, session: Session | None, status: int = 200, **context: Any
) -> Response:
    """A rendered page with the console's headers; `session` decides the menu and the forms' secret."""
    role = session.principal.role if session else None
    body = _templates.get_template(template).render(
        session=session,
        csrf=session.csrf if session else "",
        nav=[item for item in NAV if role in item.roles],
        path=request.url.path,
        now_ms=int(datetime.now(UTC).timestamp() * 1000),
        **context,
    )
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


class PageError(Exception):
    """A console request refused: shown as a page that says why, with its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SignInNeeded(Exception):
    """No session, or one that has ended: the browser is sent to the sign-in page."""


async def page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    session = getattr(request.state, "console_session", None)
    return page(request, "error.html", session, exc.status, message=exc.message)


async def sign_in_needed(request: Request, exc: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/sign-in?next={quote(target, safe='')}", status_code=303)


async def signed_in(request: Request) -> Session:
    """The session of the request's cookie, with the admin's elevation in force if any; sends the
    browser to sign in when there is none."""
    runtime = runtime_of(request)
    session = await runtime.sessions.find(request.cookies.get(COOKIE, ""))
    if session is None or session.principal.role not in PEOPLE:  # sign-in opens none for an agent
        raise SignInNeeded
    session = session.elevated(await runtime.break_glass.active(session.principal))
    request.state.console_session = session
    return session


def same_origin(request: Request) -> None:
    """A form posted from another site is refused, whatever it carries (the cookie is
    `SameSite=Strict` as well; this holds for browsers that send `Origin`, all current ones)."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin is not None and origin != own:
        raise PageError(403, "This form was sent from another site, so it was refused.")


async def form_of(request: Request) -> dict[str, str]:
    """A posted form's text fields (a console form has no files)."""
    form = await request.form()
    return {name: value for name, value in form.items() if isinstance(value, str)}


def allowed(*roles: Role) -> Callable[[Request], Awaitable[Session]]:
    """A page for these roles; anyone else signed in is told, in words, that theirs may not."""

    async def check(request: Request) -> Session:
        session = await signed_in(request)
        if session.principal.role not in roles:
            who = ", ".join(role.value for role in roles)
            raise PageError(403, f"This page is for {who}; you are signed in as {session.principal}.")
        return session

    return check


def acting(
    *roles: Role, break_glass: bool = True
) -> Callable[[Request], Awaitable[tuple[Session, dict[str, str]]]]:
    """A state-changing form of these roles: the session and the form, its CSRF secret checked.

    A form for admins alone is refused without the admin's break-glass elevation in force; the
    session passed on carries it, and `session.actor` names it for the audit trail. Only the
    break-glass forms themselves, which ask for, grant and end elevations, pass `break_glass=False`.
    """
    may_see = allowed(*roles)
    gated = break_glass and set(roles) == {Role.ADMIN}

    async def check(request: Request) -> tuple[Session, dict[str, str]]:
        same_origin(request)
        session = await may_see(request)
        form = await form_of(request)
        if not session.csrf_matches(form.get("csrf", "")):
            raise PageError(
                403,
                "This form is missing its security code or has one from another session "
                "(it may have been open across a sign-out). Reload the page and send it again.",
            )
        if gated and session.elevation is None:
            await runtime_of(request).break_glass.refuse_form(session.principal, request.url.path)
            raise PageError(
                403,
                "Refused: this is an admin action, and in the console admin actions need break-glass: "
                "an elevation with a ticket that a second admin has granted and that has not ended. "
                "Ask for one on the Break-glass page.",
            )
        return session, form

    return check


async def recent_audit(
    runtime: Runtime, wanted: Callable[[AuditEntry], bool]
) -> tuple[list[AuditEntry], bool]:
    """The `wanted` entries among the trail's latest `AUDIT_EXAMINED`, oldest first, and whether
    older entries went unread (a page reads a bounded part of the trail, never all of it)."""
    try:
        chained, _ = await runtime.audit.head()
        start = max(0, chained - AUDIT_EXAMINED)
        return [item async for item in runtime.audit.iter_entries(start) if wanted(item)], start > 0
    except AuditError as exc:
        raise PageError(500, f"The audit trail could not be read: {exc}") from exc


Form = tuple[Session, dict[str, str]]
SignedIn = Annotated[Session, Depends(signed_in)]
