"""How delivery and memory are read: from the sink's own clock, and from the kernel's counters."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

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


class RawLimit(NamedTuple):
    """aiosmtplib alone: its rate, and the CPU it and the sink spent a message (ms)."""

    rate: float
    sender_cpu: float
    sink_cpu: float


async def raw_rate(bench: Bench, count: int, connections: int) -> RawLimit:
    """The raw limit: aiosmtplib alone sends `count` x RAW_SHARE messages to the emptied sink."""
    bench.sink.clear()
    sent = count * RAW_SHARE
    sink_before = time.process_time()  # the sink is a thread of this process, alone at work meanwhile
    sender_cpu = bench.raw_send(sent, connections)
    rate = arrival_rate(await arrivals(bench.sink, sent))
    return RawLimit(rate, 1000 * sender_cpu / sent, 1000 * (time.process_time() - sink_before) / sent)


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process `pid` has used so far, as the kernel counts it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def peak_rss(services: Sequence[Service], seconds: float) -> int:
    """The highest resident memory any of `services` reaches within `seconds`, read every 0.1 s."""
    peak = 0
    for _ in range(max(1, int(seconds * 10))):
        peak = max(peak, *(service.rss_bytes() for service in services))
        await asyncio.sleep(0.1)
    return peak
