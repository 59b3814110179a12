"""The admission decision for one submission: who may send it, which checks it fails, where it waits.

Form was checked by the API model; here policy decides, and every decision is recorded with an
id, a status and reason codes, rejections included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from sendguard import metrics
from sendguard.ingress import Ingress, Reason
from sendguard.messages import MessageIn, message_id_header, new_message_id, public_fields
from sendguard.rules import AgentEntry, Rules
from sendguard.store import Admission, Status, Store, now_ms


class Forbidden(Exception):
    """The agent may not do this at all (403), as opposed to a rejected message (201)."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.detail)
        self.reason = reason


class Gateway:
    """Runs the checks and admits a submission into the durable store."""

    def __init__(self, store: Store, ingress: Ingress, retry_base: float, wake: Callable[[], None]) -> None:
        self._store = store
        self._ingress = ingress
        self._retry_base_ms = int(retry_base * 1000)
        self._wake = wake

    async def submit(self, agent_name: str, payload: MessageIn, rules: Rules) -> Admission:
        started = time.perf_counter()
        agent = self.authorize(agent_name, payload, rules)
        recipient = await self._ingress.check(payload.to, rules)
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
            "headers": json.dumps(payload.headers),
            "dns_pending": "1" if status is Status.DEFERRED else "0",
            "dns_checks": "1" if status is Status.DEFERRED else "0",
            "rules_version": rules.version,
            "message_id_header": message_id_header(message_id, fields["from_addr"]),
        }
        admission = await self._store.admit(
            message_id=message_id,
            agent=agent.name,
            address=recipient.address,
            domain=recipient.domain,
            status=status,
            reasons=recipient.reasons,
            due_ms=due,
            cooldown_ms=int(rules.file.ingress.recipient_cooldown * 1000),
            idempotency_key=payload.idempotency_key,
            fields=fields,
        )
        if not admission.existing:
            first = admission.reasons[0]["code"] if admission.reasons else "none"
            metrics.SUBMISSIONS.labels(admission.status.value, first).inc()
            if admission.status is not Status.REJECTED:
                self._wake()
        metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        return admission

    @staticmethod
    def authorize(agent_name: str, payload: MessageIn, rules: Rules) -> AgentEntry:
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
