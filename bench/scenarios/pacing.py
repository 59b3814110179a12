"""Pacing cost: a throttle decision with a send window and a warm-up ramp against the same without.

Both run in this process against the bench's Redis, as the throttle scenario's do, at the same
concurrency and with limits never reached. Without: `Throttles.buckets` plus `Throttles.reserve`
over five throttles (recipient domain, sender domain, inbox, agent, global). With: the same, plus
what the deliverer adds at each claim for a window and a ramp: the next opening of a window read in
the recipient's zone (open all week here, so every decision goes on) and the ramp's rolling bucket,
whose limit the reservation script works out from the inbox's first send.
"""

from __future__ import annotations

from bench.harness import Bench
from bench.mail import AGENT, SENDER_ADDRESS
from bench.scenario import Figure, Ratio, Sample, Scenario
from bench.scenarios.throttle import DOMAINS, LEASE_MS, LIMIT, PER, SCOPES, decision_rate, domain
from bench.sizes import Size
from sendguard.delivery.throttle import Throttles
from sendguard.model import Status, now_ms
from sendguard.record import MessageRecord
from sendguard.rules import WEEKDAYS, RampRule, RulesFile, ScopeKind, ThrottleRule, WindowRule
from sendguard.scopes import scope_values
from sendguard.windows import opening_ms

RECIPIENT_ZONE = "America/New_York"


async def run(bench: Bench, size: Size) -> Sample:
    await bench.fresh()
    throttles = Throttles(bench.redis, bench.keys, LEASE_MS)
    plain = RulesFile(
        throttle=[ThrottleRule.model_validate({"scope": s, "limit": LIMIT, "per": PER}) for s in SCOPES]
    )
    window = WindowRule(scope=ScopeKind.AGENT, days=list(WEEKDAYS), hours=["00:00-24:00"])
    ramp = RampRule(scope=ScopeKind.INBOX, start=LIMIT, step=1, ceiling=LIMIT)
    paced = plain.model_copy(update={"window": [window], "ramp": [ramp]})

    async def decide(rules: RulesFile, n: int) -> bool:
        """What the deliverer does for a claimed message before it may send."""
        record = MessageRecord(
            f"m{n}",
            Status.QUEUED,
            from_addr=SENDER_ADDRESS,
            to_domain=domain(n),
            agent=AGENT,
            recipient_timezone=RECIPIENT_ZONE,
        )
        now = now_ms()
        if opening_ms(rules, record, now) > now:
            return False
        buckets = throttles.buckets(rules.throttle, scope_values(record), ramps=rules.ramp)
        return (await throttles.reserve(buckets, f"m{n}:1")).wait_ms == 0

    async def without(n: int) -> bool:
        return await decide(plain, n)

    async def with_pacing(n: int) -> bool:
        return await decide(paced, n)

    return Sample(
        values={"plain": await decision_rate(without, size), "paced": await decision_rate(with_pacing, size)},
        notes=[
            f"{size.throttle_concurrency} concurrent deciders for {size.throttle_seconds:g} s each, "
            f"recipients over {DOMAINS} domains in {RECIPIENT_ZONE}; a window open all week, a ramp "
            "never reached"
        ],
    )


SCENARIO = Scenario(
    name="pacing",
    title="Pacing: a throttle decision with a send window and a warm-up ramp against one without",
    figures=(
        Figure("paced", "5 throttles + a window (recipient's zone) + a ramp", "decisions/s"),
        Figure("plain", "5 throttles", "decisions/s"),
    ),
    ratios=(
        Ratio("paced/plain", "with a window and a ramp / without, decisions/s", of="paced", over="plain"),
    ),
    run=run,
)
