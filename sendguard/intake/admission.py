"""The admission decision for one submission: who may send it, which checks it fails, where it waits.

Form was checked by the API model; here policy decides, and every decision is recorded with an
id, a status and reason codes, rejections included.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sendguard.feedback.counters import Signal
from sendguard.feedback.safe_mode import SafeMode
from sendguard.governance.approvals import Approvals
from sendguard.governance.audit import AuditLog, content_hash
from sendguard.governance.audit import entry as audit_entry
from sendguard.governance.tokens import Principal
from sendguard.intake.boundaries import check_content
from sendguard.intake.recipients import Ingress, Recipient
from sendguard.metrics import Metrics
from sendguard.model import Reason, Status, now_ms
from sendguard.rules import AgentEntry, Rules, ScopeKind
from sendguard.scopes import message_scopes, scope_name, scope_values
from sendguard.state.store import Admission, Candidate, Store
from sendguard.submission import Content, MessageIn, message_id_header, new_message_id, public_fields


class Forbidden(Exception):
    """The agent may not do this at all (403), as opposed to a rejected message (201)."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.detail)
        self.reason = reason


class Gateway:
    """Runs the checks and admits a submission into the durable store."""

    def __init__(
        self,
        store: Store,
        ingress: Ingress,
        safe_mode: SafeMode,
        approvals: Approvals,
        audit: AuditLog,
        retry_base: float,
        wake: Callable[[], None],
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._ingress = ingress
        self._safe_mode = safe_mode
        self._approvals = approvals
        self._audit = audit
        self._retry_base_ms = int(retry_base * 1000)
        self._wake = wake

    async def submit(self, requester: Principal, payload: MessageIn, rules: Rules) -> Admission:
        started = time.perf_counter()
        agent = await self.authorized(requester, payload, rules)
        recipient = await self._ingress.check(payload.to, rules)
        recipient.reasons[:0] = self.boundaries(agent, payload, rules)
        candidate = self.candidate(agent, payload, recipient, rules)
        routing = None
        if candidate.status is not Status.REJECTED:
            routing = await self._approvals.route(agent, payload, 1, rules, requester)
        sealed = self.sealed(candidate, routing.approval_id if routing else "")
        [admission] = await self._store.admit([sealed])
        admission = self.settled(admission)
        if not admission.existing and admission.status is Status.REJECTED:
            await self.denied(agent.name)
        if admission.status is Status.PENDING_APPROVAL and routing is not None:
            waiting = {
                "code": "approval_required",
                "detail": f"tier {routing.tier} ({routing.why}): "
                f"waits for approval request {routing.approval_id}",
            }
            admission = dataclasses.replace(admission, reasons=[*admission.reasons, waiting])
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        return admission

    async def authorized(self, requester: Principal, payload: Content, rules: Rules) -> AgentEntry:
        """The requester's register entry; a refusal is counted and recorded before it is raised."""
        try:
            return self.authorize(requester.name, payload, rules)
        except Forbidden as refused:
            await self.denied(requester.name)
            await self._audit.append(
                "submission.refused",
                f"agent:{requester.name}",
                {
                    "agent": requester.name,
                    "agent_version": payload.agent_version,
                    "run_id": payload.run_id,
                    "from": payload.sender.address,
                    "segment": payload.segment,
                    "reasons": [refused.reason.code],
                    "rules_version": rules.version,
                },
            )
            raise

    def candidate(
        self,
        agent: AgentEntry,
        payload: MessageIn,
        recipient: Recipient,
        rules: Rules,
        *,
        batch: str = "",
        idempotency_key: str | None = None,
    ) -> Candidate:
        """The decision on one recipient, before suppression, cooldown, approval and safe mode."""
        if recipient.reasons:
            status = Status.REJECTED
        elif recipient.dns_temporary:
            status = Status.DEFERRED
            recipient.reasons.append(Reason("dns_temporary", "DNS failed temporarily; will check again"))
        else:
            status = Status.QUEUED
        now = now_ms()
        due = now
        if payload.send_at is not None:
            due = max(now, int(payload.send_at.timestamp() * 1000))
        if status is Status.DEFERRED:
            due = max(due, now + self._retry_base_ms)
        message_id = new_message_id()
        fields = public_fields(payload)
        fields |= {
            "agent": agent.name,
            "to": recipient.address,
            "to_domain": recipient.domain,
            "batch": batch,
            "headers": json.dumps(payload.headers),
            "dns_pending": "1" if status is Status.DEFERRED else "0",
            "dns_checks": "1" if status is Status.DEFERRED else "0",
            "rules_version": rules.version,
            "not_before": str(due),
            "message_id_header": message_id_header(message_id, fields["from_addr"]),
        }
        return Candidate(
            message_id=message_id,
            agent=agent.name,
            address=recipient.address,
            domain=recipient.domain,
            status=status,
            reasons=recipient.reasons,
            due_ms=due,
            cooldown_ms=int(rules.file.ingress.recipient_cooldown * 1000),
            idempotency_key=idempotency_key or payload.idempotency_key,
            scopes=message_scopes(scope_values(fields)),
            fields=fields,
        )

    @staticmethod
    def sealed(candidate: Candidate, approval: str) -> Candidate:
        """The candidate with the request it waits for and its audit entry, ready to admit."""
        fields = candidate.fields
        trail = audit_entry(
            "submission.decided",
            f"agent:{candidate.agent}",
            {
                "message_id": candidate.message_id,
                "agent": candidate.agent,
                "agent_version": fields["agent_version"],
                "run_id": fields["run_id"] or None,
                "batch": fields["batch"] or None,
                "from": fields["from_addr"],
                "to": candidate.address,
                "segment": fields["segment"] or None,
                "campaign": fields["campaign"] or None,
                "approval_id": approval or None,
                "rules_version": fields["rules_version"],
                "content_hash": content_hash(fields["subject"], fields["text"], fields["html"]),
                "outcome": "@",  # the admission script writes status, reasons and held_by here
            },
        )
        return dataclasses.replace(candidate, approval=approval, audit_entry=trail)

    def settled(self, admission: Admission) -> Admission:
        """Count a new decision, wake the deliverer for it, and say why a held message waits."""
        if not admission.existing:
            first = admission.reasons[0]["code"] if admission.reasons else "none"
            self._metrics.submissions.labels(admission.status.value, first).inc()
            if admission.status in (Status.QUEUED, Status.DEFERRED):
                self._wake()
        if admission.held_by:
            held = {
                "code": "safe_mode",
                "detail": f"scope {admission.held_by} is in safe mode: "
                "accepted and held until a person resumes it",
            }
            admission = dataclasses.replace(admission, reasons=[*admission.reasons, held])
        return admission

    async def denied(self, agent: str) -> None:
        """A policy refusal counts against the agent: many in a row look like a hijacked agent."""
        await self._safe_mode.observe([scope_name(ScopeKind.AGENT, agent)], [Signal.DENIAL])

    @staticmethod
    def boundaries(agent: AgentEntry, payload: Content, rules: Rules) -> list[Reason]:
        """What this agent may not send whoever the recipient is: its version, the content, stale data."""
        reasons = []
        if not agent.may_run_version(payload.agent_version):
            reasons.append(
                Reason(
                    "agent_version_not_allowed",
                    f"agent {agent.name!r} may not send as version {payload.agent_version!r}",
                )
            )
        reasons += check_content(payload.subject, payload.text, payload.html)
        if payload.enrichment is not None:
            age = datetime.now(UTC) - payload.enrichment.fetched_at
            limit = rules.file.ingress.max_enrichment_age
            if age.total_seconds() > limit:
                reasons.append(
                    Reason(
                        "stale_enrichment",
                        f"data from {payload.enrichment.source} is {age.days} days old; "
                        f"the limit is {limit / 86400:g} days",
                    )
                )
        return reasons

    @staticmethod
    def authorize(agent_name: str, payload: Content, rules: Rules) -> AgentEntry:
        """The register entry for the agent, if it may use this From address and segment."""
        agent = rules.agent(agent_name)
        if agent is None:
            raise Forbidden(Reason("agent_not_registered", f"agent {agent_name!r} is not in the rules file"))
        if not agent.may_use_inbox(payload.sender.address):
            raise Forbidden(
                Reason(
                    "inbox_not_allowed",
                    f"agent {agent.name!r} may not send from {payload.sender.address}",
                )
            )
        if not agent.may_use_segment(payload.segment):
            raise Forbidden(
                Reason(
                    "segment_not_allowed",
                    f"agent {agent.name!r} may not send to segment {payload.segment!r}",
                )
            )
        return agent
