"""The /mcp route, whose endpoint is built on its first request.

The MCP SDK and what it brings cost a daemon about 23 MiB of memory once imported; a deployment
whose agents send over HTTP or SMTP never pays it. The endpoint itself, the bearer check included,
is `mcp_endpoint.Endpoint`.
"""

from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from sendguard.parts import Runtime

PATH = "/mcp"


class _BuiltOnFirstCall:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._endpoint: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._endpoint is None:
            from sendguard.http.mcp_endpoint import Endpoint  # the SDK, imported when first asked for

            self._endpoint = Endpoint(self._runtime)
        await self._endpoint(scope, receive, send)


def mount(app: FastAPI, runtime: Runtime) -> None:
    """Serve the MCP tools at /mcp (not in the OpenAPI document: MCP describes itself)."""
    # Starlette serves an endpoint that is not a function as an ASGI app; a Mount would answer
    # /mcp with a redirect to /mcp/.
    endpoint: Any = _BuiltOnFirstCall(runtime)
    app.add_route(PATH, endpoint, methods=["GET", "POST", "DELETE"], include_in_schema=False)
