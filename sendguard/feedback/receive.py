"""Raw inbound mail (bounces, feedback reports, replies), from HTTP or the optional SMTP listener.

Parsing runs in a worker thread under a time limit, so one pathological message cannot stall
the daemon. Mail that cannot be understood is never dropped: it is counted and kept in Redis
for a person to inspect (the newest `KEEP_UNPARSED`, each cut at `KEEP_BYTES`, so a flood of junk
mail cannot fill Redis).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiosmtpd.smtp import SMTP, Envelope, Session

from sendguard.errors import StoreError
from sendguard.feedback.apply import Applied, Feedback, Reporter
from sendguard.feedback.parse import Inbound, InboundKind, UnparsableMail, parse_inbound
from sendguard.metrics import Metrics
from sendguard.model import now_ms
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated

log = logging.getLogger("sendguard.feedback.receive")
KEEP_UNPARSED = 500
KEEP_BYTES = 256 * 1024


@dataclass(frozen=True)
class Received:
    """Mail that was understood, and what each of its events did."""

    inbound: Inbound
    applied: list[Applied]


@dataclass(frozen=True)
class Unparsed:
    """Mail that was not understood: why, and the id it is kept under."""

    reason: str
    kept_as: str


class Inbox:
    """Parses raw mail into events and applies them; keeps what it cannot parse."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        feedback: Feedback,
        bounce_domain: str | None,
        timeout: float,
        metrics: Metrics,
    ) -> None:
        self._redis = client
        self._metrics = metrics
        metrics.start_at_zero(metrics.inbound, [*InboundKind, "unparsed"])
        self._keys = keys
        self._feedback = feedback
        self._bounce_domain = bounce_domain
        self._timeout = timeout

    async def receive(
        self, raw: bytes, envelope_recipients: list[str], reporter: Reporter
    ) -> Received | Unparsed:
        """Parse and apply; mail an agent hands in is its word, held to what its events may move."""
        try:
            async with asyncio.timeout(self._timeout):
                inbound = await asyncio.to_thread(
                    parse_inbound,
                    raw,
                    envelope_recipients=envelope_recipients,
                    bounce_domain=self._bounce_domain,
                )
        except UnparsableMail as exc:
            return await self._keep(raw, str(exc), reporter.source)
        except TimeoutError:
            return await self._keep(raw, f"parsing took longer than {self._timeout:g}s", reporter.source)
        self._metrics.inbound.labels(inbound.kind.value).inc()
        return Received(inbound, await self._feedback.apply(inbound.events, reporter))

    async def unparsed(self) -> list[dict[str, Any]]:
        """What was kept, newest first, without the raw bytes."""
        return [{k: v for k, v in entry.items() if k != "raw"} for entry in await self._kept()]

    async def unparsed_raw(self, kept_as: str) -> bytes | None:
        """The raw bytes kept under `kept_as` (cut at KEEP_BYTES), or None."""
        found = next((entry for entry in await self._kept() if entry["id"] == kept_as), None)
        return base64.b64decode(found["raw"]) if found else None

    async def _kept(self) -> list[dict[str, Any]]:
        async with translated():
            entries = await self._redis.lrange(self._keys.unparsed, 0, -1)
        return [json.loads(entry) for entry in entries]

    async def _keep(self, raw: bytes, reason: str, source: str) -> Unparsed:
        self._metrics.inbound.labels("unparsed").inc()
        kept_as = secrets.token_hex(8)
        entry = {
            "id": kept_as,
            "at": now_ms(),
            "source": source,
            "reason": reason,
            "size": len(raw),
            "truncated": len(raw) > KEEP_BYTES,
            "raw": base64.b64encode(raw[:KEEP_BYTES]).decode("ascii"),
        }
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self._keys.unparsed, json.dumps(entry))
            pipe.ltrim(self._keys.unparsed, 0, KEEP_UNPARSED - 1)
            await pipe.execute()
        log.warning("inbound mail not understood (%s); kept as %s", reason, kept_as)
        return Unparsed(reason, kept_as)


class InboundSmtpHandler:
    """aiosmtpd handler for the bounce and feedback addresses: every message is taken in.

    Accepted mail is always acknowledged with 250, parsed or kept, so a sending MTA never
    retries (or bounces back to us) what sendguard already holds.
    """

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            result = await self._inbox.receive(raw, list(envelope.rcpt_tos), Reporter("smtp"))
        except StoreError as exc:
            log.warning("inbound mail could not be recorded: %s", exc)
            return "451 4.3.0 could not record the message; try again later"
        if isinstance(result, Unparsed):
            return f"250 2.0.0 kept for inspection as {result.kept_as}"
        return f"250 2.0.0 {result.inbound.summary}"[:500]


async def start_listener(inbox: Inbox, host: str, port: int, max_bytes: int) -> asyncio.Server:
    """The inbound SMTP listener on the daemon's own event loop."""
    handler = InboundSmtpHandler(inbox)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(handler, data_size_limit=max_bytes, enable_SMTPUTF8=True, hostname="sendguard"),
        host=host,
        port=port,
    )
