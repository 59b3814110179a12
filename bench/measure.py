"""How delivery and memory are read: from the sink's own clock, and from the kernel's counters."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bench.harness import Bench, Service
from tests.peers import Received, SmtpSink

_DELIVERY_DEADLINE = 600.0
# aiosmtplib alone sends this many times as many messages as sendguard delivers, so both sides are
# timed over spans of similar length and a noisy second on the shared machine weighs alike on each.
RAW_SHARE = 3


def arrival_rate(times: Sequence[float]) -> float:
    """Messages a second between the first and the last arrival at the sink.

    Timed by the sink, the same way for sendguard and for aiosmtplib alone, so neither side's
    start-up or shutdown is counted.
    """
    if len(times) < 2:
        raise ValueError("a rate needs at least two arrivals")
    return (len(times) - 1) / (max(times) - min(times))


async def delivered(sink: SmtpSink, count: int) -> list[Received]:
    """Wait until the sink holds `count` messages; what it holds."""
    return await sink.await_count(count, timeout=_DELIVERY_DEADLINE)


async def arrivals(sink: SmtpSink, count: int) -> list[float]:
    """Wait until the sink holds `count` messages; their arrival times."""
    return [message.at for message in await delivered(sink, count)]


async def raw_rate(bench: Bench, count: int, connections: int) -> float:
    """The raw limit: aiosmtplib alone sends `count` x RAW_SHARE messages to the emptied sink."""
    bench.sink.clear()
    bench.raw_send(count * RAW_SHARE, connections)
    return arrival_rate(await arrivals(bench.sink, count * RAW_SHARE))


async def peak_rss(services: Sequence[Service], seconds: float) -> int:
    """The highest resident memory any of `services` reaches within `seconds`, read every 0.1 s."""
    peak = 0
    for _ in range(max(1, int(seconds * 10))):
        peak = max(peak, *(service.rss_bytes() for service in services))
        await asyncio.sleep(0.1)
    return peak
