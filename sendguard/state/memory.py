"""Redis memory as a budget: admission stops before Redis is full, so accepted work still finishes.

Redis should run with `maxmemory` and `maxmemory-policy noeviction`: full, it refuses writes
instead of evicting a queued message. The embedded Redis is started so (SENDGUARD_REDIS_MAXMEMORY);
an external one's own settings are read from INFO, and a daemon warns at start when it has no
`maxmemory` or may evict. Admission refuses a submission (`StoreFull`, a 503 naming Redis memory)
when it would take `used_memory` past `ADMISSION_SHARE` of `maxmemory`, so the rest stays for
what accepted messages still write: their deliveries, histories, signals and audit entries.

INFO is read at most once a `CACHE_SECONDS`; in between, the bytes this daemon has let in are
added to the last reading, so a burst of submissions cannot all pass on one stale figure.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from sendguard.errors import StoreFull
from sendguard.state.redis_connection import translated

ADMISSION_SHARE = 0.9
CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class Memory:
    """Redis's memory as INFO tells it: bytes used, its `maxmemory` (0: none) and eviction policy."""

    used: int
    limit: int
    policy: str


class MemoryBudget:
    """Says whether Redis has room for a submission, from INFO memory read at most once a second."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._read: Memory | None = None
        self._read_at = 0.0
        self._let_in = 0  # bytes reserved since the last reading
        # One INFO at a time: the requests that find the reading stale together wait for one read,
        # instead of each sending its own (and each zeroing what the others let in meanwhile).
        self._reading = asyncio.Lock()

    async def read(self) -> Memory:
        """Redis's memory now."""
        async with translated():
            info = await self._redis.info("memory")
        return Memory(
            int(info["used_memory"]), int(info.get("maxmemory", 0)), str(info.get("maxmemory_policy", ""))
        )

    async def reserve(self, needed: int) -> None:
        """Count `needed` bytes against the budget, or raise StoreFull when they would pass the line."""
        if self._stale():
            async with self._reading:
                if self._stale():  # not read by the request this one waited for
                    now = time.monotonic()
                    self._read, self._read_at, self._let_in = await self.read(), now, 0
        memory = self._read
        assert memory is not None  # just read, if it was not
        if not memory.limit:  # no maxmemory: nothing to measure against (warned at start)
            return
        line = int(memory.limit * ADMISSION_SHARE)
        if memory.used + self._let_in + needed > line:
            raise StoreFull(
                f"Redis memory is at {memory.used + self._let_in:,} of its {memory.limit:,}-byte "
                f"maxmemory; admission stops at {ADMISSION_SHARE:.0%} ({line:,} bytes) and this "
                f"submission needs about {needed:,} more. Retry once messages have been sent, or "
                "give Redis more memory"
            )
        self._let_in += needed

    def _stale(self) -> bool:
        return self._read is None or time.monotonic() - self._read_at >= CACHE_SECONDS

    async def warnings(self) -> list[str]:
        """What an operator should fix in how Redis keeps its memory, for the daemon's start."""
        memory = await self.read()
        found = []
        if not memory.limit:
            found.append(
                "Redis has no maxmemory: it can grow until the machine runs out, and admission "
                "cannot stop before it is full; set maxmemory (and maxmemory-policy noeviction)"
            )
        elif memory.policy != "noeviction":
            found.append(
                f"Redis maxmemory-policy is {memory.policy!r}: when full it may evict queued messages; "
                "set maxmemory-policy noeviction"
            )
        return found
