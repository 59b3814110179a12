"""The MCP tools, driven by the SDK's own client against a real daemon: over streamable HTTP at
/mcp, and over stdio through `sendguard mcp` talking to the daemon's API.

A policy decision is a normal tool result (`isError` false) with the API's `id`, `status` and
`reasons`; a mass send says who must approve it and until when; a wrong token gets nowhere.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult

from tests.conftest import Api, Daemon, wait_until
from tests.peers import SmtpSink

ClientFor = Callable[..., Api]
RULES = """
[ingress]
mx_check = "off"

[approvals]
mass_send_threshold = 3

[[throttle]]
scope = "agent"
limit = 100
per = "1h"

[[throttle]]
scope = "recipient_domain"
limit = 5
per = "1h"
"""
SENDING = {"send_email", "send_batch"}
READING = {"get_message", "list_my_messages", "check_recipients", "sending_status"}
EMAIL = {
    "sender": "Alice <alice@acme.example>",
    "subject": "Quick question",
    "text": "Hello from the MCP tests",
    "agent_version": "test-1",
}


def _url(daemon: Daemon) -> str:
    daemon.listen()
    return f"http://127.0.0.1:{daemon.env['SENDGUARD_API_PORT']}/mcp"


@contextlib.asynccontextmanager
async def over_http(daemon: Daemon, token: str) -> AsyncIterator[ClientSession]:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with (
        http,
        streamable_http_client(_url(daemon), http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@contextlib.asynccontextmanager
async def over_stdio(daemon: Daemon, token: str) -> AsyncIterator[ClientSession]:
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "sendguard.cli", "mcp"],
        env=daemon.cli_env(token),
        cwd=daemon.env["SENDGUARD_DATA_DIR"],
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def decided(result: CallToolResult) -> dict[str, Any]:
    """A policy decision: a normal result, its structured content the API's answer."""
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def test_tools_over_http_decide_as_the_api_and_deliver(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, mint: Callable[..., str], smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES)
    api = client_for(daemon, "agent", "sdr-bot")
    async with over_http(daemon, mint("agent", "sdr-bot")) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(tools) == SENDING | READING | {"cancel_message"}
        for name in SENDING:
            hints = tools[name].annotations
            assert hints and hints.destructive_hint and hints.open_world_hint and not hints.read_only_hint
        for name in READING:
            hints = tools[name].annotations
            assert hints and hints.read_only_hint, name
        assert "approve" in (tools["send_email"].description or "")

        checked = decided(
            await session.call_tool(
                "check_recipients", {"addresses": ["bob@customer.example", "info@x.example"]}
            )
        )
        verdicts = {row["to"]: row for row in checked["recipients"]}
        assert verdicts["bob@customer.example"]["verdict"] == "would_queue"
        assert [r["code"] for r in verdicts["info@x.example"]["reasons"]] == ["role_account"]
        listed = decided(await session.call_tool("list_my_messages", {}))
        assert listed["messages"] == [], "a check queues nothing"

        sent = decided(await session.call_tool("send_email", {**EMAIL, "to": "bob@customer.example"}))
        assert sent["status"] == "queued" and sent["reasons"] == []
        [received] = smtp.wait_for(1)
        assert received.rcpt_tos == ("bob@customer.example",)
        api.wait_status(sent["id"], "sent")
        shown = decided(await session.call_tool("get_message", {"message_id": sent["id"]}))
        assert shown == api.status(sent["id"]), "the tool answers what the API answers"

        rejected = decided(await session.call_tool("send_email", {**EMAIL, "to": "info@customer.example"}))
        assert rejected["status"] == "rejected"
        assert [r["code"] for r in rejected["reasons"]] == ["role_account"]
        # The same case through the HTTP API: the same decision.
        same = api.send("info@other.example", subject="Another")
        assert same["status"] == "rejected" and [r["code"] for r in same["reasons"]] == ["role_account"]

        listed = decided(await session.call_tool("list_my_messages", {"status": "rejected"}))
        assert [m["id"] for m in listed["messages"]] == [same["id"], rejected["id"]]

        zoned = await session.call_tool(
            "send_email", {**EMAIL, "to": "zed@customer.example", "recipient_timezone": "Mars/Base"}
        )
        assert zoned.is_error and isinstance(zoned.structured_content, dict)
        assert zoned.structured_content["http_status"] == 422 and "Mars/Base" in str(zoned.structured_content)

        forbidden = await session.call_tool(
            "send_email", {**EMAIL, "sender": "mallory@evil.example", "to": "bob@customer.example"}
        )
        assert forbidden.is_error, "a send the agent may not make at all is an error, with its reason code"
        assert isinstance(forbidden.structured_content, dict)
        assert forbidden.structured_content["http_status"] == 403
        assert [r["code"] for r in forbidden.structured_content["reasons"]] == ["inbox_not_allowed"]


async def test_a_mass_send_waits_and_says_who_must_approve(
    make_daemon: Callable[..., Daemon], mint: Callable[..., str]
) -> None:
    daemon = make_daemon(RULES)
    recipients = [{"to": f"p{i}@customer.example", "vars": {}} for i in range(3)]
    async with over_http(daemon, mint("agent", "sdr-bot")) as session:
        batch = decided(await session.call_tool("send_batch", {**EMAIL, "recipients": recipients}))
        assert {row["status"] for row in batch["accepted"]} == {"pending_approval"}
        approval = batch["approval"]
        assert approval["tier"] == 2 and approval["approvals_needed"] == 2
        assert "two different groups" in approval["who_approves"] and approval["expires"]
        status = decided(await session.call_tool("sending_status", {}))
        assert [request["id"] for request in status["approvals"]] == [approval["id"]]
        # Only the windows every message of the agent falls into, its mass-send line last; a
        # recipient domain's is per message.
        window, line = status["throttles"]
        assert window == {
            "scope": "agent:sdr-bot",
            "limit": 100,
            "per_seconds": 3600.0,
            "used": 0,
            "remaining": 100,
        }
        assert (line["scope"], line["limit"], line["remaining"]) == ("mass_send:sdr-bot", 2, 2)
        assert status["safe_mode"] == []


async def test_the_mcp_endpoint_takes_only_agent_tokens(
    make_daemon: Callable[..., Daemon], mint: Callable[..., str]
) -> None:
    daemon = make_daemon(RULES)
    url = _url(daemon)
    async with httpx.AsyncClient() as http:
        nobody = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert nobody.status_code == 401 and nobody.headers["www-authenticate"] == "Bearer"
        assert nobody.json()["error"]["message"] == "sendguard: missing bearer token (401)"
        forged = await http.post(url, json={}, headers={"Authorization": "Bearer sg_abc_forged"})
        assert forged.status_code == 401
        operator = mint("operator", "oncall")
        wrong_role = await http.post(url, json={}, headers={"Authorization": f"Bearer {operator}"})
        assert wrong_role.status_code == 403
        assert wrong_role.json()["error"]["message"] == "sendguard: an operator token may not do this (403)"
    # The SDK's own client fails at once, with sendguard's words.
    with pytest.raises(ExceptionGroup) as refused:
        async with over_http(daemon, "sg_abc_forged"):
            pass
    [[failed]] = [group.exceptions for group in refused.value.exceptions if isinstance(group, ExceptionGroup)]
    assert isinstance(failed, MCPError) and str(failed) == "sendguard: invalid or revoked token (401)"


async def test_the_stdio_server_sends_through_the_running_daemon(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, mint: Callable[..., str], smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES)
    api = client_for(daemon, "agent", "sdr-bot")
    async with over_stdio(daemon, api.token) as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert tools == SENDING | READING | {"cancel_message"}
        sent = decided(await session.call_tool("send_email", {**EMAIL, "to": "carol@customer.example"}))
        assert sent["status"] == "queued"
        rejected = decided(await session.call_tool("send_email", {**EMAIL, "to": "sales@customer.example"}))
        assert rejected["status"] == "rejected" and rejected["reasons"][0]["code"] == "role_account"
        smtp.wait_for(1)
        wait_until(lambda: api.status(sent["id"])["status"] == "sent", what="the stdio send delivered")
        for message_id in (sent["id"], rejected["id"]):
            shown = decided(await session.call_tool("get_message", {"message_id": message_id}))
            assert shown == api.status(message_id), "the tool answers what the API answers"
        same = decided(await session.call_tool("send_email", {**EMAIL, "to": "carol@customer.example"}))
        assert same == api.send("carol@customer.example", subject=EMAIL["subject"], text=EMAIL["text"])

    wrong = daemon.cli_result("mcp", token="sg_abc_forged")
    assert wrong.returncode == 1 and "refused the token" in wrong.stderr, wrong.stderr
    assert "sg_abc_forged" not in wrong.stderr


def test_a_daemon_loads_the_mcp_sdk_only_when_mcp_is_first_called() -> None:
    """The SDK costs a daemon about 23 MiB; building the app must not import it."""
    probe = (
        "import sys, sendguard.http.app; print(sorted(m for m in sys.modules if m.split('.')[0] == 'mcp'))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr
