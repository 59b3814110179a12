"""Throttle decision cost: sendguard's atomic five-bucket reservation against `limits`, one bucket a hit.

Both run in this process against the bench's Redis, with redis-py's asyncio client, at the same
concurrency, with limits high enough that every decision allows: the figure is the cost of
deciding. sendguard's decision is `Throttles.buckets` plus `Throttles.reserve` for a message that
falls in five buckets (recipient domain, sender domain, inbox, agent, global), as the daemon calls
them before each send; the reference is `limits`' moving-window limiter (`hit`) on one bucket.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from bench.harness import Bench
from bench.mail import AGENT, SENDER_ADDRESS
from bench.scenario import Figure, Ratio, Sample, Scenario
from bench.sizes import Size
from sendguard.delivery.throttle import Throttles
from sendguard.model import Status
from sendguard.record import MessageRecord
from sendguard.rules import ScopeKind, ThrottleRule
from sendguard.scopes import scope_values

LIMIT = 10_000_000  # per minute: never reached, so every decision is an admitting one
PER = "60s"
DOMAINS = 100
SCOPES = (
    ScopeKind.RECIPIENT_DOMAIN,
    ScopeKind.SENDER_DOMAIN,
    ScopeKind.INBOX,
    ScopeKind.AGENT,
    ScopeKind.GLOBAL,
)
LEASE_MS = 31_000  # as the daemon's default: send deadline plus a second

Decide = Callable[[int], Awaitable[bool]]


async def run(bench: Bench, size: Size) -> Sample:
    await bench.fresh()
    throttles = Throttles(bench.redis, bench.keys, LEASE_MS)
    rules = [ThrottleRule.model_validate({"scope": scope, "limit": LIMIT, "per": PER}) for scope in SCOPES]

    async def reserve(n: int) -> bool:
        record = MessageRecord(
            f"m{n}", Status.QUEUED, from_addr=SENDER_ADDRESS, to_domain=domain(n), agent=AGENT
        )
        buckets = throttles.buckets(rules, scope_values(record))
        return (await throttles.reserve(buckets, f"m{n}:1")).wait_ms == 0

    sendguard = await decision_rate(reserve, size)
    pool = aioredis.ConnectionPool.from_url(bench.redis_url)  # ours, so we can close it
    options: dict[str, Any] = {"connection_pool": pool}  # passed on to redis-py, whatever limits' hints say
    try:
        storage = RedisStorage(f"async+{bench.redis_url}", implementation="redispy", **options)
        limiter = MovingWindowRateLimiter(storage)
        item = RateLimitItemPerMinute(LIMIT)

        async def hit(n: int) -> bool:
            return await limiter.hit(item, domain(n))

        moving_window = await decision_rate(hit, size)
    finally:
        await pool.aclose()
    return Sample(
        values={"sendguard": sendguard, "limits": moving_window},
        notes=[
            f"{size.throttle_concurrency} concurrent deciders for {size.throttle_seconds:g} s each, "
            f"recipients spread over {DOMAINS} domains; limits {LIMIT:,} per minute, never reached"
        ],
    )


def domain(n: int) -> str:
    return f"org{n % DOMAINS}.example"


async def decision_rate(decide: Decide, size: Size) -> float:
    """Decisions a second from `throttle_concurrency` loops calling `decide` until the deadline."""
    numbers = itertools.count()
    for n in itertools.islice(numbers, 100):  # scripts loaded and connections open before timing
        await decide(n)
    done = 0
    deadline = time.perf_counter() + size.throttle_seconds

    async def decider() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            if not await decide(next(numbers)):
                raise RuntimeError("a throttle said no: the limits are meant never to be reached")
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(decider() for _ in range(size.throttle_concurrency)))
    return done / (time.perf_counter() - started)


SCENARIO = Scenario(
    name="throttle",
    title="Throttle decisions: sendguard's atomic five-bucket reservation against limits' moving window",
    figures=(
        Figure("sendguard", "sendguard reserve, 5 buckets a decision", "decisions/s"),
        Figure("limits", "limits MovingWindowRateLimiter.hit, 1 bucket (raw limit)", "decisions/s"),
    ),
    ratios=(Ratio("sendguard/limits", "sendguard / limits, decisions/s", of="sendguard", over="limits"),),
    run=run,
)
