"""Break-glass in the console: ask for an elevation, grant another admin's, end one, see the history.

These forms are for admins and are the only ones that pass `break_glass=False` to `acting()`:
they are how an elevation comes to be, so they cannot need one (governance/break_glass.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response

from sendguard.governance.break_glass import MAX_MINUTES, BreakGlassRefused
from sendguard.governance.roles import Role
from sendguard.governance.sessions import Session
from sendguard.governance.tokens import normal_name
from sendguard.http.access import RuntimeDep
from sendguard.http.console.pages import Form, acting, allowed, page, section_router
from sendguard.parts import Runtime

router = section_router()
AdminPage = Annotated[Session, Depends(allowed(Role.ADMIN))]
Asking = Annotated[Form, Depends(acting(Role.ADMIN, break_glass=False))]


async def _page(
    request: Request, runtime: Runtime, session: Session, status: int = 200, problem: str = ""
) -> Response:
    return page(
        request,
        "break_glass.html",
        session,
        status,
        recent=await runtime.break_glass.recent(),
        me=normal_name(session.principal.name),
        max_minutes=MAX_MINUTES,
        problem=problem,
    )


@router.get("/break-glass")
async def overview(request: Request, runtime: RuntimeDep, session: AdminPage) -> Response:
    return await _page(request, runtime, session)


@router.post("/break-glass/request")
async def ask(request: Request, runtime: RuntimeDep, signed: Asking) -> Response:
    session, form = signed
    try:
        await runtime.break_glass.request(
            session.principal, form.get("ticket", ""), form.get("reason", ""), form.get("duration", "")
        )
    except BreakGlassRefused as refused:
        return await _page(request, runtime, session, 422, str(refused))
    return RedirectResponse("/ui/break-glass", status_code=303)


@router.post("/break-glass/{elevation_id}/grant")
async def grant(elevation_id: str, request: Request, runtime: RuntimeDep, signed: Asking) -> Response:
    session, _ = signed
    try:
        await runtime.break_glass.grant(elevation_id, session.principal)
    except BreakGlassRefused as refused:
        return await _page(request, runtime, session, 403, f"Refused: {refused}")
    return RedirectResponse("/ui/break-glass", status_code=303)


@router.post("/break-glass/{elevation_id}/end")
async def end(elevation_id: str, request: Request, runtime: RuntimeDep, signed: Asking) -> Response:
    session, _ = signed
    try:
        await runtime.break_glass.end(elevation_id, session.principal)
    except BreakGlassRefused as refused:
        return await _page(request, runtime, session, 403, f"Refused: {refused}")
    return RedirectResponse("/ui/break-glass", status_code=303)
