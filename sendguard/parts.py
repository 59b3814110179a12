"""Everything a running daemon shares between its API and its delivery loop."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from sendguard.config import Settings
from sendguard.errors import ConfigError
from sendguard.feedback.apply import Feedback
from sendguard.feedback.receive import Inbox
from sendguard.feedback.safe_mode import SafeMode
from sendguard.feedback.unsubscribe import Unsubscribe
from sendguard.governance.approvals import Approvals
from sendguard.governance.audit import AuditLog
from sendguard.governance.recall import Recall
from sendguard.governance.suppressions import Suppressions
from sendguard.governance.tokens import Tokens
from sendguard.intake.admission import Admissions
from sendguard.rules import Rules, load_rules
from sendguard.state.redis_connection import translated
from sendguard.state.store import Store

log = logging.getLogger("sendguard.rules")


@dataclass
class Runtime:
    """The daemon's parts; `rules` is replaced whole when the rules change, never edited."""

    settings: Settings
    redis: aioredis.Redis
    store: Store
    suppressions: Suppressions
    tokens: Tokens
    admissions: Admissions
    safe_mode: SafeMode
    approvals: Approvals
    recall: Recall
    audit: AuditLog
    feedback: Feedback
    inbox: Inbox
    unsubscribe: Unsubscribe | None
    rules: Rules

    reloads_seen: int | None = None  # the last reload announcement this daemon followed

    async def reload(self, actor: str, *, announce: bool = True) -> Rules:
        """Load the rules file again, switch to it and record it; returns the rules that ran.

        A file that does not validate is recorded as refused and raised as ConfigError naming
        the bad key; the running rules stay. A reload is announced in Redis, and every other
        daemon on it then reloads its own file (`follow_reloads`): one request reloads them all.
        """
        running = self.rules
        try:
            self.rules = load_rules(running.path)
        except ConfigError as exc:
            log.error("rules not reloaded, still running version %s: %s", running.version, exc)
            await self.audit.append("rules.refused", actor, {"running": running.version, "problem": str(exc)})
            raise
        log.warning("rules reloaded: version %s (was %s)", self.rules.version, running.version)
        await self.audit.append(
            "rules.reloaded",
            actor,
            {
                "rules_version": self.rules.version,
                "previous_version": running.version,
                "path": str(running.path),
            },
        )
        if announce:
            async with translated():
                self.reloads_seen = int(await self.redis.incr(self.store.keys.rules_reloads))
        return running

    async def follow_reloads(self) -> None:
        """Reload when another daemon has reloaded since this one last looked."""
        async with translated():
            announced = int(await self.redis.get(self.store.keys.rules_reloads) or 0)
        if self.reloads_seen is None:  # just started: the rules were loaded fresh
            self.reloads_seen = announced
        elif announced > self.reloads_seen:
            self.reloads_seen = announced
            with contextlib.suppress(ConfigError):  # recorded as refused; the running rules stay
                await self.reload("sendguard (following a reload on another daemon)", announce=False)
