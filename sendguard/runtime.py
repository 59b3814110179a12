"""Everything a running daemon shares between its API and its delivery loop."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from sendguard.approvals import Approvals
from sendguard.audit import AuditLog
from sendguard.batches import Batches
from sendguard.config import Settings
from sendguard.feedback import Feedback
from sendguard.gateway import Gateway
from sendguard.inbox import Inbox
from sendguard.rules import Rules, load_rules
from sendguard.safemode import SafeMode
from sendguard.store import Store
from sendguard.suppression import Suppressions
from sendguard.tokens import Tokens
from sendguard.unsubscribe import Unsubscribe


@dataclass
class Runtime:
    """The daemon's parts; `rules` is replaced whole when the rules change, never edited."""

    settings: Settings
    redis: aioredis.Redis
    store: Store
    suppressions: Suppressions
    tokens: Tokens
    gateway: Gateway
    batches: Batches
    safe_mode: SafeMode
    approvals: Approvals
    audit: AuditLog
    feedback: Feedback
    inbox: Inbox
    unsubscribe: Unsubscribe | None
    rules: Rules

    def reload_rules(self) -> Rules:
        """Load the rules file again and switch to it; on any fault the running rules stay.

        Returns the rules that were running; ConfigError names the bad key.
        """
        previous = self.rules
        self.rules = load_rules(previous.path)
        return previous
