"""One admission path: the HTTP API, the Python client, MCP and SMTP give the same decision.

The same cases go through all four doors an agent has, as the same agent; each door's answer is
read as a status and reason codes and must equal the API's. Each door's copy of a case differs only
in its subject's tail, so no door's answer is another's replayed (the same body is idempotent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sendguard.client import Client
from tests.conftest import Api, Daemon, message
from tests.test_mcp import decided, over_http
from tests.test_submission_smtp import AGENT, _connect, _listener, _smtp_decision

RULES = '[ingress]\nrecipient_cooldown = "0s"\n[approvals]\nshared_inboxes = ["team@acme.example"]\n'
CASES = {
    "accepted": message("ann@customer.example"),
    "a role account": message("info@customer.example"),
    "a free-mail domain": message("someone@gmail.com"),
    "a domain that takes no mail": message("x@nullmx.example"),
    "a suppression": message("gone@customer.example"),
    "a leftover placeholder": message("bob@customer.example", subject="Hi {{first_name}}"),
    "a secret": message("cy@customer.example", text="card 4111 1111 1111 1111"),
    "a shared inbox": message("dee@customer.example", **{"from": "Team <team@acme.example>"}),
}
Decision = tuple[str, list[str]]


def _read(answer: dict[str, Any]) -> Decision:
    return answer["status"], [reason["code"] for reason in answer["reasons"]]


def _as(door: str, body: dict[str, str]) -> dict[str, str]:
    return body | {"subject": f"{body['subject']} ({door})"}


async def test_the_api_the_client_mcp_and_smtp_decide_the_same_cases_alike(
    make_daemon: Callable[..., Daemon], mint: Callable[..., str], client_for: Callable[..., Api]
) -> None:
    daemon, port = _listener(make_daemon, RULES)
    admin = client_for(daemon, "admin", "root")
    suppressed = admin.client.post("/v1/suppressions", json={"entries": ["gone@customer.example"]})
    assert suppressed.status_code == 200, suppressed.text
    token = mint("agent", AGENT)
    api = client_for(daemon, "agent", AGENT)
    daemon.listen()
    base = f"http://127.0.0.1:{daemon.env['SENDGUARD_API_PORT']}"

    answers: dict[str, dict[str, Decision]] = {case: {} for case in CASES}
    for case, body in CASES.items():
        answers[case]["api"] = _read(api.client.post("/v1/messages", json=_as("api", body)).json())
    with Client(base, token) as client:
        for case, body in CASES.items():
            answers[case]["client"] = _read(client.send(_as("client", body)).model_dump())
    async with over_http(daemon, token) as session:
        for case, body in CASES.items():
            asked = _as("mcp", body)
            tool_arguments = {"sender": asked.pop("from"), **asked}
            answers[case]["mcp"] = _read(decided(await session.call_tool("send_email", tool_arguments)))
    with _connect(daemon, port) as smtp:
        smtp.login(AGENT, token)
        for case, body in CASES.items():
            answers[case]["smtp"] = _smtp_decision(smtp, _as("smtp", body))

    for case, by_door in answers.items():
        assert len(set(map(repr, by_door.values()))) == 1, f"{case}: {by_door}"
    statuses = {case: by_door["api"][0] for case, by_door in answers.items()}
    assert statuses == {
        "accepted": "queued",
        "a role account": "rejected",
        "a free-mail domain": "rejected",
        "a domain that takes no mail": "rejected",
        "a suppression": "rejected",
        "a leftover placeholder": "rejected",
        "a secret": "rejected",
        "a shared inbox": "pending_approval",
    }, "the cases cover what they name"
