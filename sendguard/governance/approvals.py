"""Approval tiers: which sends wait for people, and the rules people must follow to release them.

Tier 0 sends go straight to the queue. Tier 1 (an agent registered with `tier = 1`, or a shared
inbox) needs one approval per message. Tier 2, mass sends, needs two approvals from two different
people in two different groups: a batch of at least `mass_send_threshold` recipients, and an
agent's run of single messages to one segment or campaign that reaches the threshold within
`mass_send_window` (from then on, the run's messages wait for one tier-2 request, so splitting a
mass send into singles does not dodge it; an approved run is good for `ttl`). Nobody approves what
their own token submitted, nor gives both approvals. Every decision runs in one Redis script, so
two approvers deciding at once cannot both be "the second".
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from sendguard.errors import SendguardError
from sendguard.governance.audit import AuditLog
from sendguard.governance.tokens import Principal
from sendguard.model import Status, now_ms
from sendguard.record import MessageRecord
from sendguard.rules import AgentEntry, ApprovalRules, Rules, ScopeKind
from sendguard.scopes import scope_name
from sendguard.state import scripts
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated
from sendguard.state.store import Store
from sendguard.submission import Content


class ApprovalRefused(SendguardError):
    """A decision the rules do not allow; the message says which rule."""


@dataclass(frozen=True)
class Routing:
    """A submission that must wait for people: the request it waits for, and why."""

    approval_id: str
    tier: int
    why: str


@dataclass(frozen=True)
class Opening:
    """What a new request is for: its tier and kind, a label and a reason for people, the agent."""

    tier: int
    kind: str
    label: str
    why: str
    agent: str


@dataclass(frozen=True)
class Request:
    id: str
    tier: int
    kind: str
    label: str
    why: str
    agent: str
    requested_by: str
    status: str
    created: int
    expires: int
    rules_version: str
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_record(cls, record: dict[str, str]) -> Request:
        return cls(
            id=record["id"],
            tier=int(record["tier"]),
            kind=record["kind"],
            label=record["label"],
            why=record.get("why", ""),
            agent=record["agent"],
            requested_by=record["requested_by"],
            status=record["status"],
            created=int(record["created"]),
            expires=int(record["expires"]),
            rules_version=record.get("rules_version", ""),
            decisions=json.loads(record.get("decisions") or "[]") or [],
        )


class Approvals:
    """Routes submissions to approval requests and applies people's decisions."""

    def __init__(self, client: aioredis.Redis, keys: Keys, store: Store, audit: AuditLog) -> None:
        self._redis = client
        self._keys = keys
        self._store = store
        self._audit = audit
        self._count_run = scripts.register(client, keys, "approval_count_run")
        self._open_run = scripts.register(client, keys, "approval_open_run")
        self._decide = scripts.register(client, keys, "approval_decide")
        self._expire = scripts.register(client, keys, "approval_expire")

    async def route(
        self,
        agent: AgentEntry,
        content: Content,
        count: int,
        rules: Rules,
        requester: Principal,
        batch: str = "",
    ) -> Routing | None:
        """The request `count` messages (a submission, or a batch's accepted recipients) wait for.

        None is tier 0. A batch's messages count towards the agent's run like single ones, so a
        mass send split into small batches is caught as well.
        """
        settings = rules.file.approvals
        threshold = settings.mass_send_threshold
        scope = run_scope(content)
        in_run = 0
        if scope is not None:
            async with translated():
                in_run = int(
                    await self._count_run(
                        keys=[self._keys.run(agent.name, scope)],
                        args=[now_ms(), int(settings.mass_send_window * 1000), secrets.token_hex(8), count],
                    )
                )
        label = f"batch {batch} of {count} from {agent.name}" if batch else f"one message from {agent.name}"
        if batch and count >= threshold:
            why = f"mass send: a batch of {count} recipients (threshold {threshold})"
            approval_id = await self.open(Opening(2, "batch", label, why, agent.name), requester, rules)
            return Routing(approval_id, 2, why)
        if scope is not None and in_run >= threshold:
            why = (
                f"mass send: {in_run} messages from {agent.name} to {scope} within "
                f"{settings.mass_send_window:g}s (threshold {threshold})"
            )
            # None: an approved run covers it, whatever the agent's own tier.
            return await self._run_request(agent, scope, rules, requester, why)
        inbox = content.sender.address
        if agent.tier >= 1 or inbox in settings.shared_inboxes:
            why = f"agent {agent.name} is tier 1" if agent.tier >= 1 else f"{inbox} is a shared inbox"
            kind = "batch" if batch else "message"
            approval_id = await self.open(Opening(1, kind, label, why, agent.name), requester, rules)
            return Routing(approval_id, 1, why)
        return None

    async def open(self, opening: Opening, requester: Principal, rules: Rules) -> str:
        """Open a request; messages join it through admission."""
        approval_id = secrets.token_hex(8)
        fields = self._fields(approval_id, opening, requester, rules)
        k = self._keys
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.approval(approval_id), items=[part for pair in fields.items() for part in pair])
            pipe.zadd(k.approvals, {approval_id: int(fields["created"])})
            pipe.zadd(k.approvals_pending, {approval_id: int(fields["expires"])})
            self._audit.stage(
                pipe,
                "approval.requested",
                requester.actor,
                {"approval_id": approval_id, "tier": opening.tier, "why": opening.why},
            )
            await pipe.execute()
        return approval_id

    async def _run_request(
        self, agent: AgentEntry, run_scope: str, rules: Rules, requester: Principal, why: str
    ) -> Routing | None:
        k = self._keys
        approval_id = secrets.token_hex(8)
        opening = Opening(2, "run", f"the run of {agent.name} to {run_scope}", why, agent.name)
        fields = self._fields(approval_id, opening, requester, rules)
        ttl_ms = int(rules.file.approvals.ttl * 1000)
        async with translated():
            state, found = await self._open_run(
                keys=[k.run_approval(agent.name, run_scope), k.approvals, k.approvals_pending],
                args=[approval_id, fields["created"], ttl_ms, json.dumps(fields)],
            )
        if state == "covered":
            return None
        if state == "new":
            await self._audit.append(
                "approval.requested", requester.actor, {"approval_id": found, "tier": 2, "why": why}
            )
        return Routing(str(found), 2, why)

    @staticmethod
    def _fields(approval_id: str, opening: Opening, requester: Principal, rules: Rules) -> dict[str, str]:
        created = now_ms()
        return {
            "id": approval_id,
            "tier": str(opening.tier),
            "kind": opening.kind,
            "label": opening.label,
            "why": opening.why,
            "agent": opening.agent,
            "requested_by": requester.name,
            "requested_token": requester.token_id,
            "status": "pending",
            "created": str(created),
            "expires": str(created + int(rules.file.approvals.ttl * 1000)),
            "rules_version": rules.version,
            "decisions": "[]",
        }

    async def decide(
        self, approval_id: str, who: Principal, approve: bool, comment: str, rules: ApprovalRules
    ) -> Request:
        """Record an approver's decision; ApprovalRefused says which rule forbids it."""
        k = self._keys
        verdict = "approve" if approve else "deny"
        async with translated():
            status, problem = await self._decide(
                keys=[k.approval(approval_id), k.approvals_pending],
                args=[
                    approval_id,
                    now_ms(),
                    verdict,
                    who.name,
                    who.group,
                    who.token_id,
                    comment,
                    int(rules.ttl * 1000),
                ],
            )
        if status == "refused":
            raise ApprovalRefused(str(problem))
        await self._audit.append(
            "approval.decided",
            who.actor,
            {
                "approval_id": approval_id,
                "verdict": verdict,
                "group": who.group,
                "comment": comment,
                "status": status,
            },
        )
        if status in ("approved", "denied"):
            detail = f"{status} by {who.name} ({who.group}): {comment}"
            await self._store.settle_approval(approval_id, status, detail)
        request = await self.get(approval_id)
        assert request is not None
        return request

    async def expire_due(self) -> int:
        """Expire pending requests past their time; their messages become `expired`."""
        k = self._keys
        async with translated():
            due = await self._redis.zrangebyscore(k.approvals_pending, "-inf", now_ms(), start=0, num=100)
        expired = 0
        for approval_id in map(str, due):
            async with translated():
                done = await self._expire(
                    keys=[k.approval(approval_id), k.approvals_pending], args=[approval_id, now_ms()]
                )
            if done:
                expired += 1
                await self._store.settle_approval(
                    approval_id, "expired", "no decision within the approval ttl"
                )
                await self._audit.append("approval.expired", "sendguard", {"approval_id": approval_id})
        return expired

    async def _requests(self, ids: list[str]) -> list[Request]:
        """The requests that exist among `ids`, in order, read in one round trip."""
        async with translated(), self._redis.pipeline(transaction=False) as pipe:
            for approval_id in ids:
                pipe.hgetall(self._keys.approval(approval_id))
            records = await pipe.execute()
        return [Request.from_record(record) for record in records if record]

    async def get(self, approval_id: str) -> Request | None:
        found = await self._requests([approval_id])
        return found[0] if found else None

    async def list(self, status: str | None, limit: int = 200) -> list[Request]:
        k = self._keys
        async with translated():
            if status == "pending":
                ids = await self._redis.zrange(k.approvals_pending, 0, limit - 1)
            else:
                ids = await self._redis.zrevrange(k.approvals, 0, limit * 5 - 1)
        found = await self._requests([str(approval_id) for approval_id in ids])
        return [r for r in found if status is None or r.status == status][:limit]

    async def contents(self, approval_id: str, samples: int = 3) -> dict[str, Any]:
        """What exactly will be sent: counts, breakdowns and a few messages as they will read."""
        async with translated():
            ids = sorted(map(str, await self._redis.smembers(self._keys.approval_messages(approval_id))))
        counted = ("to_domain", "segment", "agent", "agent_version", "rules_version")
        records = await self._store.records(ids, counted)
        # Only the samples' content: a mass batch has thousands of bodies nobody reads here.
        shown = await self._store.records(ids[:samples], ("from_addr", "to", "subject", "text"))

        def breakdown(of: Callable[[MessageRecord], str | None]) -> dict[str, int]:
            # A message gone since (past its retention) counts as blank, as a missing field does.
            return dict(Counter((of(record) if record else None) or "" for record in records).most_common())

        return {
            "messages": len(ids),
            "waiting": sum(1 for record in records if record and record.status is Status.PENDING_APPROVAL),
            "by_recipient_domain": breakdown(lambda record: record.to_domain),
            "by_segment": breakdown(lambda record: record.segment),
            "by_agent": breakdown(lambda record: record.agent),
            "by_agent_version": breakdown(lambda record: record.agent_version),
            "by_rules_version": breakdown(lambda record: record.rules_version),
            "samples": [_sample(message_id, record) for message_id, record in zip(ids, shown, strict=False)],
        }


def _sample(message_id: str, record: MessageRecord | None) -> dict[str, str | None]:
    """A message as the approver reads it; all blank if it is gone."""
    if record is None:
        return {"id": message_id, "from": None, "to": None, "subject": None, "text": None}
    return {
        "id": message_id,
        "from": record.from_addr,
        "to": record.to,
        "subject": record.subject,
        "text": record.text,
    }


def run_scope(content: Content) -> str | None:
    """The scope an agent's run is counted in: the segment, else the campaign."""
    if content.segment:
        return scope_name(ScopeKind.SEGMENT, content.segment)
    if content.campaign:
        return scope_name(ScopeKind.CAMPAIGN, content.campaign)
    return None
