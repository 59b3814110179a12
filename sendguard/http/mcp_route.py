"""The /mcp route: the bearer check, then the endpoint, which is built on the first call it lets in.

The MCP SDK and what it brings cost a daemon about 23 MiB of memory once imported; a deployment
whose agents send over HTTP or SMTP never pays it, and a stranger's request is refused before it.
The endpoint itself is `mcp_endpoint.Endpoint`.
"""

from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from sendguard.governance.roles import Role
from sendguard.http.access import authenticate, bearer_token
from sendguard.parts import Runtime

PATH = "/mcp"
PRINCIPAL = "sendguard.principal"  # where the route leaves the caller in the request's scope
REFUSED = -32001  # JSON-RPC error code (implementation-defined range): the bearer token was refused


class _CheckedThenBuilt:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._endpoint: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            scope[PRINCIPAL] = await authenticate(self._runtime, bearer_token(Request(scope)), Role.AGENT)
        except HTTPException as refused:
            # With the HTTP status, a JSON-RPC error an MCP client shows as it is (the SDK's does).
            error = {"code": REFUSED, "message": f"sendguard: {refused.detail} ({refused.status_code})"}
            answer = JSONResponse(
                {"jsonrpc": "2.0", "id": None, "error": error}, refused.status_code, headers=refused.headers
            )
            await answer(scope, receive, send)
            return
        if self._endpoint is None:
            from sendguard.http.mcp_endpoint import Endpoint  # the SDK, imported when first let in

            self._endpoint = Endpoint(self._runtime)
        await self._endpoint(scope, receive, send)


def mount(app: FastAPI, runtime: Runtime) -> None:
    """Serve the MCP tools at /mcp (not in the OpenAPI document: MCP describes itself)."""
    # Starlette serves an endpoint that is not a function as an ASGI app; a Mount would answer
    # /mcp with a redirect to /mcp/.
    endpoint: Any = _CheckedThenBuilt(runtime)
    app.add_route(PATH, endpoint, methods=["GET", "POST", "DELETE"], include_in_schema=False)
