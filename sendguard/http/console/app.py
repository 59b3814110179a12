"""Mounting the console on the API's app."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from sendguard.http.console import (
    agents,
    approvals,
    audit,
    break_glass,
    messages,
    safe_mode,
    signin,
    suppressions,
)
from sendguard.http.console.pages import STATIC, PageError, SignInNeeded, page_error, sign_in_needed


def mount(app: FastAPI) -> None:
    """Add the console's routes, its stylesheet and its error pages to the API's app."""
    console = APIRouter(prefix="/ui", include_in_schema=False)
    console.include_router(signin.router)
    console.include_router(approvals.router)
    console.include_router(agents.router)
    console.include_router(safe_mode.router)
    console.include_router(messages.router)
    console.include_router(audit.router)
    console.include_router(suppressions.router)
    console.include_router(break_glass.router)
    app.include_router(console)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_exception_handler(PageError, page_error)
    app.add_exception_handler(SignInNeeded, sign_in_needed)
