"""Raw inbound mail (bounces, feedback reports, replies), from HTTP or the optional SMTP listener.

Parsing runs in a worker thread under a time limit, so one pathological message cannot stall
the daemon; `Inbox.take` is everything after it, so parsing can move elsewhere and hand over
only its outcome. Parsing holds no secret and decides nothing: `take` checks what the mail
refers to (Feedback.apply_mail). Mail is never dropped: it is kept in Redis for a person to
inspect, and counted, when it cannot be understood (`unparsed`) or does not prove it is about a
message sendguard sent (`unreferenced`: forged, or a bounce address or Message-ID that does not
check out). Only the newest `KEEP_UNPARSED` are kept, each cut at `KEEP_BYTES`, so a flood of
junk mail cannot fill Redis.
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
from sendguard.feedback.apply import Applied, Feedback, Reporter, Unreferenced
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
    """Mail kept for a person instead of applied: why, the id it is kept under, and `kind`:
    `unparsed` (not understood) or `unreferenced` (understood, but about no message of ours)."""

    reason: str
    kept_as: str
    kind: str = "unparsed"


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
        metrics.start_at_zero(metrics.inbound, [*InboundKind, "unparsed", "unreferenced"])
        self._keys = keys
        self._feedback = feedback
        self._bounce_domain = bounce_domain
        self._timeout = timeout

    async def receive(
        self, raw: bytes, envelope_recipients: list[str], reporter: Reporter
    ) -> Received | Unparsed:
        """Parse, then `take`."""
        parsed: Inbound | UnparsableMail
        try:
            async with asyncio.timeout(self._timeout):
                parsed = await asyncio.to_thread(
                    parse_inbound,
                    raw,
                    envelope_recipients=envelope_recipients,
                    bounce_domain=self._bounce_domain,
                )
        except UnparsableMail as exc:
            parsed = exc
        except TimeoutError:
            parsed = UnparsableMail(f"parsing took longer than {self._timeout:g}s")
        return await self.take(parsed, raw, envelope_recipients, reporter)

    async def take(
        self,
        parsed: Inbound | UnparsableMail,
        raw: bytes,
        envelope_recipients: list[str],
        reporter: Reporter,
    ) -> Received | Unparsed:
        """Apply what parsing found, if the mail proves what it is about; else keep `raw`.

        Mail an agent hands in is its word, held to what its events may move (UnknownMessage,
        NotSent). `envelope_recipients` are kept with the mail, for the person who reads it.
        """
        if isinstance(parsed, UnparsableMail):
            return await self._keep(raw, str(parsed), reporter.source, envelope_recipients)
        try:
            applied = await self._feedback.apply_mail(parsed, reporter)
        except Unreferenced as exc:
            return await self._keep(
                raw, f"{parsed.summary}: {exc}", reporter.source, envelope_recipients, "unreferenced"
            )
        self._metrics.inbound.labels(parsed.kind.value).inc()
        return Received(parsed, applied)

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

    async def _keep(
        self, raw: bytes, reason: str, source: str, envelope_recipients: list[str], kind: str = "unparsed"
    ) -> Unparsed:
        """Keep `raw` for a person, counted under `kind` (unparsed or unreferenced)."""
        self._metrics.inbound.labels(kind).inc()
        kept_as = secrets.token_hex(8)
        entry = {
            "id": kept_as,
            "at": now_ms(),
            "source": source,
            "kind": kind,
            "reason": reason,
            "envelope_recipients": envelope_recipients,
            "size": len(raw),
            "truncated": len(raw) > KEEP_BYTES,
            "raw": base64.b64encode(raw[:KEEP_BYTES]).decode("ascii"),
        }
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self._keys.unparsed, json.dumps(entry))
            pipe.ltrim(self._keys.unparsed, 0, KEEP_UNPARSED - 1)
            await pipe.execute()
        log.warning("inbound mail %s (%s); kept as %s", kind, reason, kept_as)
        return Unparsed(reason, kept_as, kind)


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
