"""Rules on relay replies: a provider saying "slow down" or "go away" defers, slows or stops the
scope of the message it said it about (the idea behind KumoMTA's traffic-shaping automation).

A rule's defer or slow is a hold on the scope in Redis that the throttle reservation reads, so
every daemon honours it and a message waits exactly until it ends. A trip is safe mode, which a
person resumes. A storm of matching replies acts once per rule and scope value in each window (the
rule's duration; for a trip, as long as the trip lasts): one audit entry, one count, one notice.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime

import redis.asyncio as aioredis

from sendguard.errors import RelayReply, StoreError
from sendguard.feedback.safe_mode import SafeMode
from sendguard.governance.audit import AuditLog
from sendguard.governance.audit import entry as audit_entry
from sendguard.metrics import Metrics
from sendguard.notify import Notifier
from sendguard.record import MessageRecord
from sendguard.rules import REPLY_TEXT_SCANNED, CurrentRules, ReplyAction, ReplyRule, ScopeKind
from sendguard.scopes import scope_name, scope_values
from sendguard.state import scripts
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated

log = logging.getLogger("sendguard.delivery.reply_rules")

# RFC 3463: class.subject.detail at the start of the reply text ("4.7.28 Gmail has detected ...").
_ENHANCED = re.compile(r"\s*([245]\.[0-9]{1,3}\.[0-9]{1,3})\b")
_QUOTED_REPLY = 500  # characters of the reply kept in the audit entry and the notice


def enhanced_code(text: str) -> str | None:
    """The enhanced status code a reply's text starts with, if it has one."""
    found = _ENHANCED.match(text)
    return found.group(1) if found else None


def matches(rule: ReplyRule, code: int, text: str) -> bool:
    """Whether a reply matches every part the rule gives: code (or class), enhanced code (whole
    parts from the left: 4.7 matches 4.7.28, 4.7.2 does not), and text pattern (anywhere in the
    first REPLY_TEXT_SCANNED characters, case ignored)."""
    if rule.code is not None:
        reply_code = str(code)
        if rule.code != reply_code and not (rule.code.endswith("xx") and rule.code[0] == reply_code[0]):
            return False
    if rule.enhanced is not None:
        enhanced = enhanced_code(text)
        wanted = rule.enhanced.split(".")
        if enhanced is None or enhanced.split(".")[: len(wanted)] != wanted:
            return False
    return rule.text is None or re.search(rule.text, text[:REPLY_TEXT_SCANNED], re.IGNORECASE) is not None


def held_kinds(rules: Iterable[ReplyRule]) -> list[ScopeKind]:
    """The scope kinds some rule may defer or slow: the holds a reservation has to read."""
    return list(dict.fromkeys(rule.scope for rule in rules if rule.action is not ReplyAction.TRIP))


class ReplyRules:
    """Applies the rules in force to each refusal the relay answers with."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        safe_mode: SafeMode,
        audit: AuditLog,
        notifier: Notifier,
        rules: CurrentRules,
        metrics: Metrics,
    ) -> None:
        self._apply = scripts.register(client, keys, "reply_rule_apply")
        self._safe_mode = safe_mode
        self._audit = audit
        self._notifier = notifier
        self._rules = rules
        self._metrics = metrics
        metrics.start_at_zero(metrics.reply_rule_actions, ReplyAction)

    async def observe(self, record: MessageRecord, reply: RelayReply) -> None:
        """Apply every rule the reply matches to the scope of `record` that rule names.

        A Redis failure is logged, not raised: the delivery's outcome is already recorded, and the
        next matching reply applies the rule.
        """
        values = scope_values(record)
        for number, rule in enumerate(self._rules.now.file.reply_rule, start=1):
            value = values.get(rule.scope)
            if value is None or not matches(rule, reply.code, reply.text):
                continue
            scope = scope_name(rule.scope, value)
            try:
                await self._act(number, rule, scope, reply)
            except StoreError as exc:
                log.warning("reply rule #%d not applied to %s: %s", number, scope, exc)

    async def _act(self, number: int, rule: ReplyRule, scope: str, reply: RelayReply) -> None:
        quoted = f"{reply.code} {reply.text}"[:_QUOTED_REPLY]
        fields = {
            "rule": number,
            "name": rule.label,
            "action": rule.action.value,
            "scope": scope,
            "reply": quoted,
        }
        if rule.action is ReplyAction.TRIP:
            reason = f"reply rule #{number} ({rule.label}) matched the relay's reply: {quoted}"
            _, created = await self._safe_mode.trip(scope, "reply_rule", "sendguard", reason)
            if created:  # the trip's own notice tells people; its entry is safe_mode.tripped
                await self._audit.append("reply_rule.applied", "sendguard", fields)
                self._metrics.reply_rule_actions.labels(rule.action.value).inc()
            return
        assert rule.duration is not None
        trail = audit_entry("reply_rule.applied", "sendguard", {**fields, "outcome": "@"})
        slow = (rule.limit or 0, int((rule.per or 0) * 1000))
        async with translated():
            created, ends = await self._apply(
                args=[rule.identity, scope, rule.action.value, int(rule.duration * 1000), *slow, trail]
            )
        if not created:
            return
        self._metrics.reply_rule_actions.labels(rule.action.value).inc()
        until = datetime.fromtimestamp(int(ends) / 1000, UTC).isoformat(timespec="seconds")
        what = "deferred" if rule.action is ReplyAction.DEFER else f"slowed to {rule.limit} per {rule.per:g}s"
        text = f"sendguard: {scope} {what} until {until} by reply rule #{number} ({rule.label}): {quoted}"
        log.warning(text, extra={"scope": scope})
        self._notifier.post(text, {"event": "reply_rule", "until": int(ends), **fields})
