"""Delivery throughput: a queue already admitted, drained into the sink, against aiosmtplib alone.

Messages are admitted while global safe mode holds them, the daemon starts, and the resume lets
them go: only delivery is timed (claim, throttle check with no throttles, start of send,
rendering, SMTP, outcome, signal counting, audit). No throttles, no MX look-ups. The reference is
aiosmtplib alone over as many connections to the same sink, in the same run.

On two cores the rates follow the CPU the processes at work spend on a message, so it is read
too, from the kernel's counters over the same spans: the daemon's, Redis', the sink's and
aiosmtplib's alone.
"""

from __future__ import annotations

import time

from bench.admit import Admitter, leads
from bench.harness import Bench, rules_text
from bench.measure import RAW_SHARE, arrival_rate, arrivals, cpu_seconds, raw_rate
from bench.scenario import Figure, Ratio, Sample, Scenario
from bench.sizes import Size


async def run(bench: Bench, size: Size) -> Sample:
    await bench.fresh()
    count = size.delivery_messages
    rules = bench.write_rules(rules_text())
    admitter = await Admitter.build(bench.redis, bench.keys, rules)
    await admitter.fill_paused(leads(0, count), count)
    assert bench.redis_server.process is not None
    redis_pid = bench.redis_server.process.pid
    with bench.daemons(1, rules, size.connections) as [daemon]:
        before = cpu_seconds(daemon.pid), cpu_seconds(redis_pid), time.process_time()
        await admitter.resume()
        sendguard = arrival_rate(await arrivals(bench.sink, count))
        after = cpu_seconds(daemon.pid), cpu_seconds(redis_pid), time.process_time()
    spent = (1000 * (end - start) / count for start, end in zip(before, after, strict=True))
    daemon_cpu, redis_cpu, sink_cpu = spent
    raw = await raw_rate(bench, count, size.connections)
    return Sample(
        values={
            "sendguard": sendguard,
            "raw": raw.rate,
            "daemon_cpu": daemon_cpu,
            "redis_cpu": redis_cpu,
            "sendguard_cpu": daemon_cpu + redis_cpu,
            "sink_cpu": sink_cpu,
            "raw_cpu": raw.sender_cpu,
            "raw_sink_cpu": raw.sink_cpu,
        },
        notes=[
            f"{count} messages ({count * RAW_SHARE} for aiosmtplib alone), {size.connections} SMTP "
            "connections (SENDGUARD_WORKERS and SENDGUARD_SMTP_CONNECTIONS) on both sides; rates from "
            "the sink's first to last arrival; CPU from the kernel's counters (/proc, getrusage) "
            "over the same spans, the sink's being the bench process's, where it runs in a thread"
        ],
    )


SCENARIO = Scenario(
    name="delivery",
    title="Delivery throughput of an admitted queue, against aiosmtplib alone",
    figures=(
        Figure("sendguard", "sendguard, queue to sink", "messages/s"),
        Figure("raw", "aiosmtplib alone to the sink (raw limit)", "messages/s"),
        Figure("daemon_cpu", "sendguard's daemon, CPU a message", "ms"),
        Figure("redis_cpu", "its Redis, CPU a message", "ms"),
        Figure("sendguard_cpu", "daemon and Redis together, CPU a message", "ms"),
        Figure("sink_cpu", "the sink, CPU a message from sendguard", "ms"),
        Figure("raw_cpu", "aiosmtplib alone, CPU a message", "ms"),
        Figure("raw_sink_cpu", "the sink, CPU a message from aiosmtplib alone", "ms"),
    ),
    ratios=(
        Ratio("sendguard/raw", "sendguard / raw", of="sendguard", over="raw", target="≥ 0.8"),
        Ratio("cpu/raw", "daemon and Redis CPU / aiosmtplib alone CPU", of="sendguard_cpu", over="raw_cpu"),
    ),
    run=run,
)
