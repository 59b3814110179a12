"""Safe mode in the console: the active trips and what they hold, the history, trips and resumes.

A trip (operators and admins) takes two steps: the first form leads to a page that says what will
be held, the second does it. Only an admin resumes, with a reason. Both go through the same
`SafeMode` methods as the API, so the audit entries, metrics and notifications are the same; the
actor is the signed-in person.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response

from sendguard.governance.roles import Role
from sendguard.governance.sessions import Session
from sendguard.http.access import RuntimeDep
from sendguard.http.console.messages import Query, search
from sendguard.http.console.pages import Form, PageError, acting, allowed, page, recent_audit, section_router
from sendguard.model import Status
from sendguard.parts import Runtime
from sendguard.rules import Rules
from sendguard.scopes import GLOBAL, parse_scope, trip_scope

router = section_router()
Watching = Annotated[Session, Depends(allowed(Role.OPERATOR, Role.ADMIN))]
Tripping = Annotated[Form, Depends(acting(Role.OPERATOR, Role.ADMIN))]
Resuming = Annotated[Form, Depends(acting(Role.ADMIN))]

HISTORY = 50  # trips and resumes listed, newest first
_KINDS = ("safe_mode.tripped", "safe_mode.resumed")


async def _overview(
    request: Request, runtime: Runtime, session: Session, status: int = 200, problem: str = ""
) -> Response:
    trips = await runtime.safe_mode.active()
    held = await runtime.store.held_counts([trip.scope for trip in trips])
    history, cut = await recent_audit(runtime, lambda entry: entry.kind in _KINDS)
    return page(
        request,
        "safe_mode.html",
        session,
        status,
        trips=trips,
        held=held,
        history=history[::-1][:HISTORY],
        history_cut=cut,
        may_resume=session.principal.role is Role.ADMIN,
        problem=problem,
    )


@router.get("/safe-mode")
async def overview(request: Request, runtime: RuntimeDep, session: Watching) -> Response:
    return await _overview(request, runtime, session)


def _asked(form: dict[str, str], rules: Rules | None = None) -> tuple[str, str]:
    """The scope and the reason of a form; PageError saying which one is wrong. With the rules (a
    trip), an agent scope must name an agent in their register."""
    reason = form.get("reason", "").strip()
    text = form.get("scope", "")
    try:
        scope = parse_scope(text) if rules is None else trip_scope(text, rules)
    except ValueError as exc:
        raise PageError(422, f"The scope is not one: {exc}.") from exc
    if not 1 <= len(reason) <= 500:
        raise PageError(422, "Give a reason (up to 500 characters): it is recorded with the trip or resume.")
    return scope, reason


@router.post("/safe-mode/confirm")
async def confirm(request: Request, runtime: RuntimeDep, signed: Tripping) -> Response:
    """The step before a trip: what it would hold, and the form that trips."""
    session, form = signed
    try:
        scope, reason = _asked(form, runtime.rules)
    except PageError as refused:
        return await _overview(request, runtime, session, refused.status, refused.message)
    active = next((trip for trip in await runtime.safe_mode.active() if trip.scope == scope), None)
    if scope == GLOBAL:  # every queued message: the counts kept by the scripts say how many
        counts = await runtime.store.waiting_counts()
        holds, complete = counts[Status.QUEUED] + counts[Status.DEFERRED], True
    else:
        found = await search(runtime.store, Query(scope=scope))
        holds, complete = found.matched, found.complete
    return page(
        request,
        "safe_mode_confirm.html",
        session,
        scope=scope,
        reason=reason,
        active=active,
        holds=holds,
        complete=complete,
    )


@router.post("/safe-mode/trip")
async def trip(request: Request, runtime: RuntimeDep, signed: Tripping) -> Response:
    session, form = signed
    try:
        scope, reason = _asked(form, runtime.rules)
    except PageError as refused:
        return await _overview(request, runtime, session, refused.status, refused.message)
    await runtime.safe_mode.trip(scope, "manual", session.actor, reason)
    return RedirectResponse("/ui/safe-mode", status_code=303)


@router.post("/safe-mode/resume")
async def resume(request: Request, runtime: RuntimeDep, signed: Resuming) -> Response:
    session, form = signed
    try:
        scope, reason = _asked(form)
    except PageError as refused:
        return await _overview(request, runtime, session, refused.status, refused.message)
    resumed = await runtime.safe_mode.resume(scope, session.actor, reason)
    if resumed.not_tripped:
        return await _overview(request, runtime, session, 409, f"{scope} is not in safe mode.")
    return RedirectResponse("/ui/safe-mode", status_code=303)
