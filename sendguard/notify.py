"""Notifications to a webhook (Slack-style: JSON with a human-readable `text`): trips, resumes,
approval requests.

Posting happens in the background with retries; a slow or failing webhook never delays or
blocks what it reports. A poster that must know the webhook took it (an approval request, whose
record says whether its approvers were told) passes `delivered`, called once it has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from sendguard.background import end_within
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

    @property
    def enabled(self) -> bool:
        """Whether there is a webhook to post to."""
        return self._url is not None

    @property
    def budget(self) -> float:
        """Seconds one post may take at most, every attempt timing out and every back-off slept."""
        return self._attempts * self._timeout + sum(self._backoff * 2.0**n for n in range(self._attempts - 1))

    def post(
        self, text: str, event: dict[str, Any], delivered: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Post in the background; `delivered` is awaited once the webhook accepted the post."""
        if self._url is None:
            return
        task = asyncio.create_task(self._deliver({"text": text, "sendguard": event}, delivered))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, within: float) -> None:
        """Give the posts still going `within` seconds; the rest are dropped, counted and logged."""
        dropped = await end_within(set(self._pending), within)
        if dropped:
            self._metrics.notify_failures.inc(dropped)
            log.error("%d notifications to %s dropped at shutdown, still being posted", dropped, self._url)

    async def _deliver(self, body: dict[str, Any], delivered: Callable[[], Awaitable[None]] | None) -> None:
        if await self._attempt_all(body):
            if delivered is not None:
                await delivered()
            return
        self._metrics.notify_failures.inc()
        log.error("notification to %s dropped after %d attempts", self._url, self._attempts)

    async def _attempt_all(self, body: dict[str, Any]) -> bool:
        """Post `body` until the webhook accepts it, at most `attempts` times; whether it did."""
        assert self._url is not None
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            for attempt in range(1, self._attempts + 1):
                try:
                    # The whole attempt, not each of httpx's phases: `budget` is a bound to rely on.
                    async with asyncio.timeout(self._timeout):
                        response = await client.post(self._url.secret, json=body)
                    if response.status_code < 300:
                        return True
                    problem = f"HTTP {response.status_code}"
                except (httpx.HTTPError, TimeoutError) as exc:
                    problem = type(exc).__name__
                log.warning("notification to %s failed (attempt %d): %s", self._url, attempt, problem)
                if attempt < self._attempts:
                    await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        return False
