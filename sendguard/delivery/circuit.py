"""The relay circuit breaker: stop dispatching while the relay cannot be reached, probe, resume.

Different from safe mode: safe mode is about what recipients say and waits for a person; the
circuit is about our relay being down and closes by itself the moment a probe gets an answer.
Only connection-level failures count (refused, timed out, authentication failed): any SMTP
reply, even a 5xx, proves the relay is there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import StrEnum

from sendguard.metrics import Metrics

log = logging.getLogger("sendguard.delivery.circuit")


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Circuit:
    """Opens after `threshold` consecutive failures; while open, one probe per backoff period."""

    def __init__(self, threshold: int, max_delay: float, metrics: Metrics, first_delay: float = 1.0) -> None:
        self._threshold = threshold
        self._metrics = metrics
        self._max_delay = max_delay
        self._first_delay = min(first_delay, max_delay)
        self._failures = 0
        self._opened = 0  # consecutive openings, for the backoff
        self._retry_at = 0.0
        self._probing = False
        self._changed = asyncio.Event()
        self.state = State.CLOSED

    async def ready(self) -> bool:
        """Wait until a delivery may be dispatched; True when it is the half-open probe."""
        while True:
            if self.state is State.CLOSED:
                return False
            if self.state is State.OPEN:
                delay = self._retry_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                self.state = State.HALF_OPEN
                self._probing = False
            if not self._probing:
                self._probing = True
                return True
            self._changed.clear()
            await self._changed.wait()

    def release(self, probe: bool) -> None:
        """A dispatch is over. If it was the probe and never reached the relay, the next one probes."""
        if probe and self.state is State.HALF_OPEN:
            self._wake()

    def succeeded(self) -> None:
        if self.state is not State.CLOSED:
            log.warning("relay answers again: circuit closed, dispatch resumes")
            self._metrics.circuit_open.set(0)
        self.state = State.CLOSED
        self._failures = self._opened = 0
        self._wake()

    def failed(self) -> None:
        self._failures += 1
        if self.state is State.HALF_OPEN or (
            self.state is State.CLOSED and self._failures >= self._threshold
        ):
            delay = min(self._max_delay, self._first_delay * 2**self._opened)
            if self.state is State.CLOSED:
                self._metrics.circuit_opens.inc()
                self._metrics.circuit_open.set(1)
                log.error(
                    "relay failed %d times in a row: circuit open, dispatch paused; probing in %.1fs",
                    self._failures,
                    delay,
                )
            self._opened += 1
            self.state = State.OPEN
            self._retry_at = time.monotonic() + delay
            self._wake()

    def _wake(self) -> None:
        self._probing = False
        self._changed.set()
