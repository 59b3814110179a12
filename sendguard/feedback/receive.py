"""Raw inbound mail (bounces, feedback reports, replies), from HTTP or the optional SMTP listener.

Parsing happens in the inbound mail process (`listener.py`), never on the daemon's loop or under
its GIL; what it found comes back here, to `Inbox.take`, the one place that applies it. Parsing
holds no secret and decides nothing: `take` checks what the mail
refers to (Feedback.apply_mail). Mail is never dropped: it is kept in Redis for a person to
inspect, and counted, when it cannot be understood (`unparsed`) or does not prove it is about a
message sendguard sent (`unreferenced`: forged, or a bounce address or Message-ID that does not
check out). Only the newest `KEEP_UNPARSED` are kept, each cut at `KEEP_BYTES` (16 MiB in all),
so a flood of junk mail cannot fill Redis.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from sendguard.errors import StoreError
from sendguard.feedback.apply import Applied, Feedback, Reporter, Unreferenced
from sendguard.feedback.listener import Mail
from sendguard.feedback.parse import TRIMMED, Inbound, InboundKind, UnparsableMail
from sendguard.metrics import Metrics
from sendguard.model import now_ms
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated

log = logging.getLogger("sendguard.feedback.receive")
KEEP_UNPARSED = 500
KEEP_BYTES = 32 * 1024


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


class Parser(Protocol):
    """Where raw mail is parsed: the inbound mail process."""

    async def parse(self, raw: bytes, envelope_recipients: list[str]) -> Inbound | UnparsableMail: ...


class Inbox:
    """Applies what parsed mail proves; keeps what could not be parsed or proves nothing."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, feedback: Feedback, parser: Parser, metrics: Metrics
    ) -> None:
        self._redis = client
        self._metrics = metrics
        metrics.start_at_zero(metrics.inbound, [*InboundKind, "unparsed", "unreferenced"])
        metrics.start_at_zero(metrics.inbound_trimmed, TRIMMED)
        self._keys = keys
        self._feedback = feedback
        self._parser = parser

    async def receive(
        self, raw: bytes, envelope_recipients: list[str], reporter: Reporter
    ) -> Received | Unparsed:
        """Parse in the inbound mail process, then `take`."""
        parsed = await self._parser.parse(raw, envelope_recipients)
        return await self.take(parsed, raw[:KEEP_BYTES], envelope_recipients, reporter, size=len(raw))

    async def take(
        self,
        parsed: Inbound | UnparsableMail,
        raw_for_keeping: bytes,
        envelope_recipients: list[str],
        reporter: Reporter,
        *,
        size: int,
    ) -> Received | Unparsed:
        """Apply what parsing found, if the mail proves what it is about; else keep the mail:
        the one place after parsing, for HTTP and SMTP alike. `raw_for_keeping` is cut at
        KEEP_BYTES (the listener ships no more); `size` is the whole mail's.

        Mail an agent hands in is its word, held to what its events may move (UnknownMessage,
        NotSent). `envelope_recipients` are kept with the mail, for the person who reads it.
        """
        kept = (raw_for_keeping, size, reporter.source, envelope_recipients)
        if isinstance(parsed, UnparsableMail):
            return await self._keep(*kept, str(parsed))
        if parsed.trimmed:  # budgets the parser applied: counted, never an error to the sender
            for what in parsed.trimmed:
                self._metrics.inbound_trimmed.labels(what).inc()
            log.warning(
                "inbound mail (%s) named more than is checked; cut: %s",
                parsed.summary,
                ", ".join(parsed.trimmed),
            )
        try:
            applied = await self._feedback.apply_mail(parsed, reporter)
        except Unreferenced as exc:
            return await self._keep(*kept, f"{parsed.summary}: {exc}", "unreferenced")
        self._metrics.inbound.labels(parsed.kind.value).inc()
        return Received(parsed, applied)

    async def answer(self, mail: Mail) -> str:
        """The reply for mail the SMTP listener took in.

        250 once recorded or kept, so a sending MTA never retries (or bounces back to us) what
        sendguard already holds; 451 when Redis failed, so it tries again later.
        """
        try:
            result = await self.take(
                mail.outcome, mail.kept, mail.recipients, Reporter("smtp", stranger=True), size=mail.size
            )
        except StoreError as exc:
            log.warning("inbound mail from %s could not be recorded: %s", mail.peer, exc)
            return "451 4.3.0 could not record the message; try again later"
        if isinstance(result, Unparsed):
            return f"250 2.0.0 kept for inspection as {result.kept_as}"
        return f"250 2.0.0 {result.inbound.summary}"[:500]

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
        self,
        raw: bytes,
        size: int,
        source: str,
        envelope_recipients: list[str],
        reason: str,
        kind: str = "unparsed",
    ) -> Unparsed:
        """Keep `raw` (cut at KEEP_BYTES) for a person, counted under `kind` (unparsed or unreferenced)."""
        self._metrics.inbound.labels(kind).inc()
        kept_as = secrets.token_hex(8)
        entry = {
            "id": kept_as,
            "at": now_ms(),
            "source": source,
            "kind": kind,
            "reason": reason,
            "envelope_recipients": envelope_recipients,
            "size": size,
            "truncated": size > len(raw),
            "raw": base64.b64encode(raw).decode("ascii"),
        }
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self._keys.unparsed, json.dumps(entry))
            pipe.ltrim(self._keys.unparsed, 0, KEEP_UNPARSED - 1)
            await pipe.execute()
        log.warning("inbound mail %s (%s); kept as %s", kind, reason, kept_as)
        return Unparsed(reason, kept_as, kind)
