"""Pacing cost: a throttle decision with a send window and a warm-up ramp against the same without.

Both run in this process against the bench's Redis, as the throttle scenario's do, at the same
concurrency and with limits never reached. Without: the throttle scenario's decision, the start of a
send (`Throttles.buckets`, then `Store.start`) over five throttles (recipient domain, sender domain,
inbox, agent, global). With: the same, plus
what the deliverer adds at each claim for a window and a ramp: the next opening of a window read in
the recipient's zone (open all week here, so every decision goes on) and the ramp's rolling bucket,
whose limit the reservation script works out from the inbox's first send.
"""

from __future__ import annotations

from bench.harness import Bench
from bench.scenario import Figure, Ratio, Sample, Scenario
from bench.scenarios.throttle import (
    DOMAINS,
    LIMIT,
    PER,
    RECIPIENT_ZONE,
    SCOPES,
    Decider,
    decision_rate,
)
from bench.sizes import Size
from sendguard.model import now_ms
from sendguard.rules import WEEKDAYS, RampRule, RulesFile, ScopeKind, ThrottleRule, WindowRule
from sendguard.windows import opening_ms


async def run(bench: Bench, size: Size) -> Sample:
    await bench.fresh()
    plain = RulesFile(
        throttle=[ThrottleRule.model_validate({"scope": s, "limit": LIMIT, "per": PER}) for s in SCOPES]
    )
    window = WindowRule(scope=ScopeKind.AGENT, days=list(WEEKDAYS), hours=["00:00-24:00"])
    ramp = RampRule(scope=ScopeKind.INBOX, start=LIMIT, step=1, ceiling=LIMIT)
    paced = plain.model_copy(update={"window": [window], "ramp": [ramp]})

    async def decide(rules: RulesFile, decider: Decider, n: int) -> bool:
        """What the deliverer does for a claimed message before it may send."""
        claim = decider.claims[n]
        assert claim.record is not None
        now = now_ms()
        if opening_ms(rules, claim.record, now) > now:
            return False
        return await decider(rules.throttle, n, ramps=rules.ramp)

    plain_decider = await Decider.build(bench, size)

    async def without(n: int) -> bool:
        return await decide(plain, plain_decider, n)

    plain_rate = await decision_rate(without, size)
    await bench.fresh()  # the same messages, unstarted, for the paced decisions
    paced_decider = await Decider.build(bench, size)

    async def with_pacing(n: int) -> bool:
        return await decide(paced, paced_decider, n)

    return Sample(
        values={"plain": plain_rate, "paced": await decision_rate(with_pacing, size)},
        notes=[
            f"{size.throttle_decisions:,} decisions by {size.throttle_concurrency} concurrent deciders, "
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
