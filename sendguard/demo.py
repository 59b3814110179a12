"""`sendguard demo`: the daemon on embedded defaults and a first message through it.

For a newcomer on any machine, with or without DNS: it runs `sendguard run` with the demo rules
shipped in the package (one agent, `demo-bot`; no MX look-up and no cooldown, so it works offline
and every time), always into the sandbox outbox, whatever `SENDGUARD_SMTP_URL` says. Once the API
listens it mints a token for `demo-bot`, submits one message over HTTP as any agent does, waits
until it lands in the outbox, and prints each step, then keeps running for the next `curl`.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx

from sendguard.config import Settings
from sendguard.governance.roles import Role
from sendguard.parts import Runtime
from sendguard.rules import packaged_rules_dir
from sendguard.state.embedded_redis import DataDir

AGENT = "demo-bot"
FIRST = {
    "from": "Demo <demo@sendguard.example>",
    "to": "first-reader@customer.example",
    "subject": "My first message through sendguard",
    "text": "Hello! This message went through every check sendguard runs, then into the outbox.",
    "agent_version": "demo 1",
}


def demo_settings(settings: Settings) -> Settings:
    """The user's settings with the demo rules, and never a relay: nothing leaves the machine."""
    return settings.model_copy(update={"rules": packaged_rules_dir() / "demo.toml", "smtp_url": None})


async def first_message(runtime: Runtime, base: str, command: str) -> None:
    """Send the first message through the running API and tell the person what happened."""
    _, token = await runtime.tokens.create(Role.AGENT, AGENT, actor="cli:demo")
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as api:
        _say(f"1. an agent token for {AGENT} (printed once; only its hash is kept):\n   TOKEN={token}")
        answer = await api.post("/v1/messages", json=FIRST)
        _say(f"2. POST {base}/v1/messages as {AGENT} -> {answer.status_code} {answer.text}")
        if answer.status_code != 201:
            return
        decision = answer.json()
        status = decision["status"]
        for _ in range(100):
            if status not in ("queued", "sending"):
                break
            await asyncio.sleep(0.1)
            status = (await api.get(f"/v1/messages/{decision['id']}")).json()["status"]
    outbox = DataDir(runtime.settings.data_dir).outbox / f"{decision['id']}.eml"
    if status == "sent":
        _say(f"3. checked, throttled, rendered and {status}: {outbox}")
    else:
        _say(f"3. the message is {status}; GET {base}/v1/messages/{decision['id']} says why")
    _say(
        "Try one yourself (the daemon keeps running; Ctrl-C stops it):\n"
        f'   curl -s {base}/v1/messages -H "Authorization: Bearer $TOKEN" '
        "-H 'Content-Type: application/json' \\\n"
        f"     -d '{json.dumps(FIRST | {'to': 'second-reader@customer.example'})}'\n"
        f"   the console for people: {base}/ui/  (an admin token: {command} token create --admin <you>)"
    )


def _say(line: str) -> None:
    """To stderr, beside the daemon's own start-up lines."""
    print(line, file=sys.stderr, flush=True)
