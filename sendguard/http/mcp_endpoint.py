"""`/mcp`: sendguard's MCP tools over streamable HTTP, in the daemon, for agent tokens.

Every request carries `Authorization: Bearer <agent token>`, checked as the API checks it, by
`mcp_route` before anything here runs; the tools then call the functions the HTTP routes call (`messages.py`),
as that agent, and answer what the routes answer. The SDK's transport runs stateless with JSON
answers: no MCP session outlives a request, so any daemon on the Redis can answer any call.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from sendguard.governance.tokens import Principal
from sendguard.http import messages
from sendguard.http.errors import error_answer
from sendguard.http.mcp_route import PRINCIPAL
from sendguard.http.mcp_tools import Backend, Json, Refused, build_server
from sendguard.intake.batches import BatchIn
from sendguard.model import Status
from sendguard.parts import Runtime
from sendguard.submission import MessageIn


class InProcess:
    """The tools' backend in the daemon: what the HTTP routes call, as the agent `who`."""

    def __init__(self, runtime: Runtime, who: Principal) -> None:
        self._runtime = runtime
        self._who = who

    # A body is read as its route reads it (inside the step, so its ValidationError is the route's 422).

    async def send(self, body: Json) -> Json:
        return await self._json(
            lambda: messages.submit(self._runtime, self._who, MessageIn.model_validate(body))
        )

    async def send_batch(self, body: Json) -> Json:
        return await self._json(
            lambda: messages.submit_batch(self._runtime, self._who, BatchIn.model_validate(body))
        )

    async def get_message(self, message_id: str) -> Json:
        return await self._json(lambda: messages.read(self._runtime, self._who, message_id))

    async def cancel(self, message_id: str) -> Json:
        return await self._json(lambda: messages.cancel(self._runtime, self._who, message_id))

    async def list_messages(self, status: str | None, limit: int) -> Json:
        wanted = Status(status) if status else None
        return await self._json(lambda: messages.list_own(self._runtime, self._who, wanted, limit))

    async def check_recipients(self, addresses: list[str]) -> Json:
        body = {"to": addresses}
        return await self._json(
            lambda: messages.check_recipients(
                self._runtime, self._who, messages.RecipientsIn.model_validate(body)
            )
        )

    async def sending_status(self) -> Json:
        return await self._json(lambda: messages.sending_status(self._runtime, self._who))

    @staticmethod
    async def _json(step: Callable[[], Awaitable[BaseModel]]) -> Json:
        """The step's answer as the route's JSON, or Refused with what the route answers its error with."""
        try:
            answer = await step()
        except Exception as exc:
            answered = await error_answer(exc)
            if answered is None:
                raise
            raise Refused(*answered) from exc
        return answer.model_dump(mode="json", by_alias=True)


class Endpoint:
    """The ASGI app at /mcp: the bearer check, then the SDK's streamable HTTP transport."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        server = build_server(self._backend)
        server.streamable_http_app(
            stateless_http=True,
            json_response=True,
            # Every request must carry an agent's bearer token, which a page that rebinds DNS to
            # this host does not have; the daemon's own host settings decide who reaches it.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self._manager: StreamableHTTPSessionManager = server.session_manager
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None  # kept, so the task is not collected while it runs

    def _backend(self, ctx: Context[Any, Any]) -> Backend:
        request = ctx.request_context.request
        assert isinstance(request, Request), "the /mcp endpoint serves HTTP requests only"
        return InProcess(self._runtime, request.scope[PRINCIPAL])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request whose bearer token `mcp_route` has checked (the caller is at PRINCIPAL)."""
        await self._running()
        await self._manager.handle_request(scope, receive, send)

    async def _running(self) -> None:
        """Start the SDK's manager with the first call, on the daemon's loop (the app has no
        lifespan: uvicorn runs it with `lifespan="off"`); it runs until the loop ends."""
        if self._ready is None or self._task is None:
            self._ready = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(self._ready), name="mcp-endpoint")
        if self._ready.is_set():
            return
        # Wait for it to start or to fail: a manager that cannot start answers each call with an
        # error, instead of leaving every call waiting for ever.
        started = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({started, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            started.cancel()
            raise RuntimeError("the MCP session manager did not start") from self._task.exception()

    async def _run(self, ready: asyncio.Event) -> None:
        async with self._manager.run():
            ready.set()
            await asyncio.Future()  # until cancelled
