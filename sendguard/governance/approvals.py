"""Approval tiers: which sends wait for people, and the rules people must follow to release them.

Tier 0 sends go straight to the queue. Tier 1 (an agent registered with `tier = 1`, or a shared
inbox, matched by canonical address) needs one approval per submission, whatever else was
approved. Tier 2, mass sends, needs two approvals from two different people in two different
groups. Mass sends are counted per agent, never per label the agent chooses: from the
`mass_send_threshold`-th accepted recipient within `mass_send_window` (a batch's recipients count
like single messages, at the time they are due) the rest waits for a tier-2 request. A request
releases what its approvers are shown and no more: its messages, plus a headroom of
`mass_send_threshold` more that the agent may send within `mass_send_window` of the approval;
what joins a pending request comes out of that headroom, and beyond it a new request opens.
Nobody approves what their own token submitted, nor gives both approvals. Every decision runs in
one Redis script with its effects and audit entry, so two approvers deciding at once cannot both
be "the second", and a message admitted after its request was decided is settled by the decision.
A new request is announced to the approvers' webhook at once, and again from Redis by the
maintenance sweep until the webhook has taken it (a reply Redis lost, a daemon that died first).
An agent may have at most `max_pending_requests` requests (tier 1 and 2) pending at once: a
submission that would open one more is refused whole (TooManyRequests), checked in the script that
opens it, so one agent (a hijacked one) cannot bury other agents' requests in the approvers' queue.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from sendguard.errors import SendguardError, StoreError
from sendguard.governance.audit import AuditLog
from sendguard.governance.audit import entry as audit_entry
from sendguard.governance.tokens import Principal
from sendguard.model import Reason, Status, iso_ms, now_ms
from sendguard.notify import Notifier
from sendguard.record import MessageRecord
from sendguard.rules import AgentEntry, Rules
from sendguard.state import scripts
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated
from sendguard.state.store import RETENTION_MS, Store
from sendguard.submission import Content

log = logging.getLogger("sendguard.approvals")
# How long past the notifier's whole retry budget a request's announcement may still be marked
# delivered (the mark is one more Redis write) before the sweep posts it again.
_ANNOUNCE_MARGIN = 5.0
# Requests announced again by one sweep at most (approval_announce.lua): the rest wait a sweep.
_ANNOUNCE_BATCH = 20
_TIERS_KEPT = 10_000  # settled requests whose tier is remembered
_INDEXED = 500  # pending requests indexed a script (index_pending)


class ApprovalRefused(SendguardError):
    """A decision the rules do not allow; the message says which rule."""


class TooManyRequests(SendguardError):
    """A submission that would open one more request than its agent may have pending: nothing of
    it was admitted or counted; admission refuses it with `reason` (403)."""

    def __init__(self, agent: str, most: int) -> None:
        self.reason = Reason(
            "too_many_approval_requests",
            f"agent {agent} already has {most} approval requests pending, the most "
            f"[approvals] max_pending_requests allows: people must decide the waiting ones "
            f"(GET /v1/sending-status lists them) before it may open another",
        )
        super().__init__(self.reason.detail)


@dataclass(frozen=True)
class Routing:
    """A submission that must wait for people: the request it waits for, and why."""

    approval_id: str
    tier: int
    why: str


@dataclass(frozen=True)
class Route:
    """Where approval puts a submission's accepted messages: the request they wait for (None: none),
    and the approved tier-2 request whose headroom let them through ('': none), which lets them
    past delivery's mass-send line as its approvers' decision would."""

    waits: Routing | None
    released_by: str = ""


@dataclass(frozen=True)
class MassCount:
    """A mass-send count to make: approval_route's arguments, and the label and reason of the
    tier-2 request it opens if the count passes the threshold."""

    args: list[Any]
    label: str
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
    messages: int = 0  # a tier-2 request: the messages it holds (a batch's, or a run's so far)
    headroom: int = 0  # a tier-2 request: how many more approving it lets through without a new one
    headroom_for: int = 0  # ms after the approval the headroom lasts
    headroom_until: int = 0  # ms: once approved, when the headroom ends

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
            messages=int(record.get("messages") or 0),
            headroom=int(record.get("headroom") or 0),
            headroom_for=int(record.get("headroom_for") or 0),
            headroom_until=int(record.get("headroom_until") or 0),
        )

    @property
    def approvals_needed(self) -> int:
        """One person for tier 1; two, in two groups, for tier 2."""
        return 2 if self.tier >= 2 else 1

    @property
    def approvals_given(self) -> int:
        return sum(1 for decision in self.decisions if decision.get("verdict") == "approve")

    def releases(self) -> str:
        """What deciding a tier-2 request lets through, in the words its approvers read."""
        if self.tier < 2:
            return "approving releases this submission"
        more = f"up to {self.headroom} more messages from {self.agent} through without a new request"
        if self.headroom_until:
            return f"approved: lets {more} until {iso_ms(self.headroom_until)}"
        return (
            f"approving releases the {self.messages} messages it holds and lets {more} "
            f"until {self.headroom_for / 1000:g}s after the approval"
        )


class Approvals:
    """Routes submissions to approval requests and applies people's decisions."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        store: Store,
        audit: AuditLog,
        notifier: Notifier,
        console: str,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._store = store
        self._audit = audit
        self._notifier = notifier
        self._console = console  # where people open the console: the link in a notification
        self._route = scripts.register(client, keys, "approval_route")
        self._decide = scripts.register(client, keys, "approval_decide")
        self._expire = scripts.register(client, keys, "approval_expire")
        self._claim_announcements = scripts.register(client, keys, "approval_announce")
        self._index = scripts.register(client, keys, "approval_index")
        self._open = scripts.register(client, keys, "approval_open")
        # Whether a request is an approved tier-2 one, for those read: a tier never changes, and a
        # request a message was released by stays approved.
        self._tier_two: dict[str, bool] = {}

    async def released_at_tier_two(self, message: MessageRecord) -> bool:
        """Whether a tier-2 approval released `message`: it waited for an approved tier-2 request,
        or one's headroom let it through at admission (`released_by`). Its mass-send line at the
        relay does not hold it, as the approvers decided."""
        if message.released_by:
            return True
        if not message.approval:
            return False
        known = self._tier_two.get(message.approval)
        if known is None:
            async with translated():
                tier, status = await self._redis.hmget(
                    self._keys.approval(message.approval), ["tier", "status"]
                )
            known = tier == "2" and status == "approved"
            if status in ("approved", "denied", "expired"):  # settled: it stays so
                if len(self._tier_two) >= _TIERS_KEPT:
                    self._tier_two.clear()
                self._tier_two[message.approval] = known
        return known

    async def route(
        self,
        agent: AgentEntry,
        content: Content,
        dues: Mapping[int, int],
        rules: Rules,
        requester: Principal,
        batch: str = "",
    ) -> Route:
        """The request some messages (a submission, or a batch's accepted recipients) wait for;
        `dues`: how many of them are due at each time (ms), as `mass_count` takes them.

        Waiting for none is tier 0. The mass-send count comes first: a tier-2 request settles
        everything it holds. Past it (under the threshold, or in an approved request's headroom)
        tier 1 is judged on its own, so no tier-2 approval lets a tier-1 agent or a shared inbox
        through. Raises TooManyRequests when it would open a request past the agent's cap.
        """
        settings = rules.file.approvals
        mass, released_by = await self._mass(agent, dues, rules, requester, batch)
        if mass is not None:
            return Route(mass)
        count = sum(dues.values())
        inbox = content.sender.address
        if agent.tier >= 1 or settings.is_shared(inbox):
            why = f"agent {agent.name} is tier 1" if agent.tier >= 1 else f"{inbox} is a shared inbox"
            label = (
                f"batch {batch} of {count} from {agent.name}" if batch else f"one message from {agent.name}"
            )
            kind = "batch" if batch else "message"
            approval_id = await self.open(Opening(1, kind, label, why, agent.name), requester, rules)
            self._announce(approval_id, 1, label, why, requester.name)
            return Route(Routing(approval_id, 1, why), released_by)
        return Route(None, released_by)

    def counts_in_admission(self, agent: AgentEntry, content: Content, rules: Rules) -> bool:
        """Whether a single message's mass-send count is made by its admission script (see
        `mass_count`): a tier-0 agent from an inbox that is not shared, which no tier-1 request awaits."""
        return agent.tier == 0 and not rules.file.approvals.is_shared(content.sender.address)

    def mass_count(
        self,
        agent: AgentEntry,
        dues: Mapping[int, int],
        rules: Rules,
        requester: Principal,
        batch: str = "",
    ) -> MassCount:
        """approval_route's arguments for counting accepted recipients, and what to say if they
        open or join a tier-2 request. `dues`: how many are due at each time (ms, 0 for now), the
        time they may first go (send_at, send windows), which is when they count."""
        count = sum(dues.values())
        settings = rules.file.approvals
        threshold, window = settings.mass_send_threshold, settings.mass_send_window
        approval_id = secrets.token_hex(8)
        if batch:
            opening = Opening(2, "batch", f"batch {batch} of {count} from {agent.name}", "", agent.name)
        else:
            opening = Opening(2, "run", f"the sends of {agent.name} past the threshold", "", agent.name)
        why = _mass_why(agent, count, rules, batch)
        fields = self._fields(approval_id, opening, requester, rules) | {"why": why}
        args = [
            approval_id,
            count,
            ",".join(f"{due}:{n}" for due, n in dues.items()),
            int(window * 1000),
            threshold,
            threshold,  # the headroom: one more threshold's worth, as a tier-0 agent has
            "0" if batch else "1",
            int(settings.ttl * 1000),
            json.dumps(fields),
            audit_entry(
                "approval.requested",
                requester.actor,
                {"approval_id": approval_id, "tier": 2, "why": why},
            ),
            settings.max_pending_requests,
        ]
        return MassCount(args, opening.label, why)

    def routed(
        self, count: MassCount, state: str, found: str, requester: Principal, agent: AgentEntry, rules: Rules
    ) -> Routing | None:
        """The tier-2 request a mass-send count answered (None: under the threshold, covered by an
        approved request's headroom, or not counted); a new one is announced to the approvers.
        Raises TooManyRequests when the count needed a new request past the agent's cap."""
        if state == "capped":
            raise TooManyRequests(agent.name, rules.file.approvals.max_pending_requests)
        if state not in ("joined", "new"):
            return None
        if state == "new":
            self._announce(found, 2, count.label, count.why, requester.name)
        return Routing(found, 2, count.why)

    async def waited_for(self, approval_id: str) -> Routing | None:
        """The request a message admitted earlier waits for, as its retry answers (None: gone)."""
        request = await self.get(approval_id)
        return Routing(request.id, request.tier, request.why) if request else None

    async def _mass(
        self, agent: AgentEntry, dues: Mapping[int, int], rules: Rules, requester: Principal, batch: str
    ) -> tuple[Routing | None, str]:
        """The tier-2 request the submission waits for, counted in one script (None if it needs
        none), and the approved one whose headroom let it through ('' if none)."""
        counted = self.mass_count(agent, dues, rules, requester, batch)
        k = self._keys
        async with translated():
            state, found = await self._route(
                keys=[k.mass_sends(agent.name), k.mass_request(agent.name)], args=counted.args
            )
        released_by = str(found) if state == "covered" else ""
        return self.routed(counted, str(state), str(found), requester, agent, rules), released_by

    def _announce(self, approval_id: str, tier: int, label: str, why: str, requested_by: str) -> None:
        """Tell the approvers a request is waiting, with a link to its page in the console; its
        record says so once the webhook took it (until then `announce_due` posts it again)."""
        link = f"{self._console}/ui/approvals/{approval_id}"

        async def delivered() -> None:
            try:
                async with translated():
                    await self._redis.hset(self._keys.approval(approval_id), "announced", str(now_ms()))
            except StoreError as exc:
                log.warning(
                    "approval request %s announced but not marked so, to be posted again: %s",
                    approval_id,
                    exc,
                )

        self._notifier.post(
            f"Approval needed (tier {tier}): {label}, asked by {requested_by}. {why}. Review it: {link}",
            {
                "event": "approval_requested",
                "approval_id": approval_id,
                "tier": tier,
                "label": label,
                "why": why,
                "requested_by": requested_by,
                "url": link,
            },
            delivered,
        )

    async def announce_due(self) -> int:
        """Announce again the pending requests the webhook has not taken, claimed once the post
        that should have told the approvers has surely ended (see approval_announce.lua); how many.
        Nothing without a webhook."""
        if not self._notifier.enabled:
            return 0
        lease_ms = int((self._notifier.budget + _ANNOUNCE_MARGIN) * 1000)
        async with translated():
            claimed = await self._claim_announcements(
                keys=[self._keys.approvals_pending], args=[lease_ms, _ANNOUNCE_BATCH]
            )
        for approval_id, tier, label, why, requested_by in claimed:
            log.warning("approval request %s not known to be announced: announcing it again", approval_id)
            self._announce(str(approval_id), int(tier), str(label), str(why), str(requested_by))
        return len(claimed)

    async def open(self, opening: Opening, requester: Principal, rules: Rules) -> str:
        """Open a tier-1 request; messages join it through admission. Raises TooManyRequests when
        its agent has `max_pending_requests` pending already (nothing opened)."""
        approval_id = secrets.token_hex(8)
        settings = rules.file.approvals
        trail = audit_entry(
            "approval.requested",
            requester.actor,
            {"approval_id": approval_id, "tier": opening.tier, "why": opening.why},
        )
        args: list[str | int] = [
            approval_id,
            json.dumps(self._fields(approval_id, opening, requester, rules)),
            int(settings.ttl * 1000),
            settings.max_pending_requests,
            trail,
        ]
        async with translated():
            opened = await self._open(keys=[], args=args)
        if not int(opened):
            raise TooManyRequests(opening.agent, settings.max_pending_requests)
        return approval_id

    @staticmethod
    def _fields(approval_id: str, opening: Opening, requester: Principal, rules: Rules) -> dict[str, str]:
        """A new request's record, but for its times (and a tier-2 request's counts)."""
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
            "rules_version": rules.version,
            "decisions": "[]",
        }

    async def decide(self, approval_id: str, who: Principal, approve: bool, comment: str) -> Request:
        """Record an approver's decision; ApprovalRefused says which rule forbids it."""
        k = self._keys
        verdict = "approve" if approve else "deny"
        trail = audit_entry(
            "approval.decided",
            who.actor,
            {
                "approval_id": approval_id,
                "verdict": verdict,
                "group": who.group,
                "comment": comment,
                "outcome": "@",  # the script writes the request's new status here
            },
        )
        async with translated():
            status, problem = await self._decide(
                keys=[k.approval(approval_id), k.approvals_pending, k.approval_messages(approval_id)],
                args=[approval_id, verdict, who.name, who.group, who.token_id, comment, RETENTION_MS, trail],
            )
        if status == "refused":
            raise ApprovalRefused(str(problem))
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
            trail = audit_entry("approval.expired", "sendguard", {"approval_id": approval_id})
            async with translated():
                expired += int(
                    await self._expire(
                        keys=[k.approval(approval_id), k.approvals_pending, k.approval_messages(approval_id)],
                        args=[approval_id, RETENTION_MS, trail],
                    )
                )
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

    async def index_pending(self) -> int:
        """Index every pending request under its agent, as opening one does; how many were not yet.
        For requests a version before the per-agent index opened: unindexed, they counted toward no
        agent's `max_pending_requests` and showed in no sending status. Run at a daemon's start."""
        added, start = 0, 0
        while True:
            async with translated():
                ids = await self._redis.zrange(self._keys.approvals_pending, start, start + _INDEXED - 1)
                if ids:
                    added += int(await self._index(keys=[], args=[str(approval_id) for approval_id in ids]))
            if len(ids) < _INDEXED:
                return added
            start += _INDEXED

    async def pending_of(self, agent: str) -> list[Request]:
        """The agent's own pending requests, soonest to expire first, from its own index (at most
        `max_pending_requests`, and any past their time the sweep has not expired yet): however
        many other agents have pending, none of its own is left out."""
        async with translated():
            ids = await self._redis.zrange(self._keys.agent_approvals(agent), 0, -1)
        found = await self._requests([str(approval_id) for approval_id in ids])
        return [r for r in found if r.status == "pending"]

    async def list(self, status: str | None, limit: int = 200) -> list[Request]:
        k = self._keys
        async with translated():
            if status == "pending":
                ids = await self._redis.zrange(k.approvals_pending, 0, limit - 1)
            else:
                ids = await self._redis.zrevrange(k.approvals, 0, limit * 5 - 1)
        found = await self._requests([str(approval_id) for approval_id in ids])
        return [r for r in found if status is None or r.status == status][:limit]

    async def first_message(self, approval_id: str) -> MessageRecord | None:
        """The request's first message (by id, as the samples are ordered), with its content."""
        async with translated():
            ids = sorted(map(str, await self._redis.smembers(self._keys.approval_messages(approval_id))))
        wanted = ("agent", "campaign", "segment", "subject", "text", "html", "rules_version")
        return (await self._store.records(ids[:1], wanted))[0] if ids else None

    async def sizes(self, requests: Sequence[Request]) -> dict[str, int]:
        """How many messages each request holds, in one round trip (a queue page, not its contents)."""
        async with translated(), self._redis.pipeline(transaction=False) as pipe:
            for request in requests:
                pipe.scard(self._keys.approval_messages(request.id))
            counts = await pipe.execute()
        return {request.id: int(count) for request, count in zip(requests, counts, strict=True)}

    async def message_html(self, approval_id: str, message_id: str) -> str:
        """The HTML part of one of the request's messages ("" if it has none or is not the request's):
        what the console frames, read alone, not with the request's whole contents."""
        async with translated():
            held = await self._redis.sismember(self._keys.approval_messages(approval_id), message_id)
        if not held:
            return ""
        [record] = await self._store.records([message_id], ("html",))
        return record.html if record else ""

    async def last_approved_like(
        self, request: Request, first: MessageRecord, looked_at: int = 50
    ) -> tuple[Request, MessageRecord] | None:
        """The latest approved request before `request`, of the same agent, whose first message has
        the same campaign as `first` (the same segment when `first` has no campaign): what the
        console compares a request with. None: the first send of its kind still on record."""
        for earlier in await self.list("approved", limit=looked_at):
            if earlier.agent != request.agent or earlier.created >= request.created:
                continue
            found = await self.first_message(earlier.id)
            if found is None:
                continue
            same = found.campaign == first.campaign if first.campaign else found.segment == first.segment
            if same:
                return earlier, found
        return None

    async def contents(self, approval_id: str, samples: int = 3) -> dict[str, Any]:
        """What exactly will be sent: counts, breakdowns and a few messages as they will read."""
        async with translated():
            ids = sorted(map(str, await self._redis.smembers(self._keys.approval_messages(approval_id))))
        counted = ("to_domain", "segment", "agent", "agent_version", "rules_version")
        records = await self._store.records(ids, counted)
        # Only the samples' content: a mass batch has thousands of bodies nobody reads here.
        shown = await self._store.records(ids[:samples], ("from_addr", "to", "subject", "text", "html"))

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
        return {"id": message_id, "from": None, "to": None, "subject": None, "text": None, "html": None}
    return {
        "id": message_id,
        "from": record.from_addr,
        "to": record.to,
        "subject": record.subject,
        "text": record.text,
        "html": record.html or None,
    }


def _mass_why(agent: AgentEntry, count: int, rules: Rules, batch: str) -> str:
    """Why a mass send waits, for the request and the agent's answer."""
    settings = rules.file.approvals
    within = (
        f"{settings.mass_send_threshold} or more messages from {agent.name} "
        f"within {settings.mass_send_window:g}s"
    )
    if batch:
        return f"mass send: a batch of {count} recipients makes {within}"
    return f"mass send: {within}"
