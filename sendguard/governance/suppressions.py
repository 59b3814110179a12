"""The suppression list: mailboxes and whole domains that must never be mailed again.

An entry covers a recipient by its address as written, its mailbox (`model.canonical_address`:
case folded, `+tag` taken off) or its domain and every parent domain of it, so `bob+q4@` and
`Bob@` are covered by `bob@`, and `sub.blocked.example` by `blocked.example`. Addresses are kept
as mailboxes, so suppressing `bob+q4@acme.example` covers every tag of `bob@acme.example`.

Admission and the start of every send check the list in the Redis script that decides
(`lua/shared/suppression.lua`). Adding an entry, by any route (a person here, a bounce,
complaint, unsubscribe or reply through feedback/apply.py), cancels at once every message still
waiting for what it covers, whatever its due time: a mailbox's messages through the waiting index,
in the script that adds it; a domain's by a walk of the waiting messages right after.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from sendguard.errors import InvalidValue
from sendguard.governance.audit import AuditLog, canonical_hash
from sendguard.governance.audit import entry as audit_entry
from sendguard.model import canonical_address, normal_address
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated
from sendguard.state.store import Store

CAUSE = "recipient_suppressed"
# Entries added in one script: a few milliseconds of Redis each, however long the list a person sends.
CHUNK = 1000


@dataclass(frozen=True)
class Suppressed:
    """What adding entries did: the entries as kept (sorted), how many were new, what was cancelled."""

    addresses: list[str]
    domains: list[str]
    new: int
    cancelled: int


def split_entries(entries: Iterable[str]) -> tuple[list[str], list[str]]:
    """Normalise entries into (mailboxes, domains), without repeats; InvalidValue names the first bad one.

    Addresses are kept as the mailbox they reach (canonical), domains in their ASCII form.
    """
    addresses: set[str] = set()
    domains: set[str] = set()
    for raw in entries:
        entry = raw.strip()
        try:
            normal = normal_address(entry if "@" in entry else f"x@{entry}")
        except ValueError as exc:
            raise InvalidValue("entries", f"{raw!r} is not an address or domain: {exc}") from exc
        if "@" in entry:
            addresses.add(normal.canonical)
        else:
            domains.add(normal.ascii_domain)
    return sorted(addresses), sorted(domains)


class Suppressions:
    """Add, lift and list suppressions; adding cancels what they cover."""

    def __init__(self, client: aioredis.Redis, keys: Keys, audit: AuditLog, store: Store) -> None:
        self._redis = client
        self._keys = keys
        self._audit = audit
        self._store = store

    async def suppress(self, entries: list[str], actor: str) -> Suppressed:
        """Suppress what a person listed, cancel what it covers, and record it.

        Each chunk's entries, its cancellations and its audit entry are one script, so a retry
        after a failure adds and records only what is missing.
        """
        addresses, domains = split_entries(entries)
        listed = addresses + domains
        detail = f"suppressed by {actor}"
        new = cancelled = 0
        for start in range(0, len(listed), CHUNK):
            part = listed[start : start + CHUNK]
            # Up to 100,000 entries at once: per chunk, their count and a hash, and the first few to read.
            trail = audit_entry(
                "suppression.added",
                actor,
                {"entries": len(part), "sha256": canonical_hash(part), "first": part[:20], "outcome": "@"},
            )
            mailboxes = [entry for entry in part if "@" in entry]
            added, stopped = await self._store.suppress(
                mailboxes, part[len(mailboxes) :], CAUSE, detail, trail
            )
            new, cancelled = new + added, cancelled + stopped
        if domains:
            swept = await self._store.sweep_suppressed(CAUSE, detail)
            await self._audit.append(
                "suppression.swept", actor, {"domains": domains[:20], "cancelled": swept}
            )
            cancelled += sum(swept.values())
        return Suppressed(addresses, domains, new, cancelled)

    async def add(self, address: str, detail: str) -> int:
        """Suppress the mailbox of an address a signal named, cancelling its waiting messages in the
        same step; how many it cancelled. Not recorded here: the caller's own entry says why
        (feedback's event entries name the address they suppressed)."""
        _, cancelled = await self._store.suppress([canonical_address(address)], [], CAUSE, detail, "")
        return cancelled

    async def holds(self, address: str) -> bool:
        """Whether the mailbox of `address` is suppressed (by its own entry, not by its domain's)."""
        async with translated():
            return bool(
                await self._redis.sismember(self._keys.suppressed_addresses, canonical_address(address))
            )

    async def lift(self, entry: str, actor: str) -> bool:
        """Lift one suppression a person names, and record it; False if it was not there.

        An address lifts its mailbox's entry, and an entry of that exact address kept by an
        older version.
        """
        addresses, domains = split_entries([entry])
        if addresses:
            addresses.append(normal_address(entry.strip()).address)
        sets = ((self._keys.suppressed_addresses, addresses), (self._keys.suppressed_domains, domains))
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            for key, members in sets:
                if members:
                    pipe.srem(key, *members)
            lifted = sum(await pipe.execute())
        if not lifted:
            return False
        await self._audit.append("suppression.lifted", actor, {"entry": entry})
        return True

    async def list(self) -> tuple[list[str], list[str]]:
        async with translated(), self._redis.pipeline(transaction=False) as pipe:
            pipe.smembers(self._keys.suppressed_addresses)
            pipe.smembers(self._keys.suppressed_domains)
            addresses, domains = await pipe.execute()
        return sorted(addresses), sorted(domains)
