"""How much work each scenario does: `--quick` for the CI smoke run (under a minute), full for figures."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    """Amounts of work; the same code runs at either size, only these numbers change."""

    name: str
    runs: int  # default number of runs of every scenario
    connections: int  # SMTP connections of one daemon, and its SENDGUARD_WORKERS
    delivery_messages: int
    wrk_seconds: int
    http_concurrency: int
    batch_recipients: int
    throttle_decisions: int  # each side of the throttle and pacing scenarios makes this many
    throttle_concurrency: int
    scaling_messages: int
    scaling_burst: int  # messages to one domain submitted at once, so its throttle has to bind
    storm_rate: float  # submissions a second during the bounce storm
    footprint_messages: int
    footprint_processes: int  # admitting the footprint's queue; 0: the bench's own process
    footprint_batch: int  # recipients of the batch whose Redis bytes per recipient are measured
    rss_seconds: int  # of wrk load while resident memory is read


QUICK = Size(
    name="quick",
    runs=1,
    connections=8,
    delivery_messages=300,
    wrk_seconds=2,  # a run of one second on a busy machine could end before the first answer
    http_concurrency=64,
    batch_recipients=1_000,
    throttle_decisions=3_000,
    throttle_concurrency=64,
    scaling_messages=300,  # enough that every daemon, each polling twice a second, claims some
    scaling_burst=20,
    storm_rate=60.0,
    footprint_messages=1_000,
    footprint_processes=0,  # starting a process costs more than a thousand admissions
    footprint_batch=1_000,
    rss_seconds=2,
)

FULL = Size(
    name="full",
    runs=3,
    connections=8,
    delivery_messages=3_000,
    wrk_seconds=5,
    http_concurrency=64,
    batch_recipients=10_000,
    throttle_decisions=30_000,
    throttle_concurrency=64,
    scaling_messages=1_000,
    scaling_burst=30,
    storm_rate=60.0,
    footprint_messages=100_000,
    footprint_processes=os.cpu_count() or 1,  # admission is Python work: a process per core
    footprint_batch=10_000,
    rss_seconds=3,
)
