"""The token store and the audit trail of a deployment, built in one place for the daemon and the CLI.

`parts.build` makes them along with every other part; `sendguard token` and `sendguard audit` need
only these two, and importing the whole runtime (delivery, DNS, HTTP) to get them cost each call
twice the CPU of the command itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from sendguard.config import Settings
from sendguard.governance.audit import AuditLog
from sendguard.governance.tokens import Tokens
from sendguard.state.keys import Keys


@dataclass(frozen=True)
class Records:
    """The deployment's keys, audit trail and token store, on one Redis client."""

    redis: aioredis.Redis
    keys: Keys
    audit: AuditLog
    tokens: Tokens


def build_records(settings: Settings, client: aioredis.Redis, anchor: Path | None = None) -> Records:
    """The records on `client` under the deployment's prefix; `anchor` as for `AuditLog`.

    Token writes are audited, so the store writes through this audit log.
    """
    keys = Keys(settings.redis_prefix)
    audit = AuditLog(client, keys, anchor)
    return Records(redis=client, keys=keys, audit=audit, tokens=Tokens(client, keys, audit))
