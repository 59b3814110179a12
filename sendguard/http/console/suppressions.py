"""Suppressions in the console: the list, adding entries, and lifting one after a confirmation.

Admins only, and adding or lifting goes through `acting(Role.ADMIN)`: under break-glass, with the
elevation's marker in the audit entries' actor.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response

from sendguard.errors import InvalidValue
from sendguard.governance.roles import Role
from sendguard.governance.sessions import Session
from sendguard.http.access import RuntimeDep
from sendguard.http.console.pages import Form, PageError, acting, allowed, page, section_router
from sendguard.parts import Runtime

router = section_router()
AdminPage = Annotated[Session, Depends(allowed(Role.ADMIN))]
Changing = Annotated[Form, Depends(acting(Role.ADMIN))]
SHOWN = 500  # entries listed per kind; the search narrows a longer list
MAX_ENTRIES = 1000  # entries added by one form, as the API takes them


async def _list_page(
    request: Request, runtime: Runtime, session: Session, search: str = "", status: int = 200, **said: str
) -> Response:
    addresses, domains = await runtime.suppressions.list()
    needle = search.strip().casefold()
    matching = [[e for e in found if needle in e] for found in (addresses, domains)]
    return page(
        request,
        "suppressions.html",
        session,
        status,
        search=search,
        totals=(len(addresses), len(domains)),
        addresses=matching[0][:SHOWN],
        domains=matching[1][:SHOWN],
        cut=any(len(found) > SHOWN for found in matching),
        problem=said.get("problem", ""),
        done=said.get("done", ""),
        entries=said.get("entries", ""),
    )


@router.get("/suppressions")
async def suppressions(request: Request, runtime: RuntimeDep, session: AdminPage, q: str = "") -> Response:
    return await _list_page(request, runtime, session, q)


@router.post("/suppressions")
async def add(request: Request, runtime: RuntimeDep, signed: Changing) -> Response:
    session, form = signed
    text = form.get("entries", "")
    entries = [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]
    if not 1 <= len(entries) <= MAX_ENTRIES:
        problem = f"List 1 to {MAX_ENTRIES} addresses or domains, one a line."
        return await _list_page(request, runtime, session, status=422, problem=problem, entries=text)
    try:
        added = await runtime.suppressions.suppress(entries, session.actor)
    except InvalidValue as exc:
        return await _list_page(request, runtime, session, status=422, problem=f"{exc}.", entries=text)
    done = f"Suppressed {added.new} new of {len(entries)}; {added.cancelled} waiting messages cancelled."
    return await _list_page(request, runtime, session, done=done)


@router.get("/suppressions/lift")
async def confirm_lift(request: Request, session: AdminPage, entry: str = "") -> Response:
    if not entry.strip():
        raise PageError(422, "Name the address or domain to lift.")
    return page(request, "suppression_lift.html", session, entry=entry.strip())


@router.post("/suppressions/lift")
async def lift(request: Request, runtime: RuntimeDep, signed: Changing) -> Response:
    session, form = signed
    entry = form.get("entry", "").strip()
    try:
        lifted = await runtime.suppressions.lift(entry, session.actor)
    except InvalidValue as exc:
        raise PageError(422, f"{exc}.") from exc
    if not lifted:
        raise PageError(404, f"There is no suppression of {entry}: nothing was lifted.")
    return await _list_page(request, runtime, session, done=f"Lifted the suppression of {entry}.")
