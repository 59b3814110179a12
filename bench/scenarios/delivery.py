"""Delivery throughput: a queue already admitted, drained into the sink, against aiosmtplib alone.

Messages are admitted while global safe mode holds them, the daemon starts, and the resume lets
them go: only delivery is timed (claim, throttle check with no throttles, start of send,
rendering, SMTP, outcome, signal counting, audit). No throttles, no MX look-ups. The reference is
aiosmtplib alone over as many connections to the same sink, in the same run.
"""

from __future__ import annotations

from bench.admit import Admitter, leads
from bench.harness import Bench, rules_text
from bench.measure import RAW_SHARE, arrival_rate, arrivals, raw_rate
from bench.scenario import Figure, Ratio, Sample, Scenario
from bench.sizes import Size


async def run(bench: Bench, size: Size) -> Sample:
    await bench.fresh()
    count = size.delivery_messages
    rules = bench.write_rules(rules_text())
    admitter = await Admitter.build(bench.redis, bench.keys, rules)
    await admitter.fill_paused(leads(0, count), count)
    with bench.daemons(1, rules, size.connections):
        await admitter.resume()
        sendguard = arrival_rate(await arrivals(bench.sink, count))
    raw = await raw_rate(bench, count, size.connections)
    return Sample(
        values={"sendguard": sendguard, "raw": raw},
        notes=[
            f"{count} messages ({count * RAW_SHARE} for aiosmtplib alone), {size.connections} SMTP "
            "connections (SENDGUARD_WORKERS and SENDGUARD_SMTP_CONNECTIONS) on both sides; rates from "
            "the sink's first to last arrival"
        ],
    )


SCENARIO = Scenario(
    name="delivery",
    title="Delivery throughput of an admitted queue, against aiosmtplib alone",
    figures=(
        Figure("sendguard", "sendguard, queue to sink", "messages/s"),
        Figure("raw", "aiosmtplib alone to the sink (raw limit)", "messages/s"),
    ),
    ratios=(Ratio("sendguard/raw", "sendguard / raw", of="sendguard", over="raw", target="≥ 0.8"),),
    run=run,
)
