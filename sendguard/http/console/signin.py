"""Signing in and out, and the console's first page."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response

from sendguard.governance.roles import Role
from sendguard.governance.sessions import LIFETIME
from sendguard.http.access import RuntimeDep
from sendguard.http.console.pages import (
    COOKIE,
    PEOPLE,
    Form,
    SignedIn,
    acting,
    form_of,
    page,
    same_origin,
    section_router,
)

router = section_router()


def _next(target: str) -> str:
    """Where to go after signing in: a console page, never another site (`//evil.example`)."""
    return target if target.startswith("/ui/") and "\\" not in target else "/ui/"


@router.get("/sign-in")
async def sign_in_page(request: Request, runtime: RuntimeDep, next: str = "/ui/") -> Response:
    session = await runtime.sessions.find(request.cookies.get(COOKIE, ""))
    if session is not None:
        return RedirectResponse(_next(next), status_code=303)
    return page(request, "sign_in.html", None, next=_next(next), problem="")


@router.post("/sign-in")
async def sign_in(request: Request, runtime: RuntimeDep) -> Response:
    """The token is read once, checked, and dropped: the browser keeps a session cookie only."""
    same_origin(request)
    form = await form_of(request)
    target = _next(form.get("next", "/ui/"))
    principal = await runtime.tokens.verify(form.get("token", "").strip())
    problem = ""
    if principal is None:
        problem = "That token is not valid: it may be mistyped, revoked or expired."
    elif principal.role is Role.AGENT:
        problem = "Agent tokens cannot sign in: the console is for people. Use your own token."
    if principal is None or problem:
        return page(request, "sign_in.html", None, 401, next=target, problem=problem)
    session_id, _ = await runtime.sessions.open(principal)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=LIFETIME,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/sign-out")
async def sign_out(
    request: Request, runtime: RuntimeDep, signed: Annotated[Form, Depends(acting(*PEOPLE))]
) -> Response:
    await runtime.sessions.end(request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/ui/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


@router.get("/")
async def home(request: Request, session: SignedIn) -> Response:
    return page(request, "home.html", session)
