"""Trip and resume notifications to a webhook (Slack-style: JSON with a human-readable `text`).

Posting happens in the background with retries; a slow or failing webhook never delays or
blocks the trip it reports.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from sendguard.config import RedactedURL
from sendguard.metrics import Metrics

log = logging.getLogger("sendguard.notify")


class Notifier:
    """Posts notifications to `url`, if one is set; `drain()` waits for those still going."""

    def __init__(
        self,
        url: RedactedURL | None,
        metrics: Metrics,
        attempts: int = 4,
        timeout: float = 5.0,
        backoff: float = 1.0,
    ):
        self._url = url
        self._metrics = metrics
        self._attempts = attempts
        self._timeout = timeout
        self._backoff = backoff
        self._pending: set[asyncio.Task[None]] = set()

    def post(self, text: str, event: dict[str, Any]) -> None:
        if self._url is None:
            return
        task = asyncio.create_task(self._deliver({"text": text, "sendguard": event}))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, within: float) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=within)

    async def _deliver(self, body: dict[str, Any]) -> None:
        assert self._url is not None
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            for attempt in range(1, self._attempts + 1):
                try:
                    response = await client.post(self._url.secret, json=body)
                    if response.status_code < 300:
                        return
                    problem = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    problem = type(exc).__name__
                log.warning("notification to %s failed (attempt %d): %s", self._url, attempt, problem)
                if attempt < self._attempts:
                    await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        self._metrics.notify_failures.inc()
        log.error("notification to %s dropped after %d attempts", self._url, self._attempts)
