"""What a reply stops beyond its own mailbox, and what an out-of-office reply moves.

With `[reply_stops] by = "domain"`, a reply from anyone at a company stops the agent whose message
was answered from mailing that company's other contacts: its waiting messages to the domain are
cancelled (`company_replied`) and new ones refused until the cooldown ends. Free-mail domains
(the ingress list) are never one company. The stop is a hash per agent, domain -> until (ms), read
once per submission; the cancel walks the waiting messages (as a recall does) rather than keeping
a per-(agent, domain) index in every admission and transition: replies are rare next to sends,
and the walk costs one script per 500 waiting messages.

An out-of-office reply that names a return date moves the agent's waiting follow-ups to that
recipient to 09:00 UTC on that day (not cancelled: the person is coming back), audited.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

import redis.asyncio as aioredis

from sendguard.governance.audit import AuditLog
from sendguard.model import Reason, Status
from sendguard.record import MessageRecord
from sendguard.rules import CurrentRules
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated
from sendguard.state.store import Store

COMPANY_REPLIED = "company_replied"
# The hour of the return day follow-ups are moved to, in UTC: the recipient's time zone is not
# known, and 09:00 UTC is the working morning of Europe and the early one of the Americas' east.
RETURN_HOUR = time(9, 0, tzinfo=UTC)


def company_refusal(domain: str, agent: str, until_ms: int) -> Reason:
    """Why a recipient at `domain` is refused: someone there replied to `agent`, stopped until then."""
    ends = datetime.fromtimestamp(until_ms / 1000, UTC).isoformat(timespec="minutes")
    return Reason(
        COMPANY_REPLIED, f"someone at {domain} replied to agent {agent}; no automated mail there until {ends}"
    )


class ReplyStops:
    """Company-wide reply stops and out-of-office return dates for one deployment."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, store: Store, audit: AuditLog, rules: CurrentRules
    ) -> None:
        self._redis = client
        self._keys = keys
        self._store = store
        self._audit = audit
        self._rules = rules

    def company(self, domain: str) -> str | None:
        """The domain as one company, if the rules stop by domain and it is not a free-mail one."""
        rules = self._rules.now
        domain = domain.lower()
        if rules.file.reply_stops.by != "domain" or not domain or domain in rules.free_domains:
            return None
        return domain

    async def replied(self, record: MessageRecord, source: str) -> int:
        """A reply to `record` arrived: stop its agent mailing the company, cancel what waits; how many."""
        domain = self.company(record.to_domain)
        if domain is None:
            return 0
        cooldown_ms = int(self._rules.now.file.reply_stops.cooldown * 1000)
        key = self._keys.company_replied(record.agent)
        now = _now_ms()
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(key, domain)
            pipe.hset(key, domain, now + cooldown_ms)
            pipe.pexpire(key, cooldown_ms)  # every entry ends within the latest cooldown
            stopped_until, *_ = await pipe.execute()
        cancelled = 0
        # A stop already in force has refused the company's new messages since it began, which
        # recalled those waiting then: a later reply only extends it. Recalling walks the whole
        # queue, and one recipient could reply to each of its messages.
        if stopped_until is None or int(stopped_until) <= now:
            counts = await self._store.recall(
                {"agent": record.agent, "to_domain": domain},
                f"someone at {domain} replied to {record.agent}",
                cause=COMPANY_REPLIED,
            )
            cancelled = sum(counts.values())
        await self._audit.append(
            "reply_stop.company",
            source,
            {"agent": record.agent, "domain": domain, "message_id": record.id, "cancelled": cancelled},
        )
        return cancelled

    def by_domain(self) -> bool:
        """Whether a reply stops its agent mailing the whole company (`[reply_stops] by`)."""
        return self._rules.now.file.reply_stops.by == "domain"

    async def refusals(self, agent: str, domains: set[str]) -> dict[str, Reason]:
        """domain -> the reason it is refused, for those of `domains` a reply stopped `agent` mailing."""
        if not self.by_domain() or not domains:
            return {}
        ordered = sorted(domains)
        async with translated():
            found: list[Any] = await self._redis.hmget(self._keys.company_replied(agent), ordered)
        now_ms = _now_ms()
        return {
            domain: company_refusal(domain, agent, int(until))
            for domain, until in zip(ordered, found, strict=True)
            if until is not None and int(until) > now_ms
        }

    async def away(self, record: MessageRecord, returning: date, source: str) -> int:
        """The recipient of `record` is away until `returning`: its agent's waiting follow-ups to them
        due before RETURN_HOUR that day are due then instead; how many moved."""
        due = datetime.combine(returning, RETURN_HOUR)
        due_ms = int(due.timestamp() * 1000)
        moved = 0
        ids = await self._store.recipient_messages(record.to)
        async with translated(), self._redis.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.zscore(self._keys.due, message_id)
            scheduled: list[float | None] = await pipe.execute() if ids else []
        for follow_up, when in zip(await self._store.records(ids, ("agent",)), scheduled, strict=True):
            if follow_up is None or follow_up.agent != record.agent or (when or 0) >= due_ms:
                continue  # another agent's, or already due after the return: never brought forward
            delay_ms = max(0, due_ms - _now_ms())
            moved += bool(
                await self._store.transition(
                    follow_up.id,
                    to=None,
                    cause="recipient_away",
                    detail=f"the recipient is out of the office until {returning.isoformat()}",
                    allowed_from=(Status.QUEUED, Status.DEFERRED),
                    delay_ms=delay_ms,
                )
            )
        await self._audit.append(
            "reply_stop.away",
            source,
            {
                "agent": record.agent,
                "message_id": record.id,
                "returning": returning.isoformat(),
                "moved": moved,
            },
        )
        return moved


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)
