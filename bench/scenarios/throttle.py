"""Throttle decision cost: sendguard's atomic five-bucket reservation against `limits`, one bucket a hit.

Both run in this process against the bench's Redis, with redis-py's asyncio client, at the same
concurrency, with limits high enough that every decision allows: the figure is the cost of
deciding. sendguard's decision is the one the deliverer makes before each send of a claimed
message in five buckets (recipient domain, sender domain, inbox, agent, global): `Throttles.buckets`,
then `Store.start`, the one script that checks suppression and safe mode, reserves every bucket and
marks the message sending, with decisions made at the same moment sharing a round trip as the
daemon's do. So the figure includes more than the throttle (the suppression and safe-mode checks and
the move to `sending`), never less. The messages are written beforehand as a claim leaves them,
outside the timing. The reference is `limits`' moving-window limiter (`hit`) on one bucket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
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
from sendguard.rules import RampRule, ScopeKind, ThrottleRule
from sendguard.scopes import scope_values
from sendguard.state.redis_connection import packing_with_hiredis
from sendguard.state.store import Claim, Moved, Store
from tests.conftest import write_claimed

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
WARM_UP = 100
RECIPIENT_ZONE = "America/New_York"

Decide = Callable[[int], Awaitable[bool]]


async def run(bench: Bench, size: Size) -> Sample:
    await bench.fresh()
    decide = await Decider.build(bench, size)
    rules = [ThrottleRule.model_validate({"scope": scope, "limit": LIMIT, "per": PER}) for scope in SCOPES]

    async def reserve(n: int) -> bool:
        return await decide(rules, n)

    sendguard = await decision_rate(reserve, size)
    pool = aioredis.ConnectionPool.from_url(bench.redis_url)  # ours, so we can close it
    packing_with_hiredis(pool)  # as sendguard's client packs: the same C packer
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
            f"{size.throttle_decisions:,} decisions by {size.throttle_concurrency} concurrent deciders, "
            f"recipients spread over {DOMAINS} domains; limits {LIMIT:,} per minute, never reached"
        ],
    )


def domain(n: int) -> str:
    return f"org{n % DOMAINS}.example"


class Decider:
    """The deliverer's decision before a send, for the messages `claimed` wrote: message `n` is
    started under `rules` and the answer is whether it may go."""

    def __init__(self, bench: Bench, claims: list[Claim]) -> None:
        self.claims = claims
        self._store = Store(bench.redis, bench.keys)
        self._throttles = Throttles(bench.redis, bench.keys, LEASE_MS)

    @classmethod
    async def build(cls, bench: Bench, size: Size) -> Decider:
        return cls(bench, await claimed(bench, WARM_UP + size.throttle_decisions))

    async def __call__(self, rules: Sequence[ThrottleRule], n: int, ramps: Sequence[RampRule] = ()) -> bool:
        claim = self.claims[n]
        assert claim.record is not None
        buckets = self._throttles.buckets(rules, scope_values(claim.record), ramps=ramps)
        started = await self._store.start(
            claim,
            "attempt 1",
            {"attempts": 1, "dns_pending": False, "waiting_for": None},
            "",
            self._throttles.reservation(buckets, f"{claim.message_id}:1"),
            buckets.waits,
        )
        return started.moved is Moved.MOVED


async def claimed(bench: Bench, count: int) -> list[Claim]:
    """`count` queued messages to the bench's domains, written as a claim leaves them."""
    records = (
        MessageRecord(
            f"m{n}",
            Status.QUEUED,
            from_addr=SENDER_ADDRESS,
            to=f"lead{n}@{domain(n)}",
            to_canonical=f"lead{n}@{domain(n)}",
            to_domain=domain(n),
            agent=AGENT,
            recipient_timezone=RECIPIENT_ZONE,
        )
        for n in range(count)
    )
    return await write_claimed(bench.redis, bench.keys, records)


async def decision_rate(decide: Decide, size: Size) -> float:
    """Decisions a second from `throttle_concurrency` loops making `throttle_decisions` between them,
    after WARM_UP made one at a time (scripts loaded and connections open before timing)."""
    for n in range(WARM_UP):
        await decide(n)
    numbers = iter(range(WARM_UP, WARM_UP + size.throttle_decisions))

    async def decider() -> None:
        for n in numbers:
            if not await decide(n):
                raise RuntimeError("a throttle said no: the limits are meant never to be reached")

    started = time.perf_counter()
    await asyncio.gather(*(decider() for _ in range(size.throttle_concurrency)))
    return size.throttle_decisions / (time.perf_counter() - started)


SCENARIO = Scenario(
    name="throttle",
    title="Throttle decisions: sendguard's atomic five-bucket reservation against limits' moving window",
    figures=(
        Figure("sendguard", "sendguard start of a send, 5 buckets a decision", "decisions/s"),
        Figure("limits", "limits MovingWindowRateLimiter.hit, 1 bucket (raw limit)", "decisions/s"),
    ),
    ratios=(Ratio("sendguard/limits", "sendguard / limits, decisions/s", of="sendguard", over="limits"),),
    run=run,
)
