"""The console's routes, and mounting what else it needs on the API's app."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

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

ROUTES: tuple[BaseRoute, ...] = (
    *signin.router.routes,
    *approvals.router.routes,
    *agents.router.routes,
    *safe_mode.router.routes,
    *messages.router.routes,
    *audit.router.routes,
    *suppressions.router.routes,
    *break_glass.router.routes,
)


def mount(app: FastAPI) -> None:
    """Add the console's stylesheet and error pages to an app that serves its `ROUTES`."""
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_exception_handler(PageError, page_error)
    app.add_exception_handler(SignInNeeded, sign_in_needed)
