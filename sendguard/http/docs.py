"""The API's own documentation: the tags that group its routes, and Swagger UI served from local files.

FastAPI's `/docs` loads Swagger UI from a CDN, a blank page on a host without internet. The files
here come from the `fastapi-offline` package (Swagger UI 5, Apache-2.0; its `swagger-ui-bundle`
namesake ships Swagger UI 4, which cannot read the OpenAPI 3.1 FastAPI writes), so no request from
the page leaves the host: not its script, style or favicon, nor Swagger UI's validator badge.
"""

from enum import StrEnum
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS = "/docs"
ASSETS = f"{DOCS}/assets"


class Tag(StrEnum):
    """The concerns the OpenAPI document groups routes by, in the order it shows them."""

    MESSAGES = "messages"
    BATCHES = "batches"
    FEEDBACK = "feedback"
    SAFE_MODE = "safe mode"
    APPROVALS = "approvals"
    CONTROL = "control"
    AGENTS = "agents"
    AUDIT = "audit"
    SUPPRESSIONS = "suppressions"
    HEALTH = "health"


_ABOUT = {
    Tag.MESSAGES: "Submit one message, read its status and history, cancel it before it is sent.",
    Tag.BATCHES: "One message to many recipients, each decided on its own.",
    Tag.FEEDBACK: "Signals in: bounces, complaints, replies, unsubscribes, and raw inbound mail.",
    Tag.SAFE_MODE: "Scopes that stop sending when the signals go bad, by hand, or by an alert.",
    Tag.APPROVALS: "Requests that wait for a person, and their decisions.",
    Tag.CONTROL: "Recall what has not gone out; reload the rules.",
    Tag.AGENTS: "The agent register in force, and what each agent did in the last 24 hours.",
    Tag.AUDIT: "The chained audit trail.",
    Tag.SUPPRESSIONS: "Addresses and domains that are never sent to.",
    Tag.HEALTH: "Liveness and readiness, without a token.",
}
TAGS = [{"name": tag.value, "description": _ABOUT[tag]} for tag in Tag]


def serve_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from local files; build `app` with `docs_url=None` so FastAPI's is not there."""
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")
    title = f"{app.title} API"

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # behind a proxy that strips a prefix
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=title,
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # its badge is an image from swagger.io
        )
