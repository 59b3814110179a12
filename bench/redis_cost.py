"""`python -m bench.redis_cost [--messages N]`: what one message costs the Redis primary.

Counts, from Redis' own `INFO stats`, `INFO commandstats` and `INFO cpu`, while one `sendguard run`
admits N single `POST /v1/messages` due far ahead (admission alone) and then N due now, delivered to
the sink (admission and delivery): round trips (the socket reads Redis made), scripts run, commands
executed (those inside scripts included) and Redis CPU time, per message, with the daemon's idle
traffic, measured first, taken out. Prints the rows of the README's Scaling table, so they are
updated by running this after a change to the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench.harness import Bench, open_bench, rules_text
from bench.mail import LATER, submission
from tests.conftest import wait_until

_IDLE_SECONDS = 5.0


FIELDS = ("round_trips", "scripts", "commands", "cpu_ms")


@dataclass(frozen=True)
class Counts:
    """Redis' running totals at one moment (`seconds`: of the monotonic clock), or a difference."""

    seconds: float
    round_trips: float
    scripts: float
    commands: float
    cpu_ms: float

    @classmethod
    def read(cls, port: int) -> Counts:
        with redis.Redis(port=port, decode_responses=True) as client:
            stats, calls, cpu = client.info("stats"), client.info("commandstats"), client.info("cpu")
        return cls(
            time.monotonic(),
            stats["total_reads_processed"],
            sum(calls.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval")),
            stats["total_commands_processed"],
            (cpu["used_cpu_user"] + cpu["used_cpu_sys"]) * 1000,
        )

    def since(self, start: Counts, idle: Counts | None = None) -> Counts:
        """What happened from `start` to here, less what `idle` (a per-second rate) did meanwhile."""
        spent = self.seconds - start.seconds
        return Counts(
            spent,
            *(
                getattr(self, name) - getattr(start, name) - (getattr(idle, name) * spent if idle else 0)
                for name in FIELDS
            ),
        )

    def per(self, amount: float) -> Counts:
        return Counts(self.seconds, *(getattr(self, name) / amount for name in FIELDS))

    def less(self, other: Counts) -> Counts:
        return Counts(self.seconds, *(getattr(self, name) - getattr(other, name) for name in FIELDS))


def _submit(client: httpx.Client, count: int, prefix: str, **extra: str) -> None:
    for n in range(count):
        response = client.post("/v1/messages", json=submission(f"{prefix}{n}@customer.example", **extra))
        response.raise_for_status()


async def _measure(bench: Bench, messages: int) -> tuple[Counts, Counts, Counts]:
    """Per second of an idle daemon; per message of admission alone, and of admission and delivery."""
    port = bench.redis_server.port
    token = await bench.agent_token()
    with bench.daemons(1, bench.write_rules(rules_text()), connections=8) as [daemon]:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=daemon.base, headers=headers, timeout=30) as client:
            start = Counts.read(port)
            await asyncio.sleep(_IDLE_SECONDS)
            idle = Counts.read(port).since(start)
            idle = idle.per(idle.seconds)
            start = Counts.read(port)
            _submit(client, messages, "later", send_at=LATER)
            admission = Counts.read(port).since(start, idle).per(messages)
            start = Counts.read(port)
            _submit(client, messages, "now")
            wait_until(lambda: len(bench.sink.snapshot()) >= messages, timeout=300, what="every delivery")
            both = Counts.read(port).since(start, idle).per(messages)
    return idle, admission, both


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_cost", description=__doc__)
    parser.add_argument("--messages", type=int, default=500, help="messages of each kind (default 500)")
    messages = parser.parse_args().messages

    async def run() -> tuple[Counts, Counts, Counts]:
        with tempfile.TemporaryDirectory(prefix="sg-cost-") as directory:
            async with open_bench(Path(directory)) as bench:
                return await _measure(bench, messages)

    idle, admission, both = asyncio.run(run())
    delivery = both.less(admission)
    rows = [
        ("round trips (Redis socket reads)", "round_trips", "{:.1f}"),
        ("scripts run (`EVALSHA`)", "scripts", "{:.1f}"),
        ("commands executed, those inside scripts included", "commands", "{:.0f}"),
        ("Redis CPU time", "cpu_ms", "{:.2f} ms"),
    ]
    print("| per message | admission | delivery | together |\n|---|---|---|---|")
    for label, name, form in rows:
        cells = [form.format(getattr(counts, name)) for counts in (admission, delivery, both)]
        print(f"| {label} | {' | '.join(cells)} |")
    print(
        f"\nidle daemon, per second: {idle.round_trips:.0f} round trips, {idle.commands:.0f} commands; "
        f"ceiling of one Redis core: {1000 / both.cpu_ms:,.0f} messages/s, "
        f"{1000 * both.commands / both.cpu_ms:,.0f} commands/s"
    )


if __name__ == "__main__":
    main()
