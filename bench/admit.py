"""Admission in the bench's own process, through sendguard's own admission pipeline.

This is the code path of `POST /v1/messages` without HTTP, on parts made by the same `build()` as
`sendguard run`'s, so a scenario can fill the queue faster than the API takes it, and before its
daemons run. Global safe mode is sendguard's own pause: messages admitted while it is tripped wait,
held, until it is resumed, which lets a scenario start its daemons first and then time delivery
alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.harness import PREFIX, ROOT
from bench.mail import AGENT, submission
from sendguard.config import Settings
from sendguard.governance.roles import Role
from sendguard.governance.tokens import Principal
from sendguard.intake.batches import BatchIn
from sendguard.parts import Runtime, build
from sendguard.rules import load_rules
from sendguard.scopes import GLOBAL
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import packing_with_hiredis
from sendguard.submission import MessageIn

_BY = "bench"


class Admitter:
    """Submits messages as the bench agent would, straight into the Redis the daemons share."""

    def __init__(self, parts: Runtime) -> None:
        self._parts = parts
        self._audit = parts.audit
        self._safe_mode = parts.safe_mode
        self._who = Principal(token_id="bench", role=Role.AGENT, name=AGENT)

    @classmethod
    async def build(cls, client: aioredis.Redis, keys: Keys, rules_path: Path) -> Admitter:
        """The parts a daemon with these rules would have, on `client` under `keys`' prefix."""
        return cls(await build(Settings(redis_prefix=keys.prefix), load_rules(rules_path), client))

    async def admit(self, submissions: Iterable[dict[str, Any]], concurrency: int = 32) -> Counter[str]:
        """Admit every submission, `concurrency` at a time; how many ended in each status."""
        pending = iter(submissions)
        statuses: Counter[str] = Counter()

        async def submitter() -> None:
            for body in pending:
                message = MessageIn.model_validate(body)
                submitted = await self._parts.admissions.submit(self._who, message, self._parts.rules)
                [outcome] = submitted.outcomes
                statuses[outcome.admission.status.value] += 1

        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        return statuses

    async def batch(self, body: dict[str, Any]) -> Counter[str]:
        """Admit one batch, as `POST /v1/batches` would; how many recipients ended in each status."""
        submitted = await self._parts.admissions.submit(
            self._who, BatchIn.model_validate(body), self._parts.rules
        )
        return Counter(outcome.admission.status.value for outcome in submitted.outcomes)

    async def fill_paused(self, submissions: Iterable[dict[str, Any]], count: int) -> None:
        """A queue ready to time: pause, admit `count` submissions (all held), chain their audit entries."""
        await self.pause()
        expect(await self.admit(submissions), "held", count)
        await self.chain_audit()

    async def chain_audit(self) -> None:
        """Chain the audit entries admission wrote, as a daemon would have within a quarter second."""
        while await self._audit.chain():
            pass

    async def pause(self) -> None:
        await self._safe_mode.trip(GLOBAL, "manual", _BY, "the bench fills the queue before timing delivery")

    async def resume(self) -> None:
        """Lift the pause: the held messages go back to the queue, under every throttle."""
        await self._safe_mode.resume(GLOBAL, _BY, "the bench times delivery from here")
        await self._safe_mode.drain(5.0)


def expect(statuses: Counter[str], status: str, count: int) -> None:
    """Every admission ended in `status`, or the scenario would be timing something else."""
    if statuses != {status: count}:
        raise RuntimeError(f"expected {count} {status} messages, admission gave {dict(statuses)}")


def leads(first: int, count: int) -> Iterable[dict[str, Any]]:
    """Submissions to `lead<n>@customer.example` for n from `first`, `count` of them."""
    return (submission(f"lead{n}@customer.example") for n in range(first, first + count))


def admit_leads(redis_url: str, rules_path: Path, count: int, processes: int) -> Counter[str]:
    """`leads(0, count)` admitted from `processes` processes at once; how many ended in each status.

    Admission is Python work more than Redis work, so filling a large queue goes faster with a
    process per core than with more coroutines in one.
    """
    share = -(-count // processes)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.admit",
                redis_url,
                str(rules_path),
                str(first),
                str(min(share, count - first)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        for first in range(0, count, share)
    ]
    statuses: Counter[str] = Counter()
    for worker in workers:
        out, _ = worker.communicate(timeout=1800)
        if worker.returncode != 0:
            raise RuntimeError(f"an admission worker failed with exit status {worker.returncode}")
        statuses.update(json.loads(out))
    return statuses


async def _admit_share(redis_url: str, rules_path: Path, first: int, count: int) -> Counter[str]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    packing_with_hiredis(client.connection_pool)  # as the daemon's client packs
    try:
        admitter = await Admitter.build(client, Keys(PREFIX), rules_path)
        return await admitter.admit(leads(first, count))
    finally:
        await client.aclose()


def main() -> None:
    """`python -m bench.admit REDIS_URL RULES FIRST COUNT`: one worker of `admit_leads`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("redis_url")
    parser.add_argument("rules", type=Path)
    parser.add_argument("first", type=int)
    parser.add_argument("count", type=int)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_admit_share(args.redis_url, args.rules, args.first, args.count))))


if __name__ == "__main__":
    main()
