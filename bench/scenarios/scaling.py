"""Scaling out: delivery throughput of 1, 2 and 4 daemons on one Redis, throttles still exact.

Every recipient domain is throttled to `_LIMIT` per `_PER` seconds. The bulk of the queue is spread
over many domains, where that limit never binds; a burst to one more domain, submitted the moment
delivery starts, makes it bind there. The burst is spread over the daemons' own APIs, as a load
balancer would: each daemon is woken by its share, so all of them take part from the start
(released by the bench alone, the quick run's queue was gone before the last daemon's idle poll).
Throughput is read from the bulk's arrivals; exactness from every domain's arrivals at the sink: no
rolling window may hold more than `_LIMIT`. The reference for each daemon count is aiosmtplib alone
over as many connections as those daemons hold together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import httpx

from bench.admit import Admitter, expect
from bench.harness import Bench, Service, rules_text
from bench.mail import submission
from bench.measure import RAW_SHARE, arrival_rate, delivered, raw_rate
from bench.scenario import Figure, Ratio, Sample, Scenario
from bench.sizes import Size
from tests.conftest import by_domain, max_in_any_window

DAEMONS = (1, 2, 4)
_LIMIT = 10
_PER = 0.5  # seconds: short, so the burst drains soon after the bulk
_DOMAINS = 100
_HOT = "hot.example"


async def run(bench: Bench, size: Size) -> Sample:
    await bench.fresh()
    throttle: dict[str, str | int] = {
        "scope": "recipient_domain",
        "limit": _LIMIT,
        "per": f"{_PER * 1000:g}ms",
    }
    rules = bench.write_rules(rules_text(throttles=[throttle]))
    admitter = await Admitter.build(bench.redis, bench.keys, rules)
    token = await bench.agent_token()
    sample = Sample()
    with contextlib.ExitStack() as stack:
        services: list[Service] = []
        for daemons in DAEMONS:  # more daemons join the running ones, rather than all starting anew
            services += stack.enter_context(bench.daemons(daemons - len(services), rules, size.connections))
            sample.values |= await _measure(bench, admitter, size, services, token)
    sample.notes.append(
        f"{size.scaling_messages} messages ({size.scaling_messages * RAW_SHARE} for aiosmtplib alone) over "
        f"{_DOMAINS} domains plus a burst of {size.scaling_burst} "
        f"to one domain; every recipient domain limited to {_LIMIT} per {_PER:g} s; "
        f"{size.connections} connections a daemon"
    )
    return sample


async def _measure(
    bench: Bench, admitter: Admitter, size: Size, services: list[Service], token: str
) -> dict[str, float]:
    daemons, count, burst = len(services), size.scaling_messages, size.scaling_burst
    hot = f"hot{daemons}.example"
    bench.sink.clear()
    bulk = (submission(f"lead{n}x{daemons}@org{n % _DOMAINS}.example") for n in range(count))
    await admitter.fill_paused(bulk, count)
    sent_before = [service.metric_total("sendguard_messages_sent_total") for service in services]
    waits_before = sum(service.metric_total("sendguard_throttle_waits_total") for service in services)
    await admitter.resume()
    expect(await _submit_spread(services, token, [f"burst{n}@{hot}" for n in range(burst)]), "queued", burst)
    received = await delivered(bench.sink, count + burst)
    sent = [service.metric_total("sendguard_messages_sent_total") for service in services]
    if any(after <= before for before, after in zip(sent_before, sent, strict=True)):
        raise RuntimeError(f"scaling: a daemon of {daemons} delivered nothing, so nothing was shared")
    waits = sum(service.metric_total("sendguard_throttle_waits_total") for service in services) - waits_before
    times = by_domain(received)
    sendguard = arrival_rate([at for domain, found in times.items() if domain != hot for at in found])
    worst = max(max_in_any_window(found, _PER) for found in times.values())
    raw = await raw_rate(bench, count, daemons * size.connections)
    return {
        f"sendguard_{daemons}": sendguard,
        f"raw_{daemons}": raw.rate,
        f"window_{daemons}": worst,
        f"waits_{daemons}": waits,
    }


async def _submit_spread(services: list[Service], token: str, recipients: list[str]) -> Counter[str]:
    """Submit to `recipients` at once, each through the next daemon's API in turn; the statuses given."""
    headers = {"Authorization": f"Bearer {token}"}
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=service.base, headers=headers))
            for service in services
        ]

        async def submit(n: int, to: str) -> str:
            response = await clients[n % len(clients)].post("/v1/messages", json=submission(to))
            response.raise_for_status()
            return str(response.json()["status"])

        return Counter(await asyncio.gather(*(submit(n, to) for n, to in enumerate(recipients))))


def _name(daemons: int) -> str:
    return f"{daemons} daemon{'s' if daemons > 1 else ''}"


def _figures(daemons: int) -> tuple[Figure, ...]:
    name = _name(daemons)
    return (
        Figure(f"sendguard_{daemons}", f"{name}, queue to sink", "messages/s"),
        Figure(f"raw_{daemons}", f"aiosmtplib alone, {daemons}x the connections (raw limit)", "messages/s"),
        Figure(f"window_{daemons}", f"{name}: most in one domain's window", "messages"),
        Figure(f"waits_{daemons}", f"{name}: throttle waits", "waits"),
    )


def _ratios(daemons: int) -> tuple[Ratio, ...]:
    name, delivered = _name(daemons), f"sendguard_{daemons}"
    ratios = [Ratio(f"{daemons}/raw", f"{name} / raw", of=delivered, over=f"raw_{daemons}")]
    if daemons > 1:
        ratios.append(Ratio(f"{daemons}/1", f"{name} / 1 daemon", of=delivered, over="sendguard_1"))
    window = f"window_{daemons}"
    ratios.append(
        Ratio(f"{window}/limit", f"{name}: window / limit", of=window, over=None, target="≤ 1", fixed=_LIMIT)
    )
    return tuple(ratios)


SCENARIO = Scenario(
    name="scaling",
    title="Delivery with 1, 2 and 4 daemons on one Redis, with exact per-domain throttles",
    figures=tuple(figure for daemons in DAEMONS for figure in _figures(daemons)),
    ratios=tuple(ratio for daemons in DAEMONS for ratio in _ratios(daemons)),
    run=run,
)
