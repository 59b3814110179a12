"""Safe-mode reaction: a bounce storm at a steady submission rate, and how fast sending stops.

Messages go in through the API at a steady rate; the sink answers 550 to a fifth of the
recipients. The crossing is the last 550 the sink gave before the trip was recorded (the bounce
that crossed the rules' threshold). From it, the figures are: how long until the trip was
recorded, how long until no new SMTP transaction started (the later of the trip and the last
RCPT after the crossing), and how many messages still reached the sink after the crossing. The
product promises a stop within a second, with at most the sends already in flight completing.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.harness import Bench, rules_text
from bench.mail import submission
from bench.scenario import Figure, Ratio, Sample, Scenario
from bench.sizes import Size
from sendguard.feedback.counters import Trip

_SAFE_MODE = {"min_sent": 50, "bounce_rate": 0.05}  # as sendguard ships them
_BOUNCE_EVERY = 5  # the sink answers 550 to local parts starting with "bounce"
_RELAY_DELAY = 0.05  # seconds the sink takes over each message, as a real relay does: sends overlap
_AFTER_TRIP = 1.0  # seconds of submissions after the trip, so a send slipping through would show
_DEADLINE = 60.0


async def run(bench: Bench, size: Size) -> Sample:
    await bench.fresh()
    rules = bench.write_rules(rules_text(safe_mode=_SAFE_MODE))
    token = await bench.agent_token()
    bench.sink.delay = _RELAY_DELAY
    with bench.daemons(1, rules, size.connections) as (daemon,):
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=daemon.base, headers=headers, timeout=10) as client:
            trip, rate = await _storm(bench, client, size.storm_rate)
        await _settled(bench)
    rcpts, received = bench.sink.rcpts, bench.sink.snapshot()
    tripped = trip.at / 1000
    crossing = max(at for at, _, reply in rcpts if reply.startswith("550") and at <= tripped)
    halted = max([tripped, *(at for at, _, _ in rcpts if at > crossing)])
    return Sample(
        values={
            "rate": rate,
            "trip_ms": (tripped - crossing) * 1000,
            "halt_ms": (halted - crossing) * 1000,
            "after": sum(1 for message in received if message.at > crossing),
            "connections": size.connections,
        },
        notes=[
            f"a 1-in-{_BOUNCE_EVERY} bounce storm, a sink taking {_RELAY_DELAY * 1000:g} ms a message, "
            f"{size.connections} SMTP connections, [safe_mode] "
            + ", ".join(f"{key} = {value}" for key, value in _SAFE_MODE.items())
            + f"; it tripped {trip.scope} ({trip.cause})"
        ],
    )


async def _storm(bench: Bench, client: httpx.AsyncClient, rate: float) -> tuple[Trip, float]:
    """Submit at `rate` a second until a second after the trip; the trip and the rate achieved."""
    started = time.perf_counter()
    trip: Trip | None = None
    stop_at = started + _DEADLINE
    submitted = 0
    while time.perf_counter() < stop_at:
        await asyncio.sleep(max(0.0, started + submitted / rate - time.perf_counter()))
        local = f"bounce{submitted}" if submitted % _BOUNCE_EVERY == _BOUNCE_EVERY - 1 else f"lead{submitted}"
        response = await client.post("/v1/messages", json=submission(f"{local}@customer.example"))
        if response.status_code != 201:
            raise RuntimeError(f"safe mode storm: {response.status_code} {response.text}")
        submitted += 1
        if trip is None and (trip := await _first_trip(bench)) is not None:
            stop_at = time.perf_counter() + _AFTER_TRIP
    if trip is None:
        raise RuntimeError(f"safe mode storm: no trip within {_DEADLINE:g} s of bounces")
    return trip, submitted / (time.perf_counter() - started)


async def _first_trip(bench: Bench) -> Trip | None:
    trips = [Trip.from_json(str(raw)) for raw in (await bench.redis.hgetall(bench.keys.trips)).values()]
    return min(trips, key=lambda trip: trip.at, default=None)


async def _settled(bench: Bench) -> None:
    """Wait until no message is `sending`: every send that started has its outcome."""
    deadline = time.perf_counter() + 30
    while int(await bench.redis.hget(bench.keys.count, "sending") or 0):
        if time.perf_counter() > deadline:
            raise RuntimeError("safe mode storm: sends still in flight 30 s after the storm")
        await asyncio.sleep(0.05)


SCENARIO = Scenario(
    name="safemode",
    title="Safe-mode reaction to a bounce storm at a steady send rate",
    figures=(
        Figure("rate", "submissions during the storm", "messages/s"),
        Figure("trip_ms", "crossing 550 to trip recorded", "ms"),
        Figure("halt_ms", "crossing 550 to last new SMTP transaction", "ms"),
        Figure("after", "messages reaching the sink after the crossing", "messages"),
        Figure("connections", "SMTP connections (sends that can be in flight)", "connections"),
    ),
    ratios=(
        Ratio("halt/1s", "halt / the promised second", of="halt_ms", over=None, target="≤ 1", fixed=1000.0),
        Ratio(
            "after/in-flight",
            "after the crossing / connections",
            of="after",
            over="connections",
            target="≤ 1",
        ),
    ),
    run=run,
)
