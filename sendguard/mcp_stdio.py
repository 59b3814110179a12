"""`sendguard mcp`: the MCP tools over stdio, for an agent host that starts its servers locally.

The tools are the daemon's own (`http/mcp_tools.py`); here their backend is the typed API client,
so every call goes to the running daemon's API as the agent whose token this process holds (from
`SENDGUARD_TOKEN_FILE` or `SENDGUARD_TOKEN`, never argv) and is decided, counted and recorded
there. Nothing is written to stdout but the protocol; logs go to stderr.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from sendguard.client import ApiError, AsyncClient
from sendguard.http.mcp_tools import Backend, Json, Refused, build_server


class OverApi:
    """The tools' backend in `sendguard mcp`: one route call each, through the API client."""

    def __init__(self, api: AsyncClient) -> None:
        self._api = api

    async def send(self, body: Json) -> Json:
        return await _json(lambda: self._api.send(body))

    async def send_batch(self, body: Json) -> Json:
        return await _json(lambda: self._api.send_batch(body))

    async def get_message(self, message_id: str) -> Json:
        return await _json(lambda: self._api.get_message(message_id))

    async def cancel(self, message_id: str) -> Json:
        return await _json(lambda: self._api.cancel(message_id))

    async def list_messages(self, status: str | None, limit: int) -> Json:
        return await _json(lambda: self._api.list_messages(status, limit))

    async def check_recipients(self, addresses: list[str]) -> Json:
        return await _json(lambda: self._api.check_recipients(addresses))

    async def sending_status(self) -> Json:
        return await _json(lambda: self._api.sending_status())


async def _json(call: Callable[[], Awaitable[BaseModel]]) -> Json:
    """The answer's JSON, as the API gave it; an error answer is Refused with the API's own body."""
    try:
        answer = await call()
    except ApiError as refused:
        raise Refused(refused.status, refused.body) from refused
    return answer.model_dump(mode="json", by_alias=True)


async def serve(base_url: str, token: str) -> None:
    """Serve the tools on stdin and stdout until the host closes them. The token is tried first,
    so a host that starts this with a wrong token or no daemon sees why at once (ApiError,
    Unreachable), not at its first tool call."""
    async with AsyncClient(base_url, token) as api:
        await api.sending_status()
        backend: Backend = OverApi(api)
        await build_server(lambda ctx: backend).run_stdio_async()
