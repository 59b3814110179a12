"""The agent register for a governance review: each agent's entry and what it did in the last day.

The entry is the rules in force (`[[agent]]`). The activity is counted in hourly buckets per agent
(`activity` in keys.py) by the scripts that record each event: an admission decision, a delivery
outcome, an approval decision, a safe-mode trip. Reading the last 24 hours is the current hour and
the 23 before it, by Redis' clock. The console (`/ui/`), `GET /v1/agents` and `sendguard agents`
all read it through `agents_report`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from sendguard.model import Status
from sendguard.rules import AgentEntry, Rules, governance_gaps
from sendguard.state.keys import ACTIVITY_BUCKET_MS, Keys
from sendguard.state.redis_connection import translated

HOURS = 24  # buckets read: the current hour and the 23 before it
REJECTED = "rejected"  # lua/admit.lua writes the same field, and `rejected:<code>` beside it
_OUTCOMES = (Status.SENT, Status.BOUNCED, Status.FAILED)


def outcome_counted(status: Status) -> list[str]:
    """The activity a delivery outcome counts: sent, bounced and failed, not a deferral."""
    return [status.value] if status in _OUTCOMES else []


def rejection_counted(codes: Iterable[str]) -> list[str]:
    """The activity a rejection counts: the message once, and each of its reason codes."""
    return [REJECTED, *(f"{REJECTED}:{code}" for code in codes)]


@dataclass(frozen=True)
class AgentActivity:
    """One agent's counts over the window that starts at `since` (UTC) and runs to now."""

    agent: str
    since: datetime
    sent: int = 0
    bounced: int = 0
    failed: int = 0
    rejected: int = 0  # messages rejected at admission or at delivery's DNS check, or refused (403)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)  # a message may have several
    denied: int = 0  # approval requests for its messages that an approver denied
    tripped: int = 0  # safe-mode trips of `agent:<name>`, and trips a signal about its mail caused

    @classmethod
    def from_buckets(cls, agent: str, since: datetime, buckets: Sequence[Mapping[str, str]]) -> AgentActivity:
        totals: dict[str, int] = {}
        for bucket in buckets:
            for name, count in bucket.items():
                totals[name] = totals.get(name, 0) + int(count)
        prefix = f"{REJECTED}:"
        return cls(
            agent=agent,
            since=since,
            sent=totals.get("sent", 0),
            bounced=totals.get("bounced", 0),
            failed=totals.get("failed", 0),
            rejected=totals.get(REJECTED, 0),
            rejected_by_reason={
                name.removeprefix(prefix): count
                for name, count in sorted(totals.items())
                if name.startswith(prefix)
            },
            denied=totals.get("denied", 0),
            tripped=totals.get("tripped", 0),
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["since"] = self.since.isoformat().replace("+00:00", "Z")
        return out


async def last_day(client: aioredis.Redis, keys: Keys, agents: Sequence[str]) -> list[AgentActivity]:
    """The last 24 hours of each of `agents`, in their order: two round trips, whatever the count."""
    async with translated():
        seconds, micros = await client.time()
        hour = (seconds * 1000 + micros // 1000) // ACTIVITY_BUCKET_MS
        hours = range(hour - HOURS + 1, hour + 1)
        async with client.pipeline(transaction=False) as pipe:
            for agent in agents:
                for each in hours:
                    pipe.hgetall(keys.activity(agent, each))
            found: list[dict[str, str]] = await pipe.execute()
    since = datetime.fromtimestamp(hours[0] * ACTIVITY_BUCKET_MS / 1000, UTC)
    return [
        AgentActivity.from_buckets(agent, since, found[i * HOURS : (i + 1) * HOURS])
        for i, agent in enumerate(agents)
    ]


@dataclass(frozen=True)
class AgentReport:
    """One agent as a review sees it: its register entry, what it lacks, what it did."""

    entry: AgentEntry
    gaps: list[str]  # what `sendguard rules check` warns about for it (production agents only)
    activity: AgentActivity

    def to_dict(self) -> dict[str, Any]:
        return {**self.entry.model_dump(mode="json"), "gaps": self.gaps, "activity": self.activity.to_dict()}


async def agents_report(
    client: aioredis.Redis, keys: Keys, rules: Rules, only: str | None = None
) -> list[AgentReport]:
    """Every agent of the register in force (or the one named `only`), in the file's order.

    An unknown `only` gives an empty list; the caller says so.
    """
    entries = [agent for agent in rules.file.agent if only is None or agent.name == only]
    activities = await last_day(client, keys, [agent.name for agent in entries])
    return [
        AgentReport(
            entry,
            [problem for _, problem in governance_gaps(entry)] if entry.environment == "production" else [],
            activity,
        )
        for entry, activity in zip(entries, activities, strict=True)
    ]
