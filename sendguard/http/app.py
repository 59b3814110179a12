"""The HTTP API under /v1, plus /healthz, /readyz, /metrics and the OpenAPI document.

Malformed requests get a 4xx that names the field; policy decisions are data: a rejected
message still gets an id, a status and reason codes (201).
"""

import hmac
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, HTTPException, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import BaseRoute

import sendguard
from sendguard.http import feedback, governance, mcp_route, messages, safe_mode
from sendguard.http.access import Admin, RuntimeDep
from sendguard.http.bodies import BodyLimit, StrictJson
from sendguard.http.console import app as console
from sendguard.http.docs import TAGS, Tag, serve_docs
from sendguard.http.errors import HANDLERS, SIGNED_IN, error_responses
from sendguard.parts import Runtime


class SuppressionsIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"entries": ["dana@customer.example", "competitor.example"]}]}
    )

    entries: list[Annotated[str, Field(min_length=1, max_length=320)]] = Field(
        min_length=1,
        max_length=100_000,
        description="addresses (with @) and whole domains (without)",
    )


class SuppressionsOut(BaseModel):
    addresses: list[str] = Field(description="mailboxes: lower case, without a +tag")
    domains: list[str]


class SuppressionsAdded(SuppressionsOut):
    new: int = Field(description="entries that were not suppressed before")
    cancelled: int = Field(description="waiting messages the entries cover, cancelled at once")


router = APIRouter()  # this module's own routes: suppressions, health and metrics


@router.get(
    "/v1/suppressions",
    response_model=SuppressionsOut,
    tags=[Tag.SUPPRESSIONS],
    summary="List suppressions",
    responses=error_responses(*SIGNED_IN),
)
async def list_suppressions(who: Admin, runtime: RuntimeDep) -> SuppressionsOut:
    """Every suppressed mailbox and domain: nothing is ever sent to them."""
    addresses, domains = await runtime.suppressions.list()
    return SuppressionsOut(addresses=addresses, domains=domains)


@router.post(
    "/v1/suppressions",
    response_model=SuppressionsAdded,
    tags=[Tag.SUPPRESSIONS],
    summary="Suppress addresses and domains",
    responses=error_responses(*SIGNED_IN, 413, 422),
)
async def add_suppressions(body: SuppressionsIn, who: Admin, runtime: RuntimeDep) -> SuppressionsAdded:
    """Up to 100,000 entries at once; waiting messages to them are cancelled at once."""
    added = await runtime.suppressions.suppress(body.entries, who.actor)
    return SuppressionsAdded(
        addresses=added.addresses, domains=added.domains, new=added.new, cancelled=added.cancelled
    )


@router.delete(
    "/v1/suppressions/{entry}",
    status_code=204,
    tags=[Tag.SUPPRESSIONS],
    summary="Lift a suppression",
    responses=error_responses(*SIGNED_IN, (404, "the entry is not suppressed"), 422),
)
async def remove_suppression(entry: str, who: Admin, runtime: RuntimeDep) -> Response:
    """Any spelling of a suppressed mailbox lifts it (case, a +tag)."""
    if not await runtime.suppressions.lift(entry, who.actor):
        raise HTTPException(404, f"{entry} is not suppressed")
    return Response(status_code=204)


@router.get("/healthz", tags=[Tag.HEALTH], summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is alive; it asks nothing of Redis."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=[Tag.HEALTH],
    summary="Readiness",
    responses={
        503: {
            "description": "Redis does not answer, or it lost the marker this daemon started on (wiped)",
            "content": {"application/json": {"example": {"status": "not_ready", "redis": "ConnectionError"}}},
        }
    },
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Redis answers, it is still the store this daemon started on, and the rules are loaded: the
    answer names the rules' version. A wiped or replaced store is not ready until a person acts."""
    marker = runtime.store.marker
    try:
        await marker.check(move=False)  # one round trip, and a read: an unanswered Redis raises here
    except Exception as exc:  # any failure to reach Redis means not ready
        return JSONResponse({"status": "not_ready", "redis": type(exc).__name__}, status_code=503)
    if marker.lost:
        return JSONResponse({"status": "not_ready", "store": "wiped", "detail": marker.lost}, status_code=503)
    return JSONResponse({"status": "ready", "rules_version": runtime.rules.version})


@router.get("/metrics", include_in_schema=False)
async def prometheus(runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> Response:
    expected = runtime.settings.metrics_token
    if expected is not None and not hmac.compare_digest(
        (authorization or "").encode(), f"Bearer {expected.get_secret_value()}".encode()
    ):
        raise HTTPException(401, "missing or wrong metrics token", headers={"WWW-Authenticate": "Bearer"})
    return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


# Every route but an app's own few, built once when the modules are imported: each app serves these
# same route objects (a route keeps nothing of an app's; it finds the daemon's parts on
# `request.app.state`). FastAPI's `include_router` would build every route again for each app.
ROUTES: tuple[BaseRoute, ...] = (
    *messages.router.routes,
    *feedback.router.routes,
    *safe_mode.router.routes,
    *governance.router.routes,
    *console.ROUTES,
    *router.routes,
)


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="sendguard",
        version=sendguard.__version__,
        description="Safety gateway for outbound email sent by AI agents.",
        exception_handlers=HANDLERS,
        openapi_tags=TAGS,
        docs_url=None,
        redoc_url=None,
        routes=list(ROUTES),
    )
    app.state.runtime = runtime
    serve_docs(app)
    mcp_route.mount(app, runtime)
    console.mount(app)
    settings = runtime.settings
    app.add_middleware(StrictJson)  # inside BodyLimit: the size is checked first
    app.add_middleware(
        BodyLimit,
        limit=settings.max_request_bytes,
        paths={"/v1/inbound": settings.inbound_max_bytes, "/v1/batches": settings.batch_max_bytes},
    )
    return app
