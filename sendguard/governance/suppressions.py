"""The suppression list: addresses and whole domains that must never be mailed again.

Admission checks it atomically with the write (`store.py`); this module maintains it, and records
in the audit trail every change a person makes.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from sendguard.errors import InvalidValue
from sendguard.governance.audit import AuditLog, canonical_hash
from sendguard.model import normal_address
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated


def split_entries(entries: Iterable[str]) -> tuple[list[str], list[str]]:
    """Normalise entries into (addresses, domains); InvalidValue names the first bad one.

    Addresses are stored as admission normalises recipients, domains in their ASCII form.
    """
    addresses, domains = [], []
    for raw in entries:
        entry = raw.strip()
        try:
            normal = normal_address(entry if "@" in entry else f"x@{entry}")
        except ValueError as exc:
            raise InvalidValue("entries", f"{raw!r} is not an address or domain: {exc}") from exc
        if "@" in entry:
            addresses.append(normal.address)
        else:
            domains.append(normal.ascii_domain)
    return addresses, domains


class Suppressions:
    """Add, lift and list suppressions."""

    def __init__(self, client: aioredis.Redis, keys: Keys, audit: AuditLog) -> None:
        self._redis = client
        self._keys = keys
        self._audit = audit

    async def suppress(self, entries: list[str], actor: str) -> tuple[list[str], list[str]]:
        """Suppress what a person listed, and record it; the (addresses, domains) it came to, sorted."""
        addresses, domains = split_entries(entries)
        added = await self.add(addresses, domains)
        listed = sorted(addresses) + sorted(domains)
        await self._audit.append(
            "suppression.added",
            actor,
            # Up to 100,000 entries at once: their count and a hash, and the first few to read.
            {"new": added, "entries": len(listed), "sha256": canonical_hash(listed), "first": listed[:20]},
        )
        return sorted(addresses), sorted(domains)

    async def lift(self, entry: str, actor: str) -> bool:
        """Lift one suppression a person names, and record it; False if it was not there."""
        if not await self._update("SREM", *split_entries([entry])):
            return False
        await self._audit.append("suppression.lifted", actor, {"entry": entry})
        return True

    async def add(self, addresses: list[str], domains: list[str]) -> int:
        """Suppress; returns how many were new. Not recorded here: the caller's own entry says why
        (feedback's event entries name the address they suppressed)."""
        return await self._update("SADD", addresses, domains)

    async def _update(self, command: str, addresses: list[str], domains: list[str]) -> int:
        sets = ((self._keys.suppressed_addresses, addresses), (self._keys.suppressed_domains, domains))
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            for key, members in sets:
                if members:
                    pipe.execute_command(command, key, *members)
            return sum(await pipe.execute())

    async def list(self) -> tuple[list[str], list[str]]:
        async with translated(), self._redis.pipeline(transaction=False) as pipe:
            pipe.smembers(self._keys.suppressed_addresses)
            pipe.smembers(self._keys.suppressed_domains)
            addresses, domains = await pipe.execute()
        return sorted(addresses), sorted(domains)
