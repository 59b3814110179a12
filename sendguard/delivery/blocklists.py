"""Blocklist (DNSBL) checks: is one of our sender domains or sending IPs listed?

Every `[blocklists] interval`, one daemon (the one that takes the interval's turn, a Redis key
that expires with it) asks each domain zone about each sender domain of the register
(`<domain>.<zone>`) and each IP zone about each sending IP (`<reversed address>.<zone>`, RFC 5782).
A new listing trips the scope it hurts, with cause `blocklisted`: `sender_domain:<domain>` for a
domain, `global` for a sending IP (which IP carries a message is the relay's choice, so a listed
one can hurt any of them). A delisting is recorded and announced; the trip stays until a person
resumes it, as every trip does. A listing trips once: a person who resumes while it lasts is not
overruled at the next check, and a delisting followed by a new listing trips again.

An answer is a listing only if it is an A record in 127.0.0.0/8 that is not an error code:
Spamhaus answers 127.255.255.0/24 for errors in the query itself (127.255.255.254: asked through
a public resolver; .255: too many queries) and 127.0.1.255 when a domain list is asked about an
IP, and says these "must not be interpreted" as listings. NXDOMAIN (or no A record) is not listed;
a time-out, a SERVFAIL or an error code is neither, and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, ip_address

import dns.asyncresolver
import dns.exception
import dns.resolver
import redis.asyncio as aioredis

from sendguard.feedback.safe_mode import SafeMode
from sendguard.governance.audit import entry as audit_entry
from sendguard.metrics import Metrics
from sendguard.model import now_ms
from sendguard.notify import Notifier
from sendguard.rules import CurrentRules, ScopeKind
from sendguard.scopes import GLOBAL, agent_values, scope_name
from sendguard.state import scripts
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated

log = logging.getLogger("sendguard.delivery.blocklists")

_LISTING = IPv4Network("127.0.0.0/8")  # RFC 5782 §2.3: entries are A records in 127/8
_ERRORS = (IPv4Network("127.255.255.0/24"), IPv4Network("127.0.1.255/32"))  # Spamhaus' error codes
_CONCURRENT = 8  # look-ups in flight at once, so a long register does not flood the resolver


class Verdict(StrEnum):
    LISTED = "listed"
    CLEAR = "clear"
    ERROR = "error"


@dataclass(frozen=True)
class Lookup:
    """One target asked of one zone: the verdict, and the answer it rests on."""

    zone: str
    target: str  # a sender domain or a sending IP
    scope: str  # the scope a listing trips
    verdict: Verdict
    answer: str  # the A records (space-separated), or what went wrong

    @property
    def field(self) -> str:
        return f"{self.zone} {self.target}"


def query_name(target: str, zone: str) -> str:
    """`<domain>.<zone>`, or for an IP its reversed octets (IPv6: nibbles) then the zone."""
    try:
        address = ip_address(target)
    except ValueError:
        return f"{target}.{zone}"
    reversed_name = address.reverse_pointer.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
    return f"{reversed_name}.{zone}"


def verdict_of(addresses: list[str]) -> Verdict:
    """Listed if any A record is a listing code; otherwise an error (error codes, or answers outside
    127/8, which a list that answers every name, or a hijacking resolver, gives)."""
    for text in addresses:
        address = IPv4Address(text)
        if address in _LISTING and not any(address in errors for errors in _ERRORS):
            return Verdict.LISTED
    return Verdict.ERROR


class Blocklists:
    """Checks the configured zones once per interval across all daemons, and records what changed."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        resolver: dns.asyncresolver.Resolver,
        safe_mode: SafeMode,
        notifier: Notifier,
        rules: CurrentRules,
        metrics: Metrics,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._resolver = resolver
        self._safe_mode = safe_mode
        self._notifier = notifier
        self._rules = rules
        self._metrics = metrics
        self._record = scripts.register(client, keys, "blocklist_record")
        self._labelled: set[tuple[str, str]] = set()
        metrics.start_at_zero(metrics.blocklist_checks, Verdict)

    def targets(self) -> list[tuple[str, str, str]]:
        """(zone, target, scope it trips) for every configured zone and every target of its kind."""
        rules = self._rules.now.file
        domains = sorted(
            {domain for agent in rules.agent for domain in agent_values(agent)[ScopeKind.SENDER_DOMAIN]}
        )
        found = [
            (zone, domain, scope_name(ScopeKind.SENDER_DOMAIN, domain))
            for zone in rules.blocklists.domain_zones
            for domain in domains
        ]
        return found + [
            (zone, str(ip), GLOBAL)
            for zone in rules.blocklists.ip_zones
            for ip in rules.blocklists.sending_ips
        ]

    async def check_if_turn(self, instance: str) -> list[Lookup] | None:
        """Check now if no daemon has checked within the interval (this one takes the turn)."""
        if not self.targets():
            return None
        interval_ms = int(self._rules.now.file.blocklists.interval * 1000)
        async with translated():
            if not await self._redis.set(self._keys.blocklist_turn, instance, nx=True, px=interval_ms):
                return None
        return await self.check()

    async def check(self) -> list[Lookup]:
        """Ask every zone about every target; trip new listings, record delistings."""
        limit = asyncio.Semaphore(_CONCURRENT)

        async def bounded(zone: str, target: str, scope: str) -> Lookup:
            async with limit:
                return await self._lookup(zone, target, scope)

        lookups = await asyncio.gather(*(bounded(*target) for target in self.targets()))
        async with translated():
            known = {str(field) for field in await self._redis.hkeys(self._keys.blocklist_listed)}
        for lookup in lookups:
            self._metrics.blocklist_checks.labels(lookup.verdict.value).inc()
            if lookup.verdict is Verdict.ERROR:
                log.warning(
                    "blocklist %s could not say about %s: %s", lookup.zone, lookup.target, lookup.answer
                )
            elif lookup.verdict is Verdict.LISTED and lookup.field not in known:
                await self._listed(lookup)
            elif lookup.verdict is Verdict.CLEAR and lookup.field in known:
                await self._delisted(lookup)
        await self.refresh_metrics()
        return lookups

    async def _lookup(self, zone: str, target: str, scope: str) -> Lookup:
        try:
            answer = await self._resolver.resolve(query_name(target, zone), "A", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return Lookup(zone, target, scope, Verdict.CLEAR, "")
        except (dns.exception.DNSException, ValueError) as exc:
            return Lookup(zone, target, scope, Verdict.ERROR, type(exc).__name__)
        addresses = sorted(str(record.address) for record in answer)
        return Lookup(zone, target, scope, verdict_of(addresses), " ".join(addresses))

    async def _listed(self, lookup: Lookup) -> None:
        """Trip first, then record: a check cut off between the two trips again next time, harmlessly."""
        reason = f"{lookup.target} is listed on {lookup.zone} ({lookup.answer})"
        await self._safe_mode.trip(lookup.scope, "blocklisted", "sendguard", reason)
        fields = {
            "zone": lookup.zone,
            "target": lookup.target,
            "scope": lookup.scope,
            "answer": lookup.answer,
        }
        listing = json.dumps({"at": now_ms(), "answer": lookup.answer, "scope": lookup.scope})
        trail = audit_entry("blocklist.listed", "sendguard", {**fields, "outcome": "@"})
        async with translated():
            await self._record(args=[lookup.field, "1", listing, trail])
        log.warning("sendguard: %s; %s tripped", reason, lookup.scope)

    async def _delisted(self, lookup: Lookup) -> None:
        fields = {"zone": lookup.zone, "target": lookup.target, "scope": lookup.scope}
        trail = audit_entry("blocklist.delisted", "sendguard", {**fields, "outcome": "@"})
        async with translated():
            recorded = await self._record(args=[lookup.field, "0", "", trail])
        if recorded:
            text = (
                f"sendguard: {lookup.target} is no longer listed on {lookup.zone}; {lookup.scope} stays in "
                "safe mode until a person resumes it"
            )
            log.warning(text)
            self._notifier.post(text, {"event": "delisted", **fields})

    async def refresh_metrics(self) -> None:
        """Set `sendguard_blocklist_listed` for every configured (zone, target) from Redis, so every
        daemon shows what the checking one found; drop the series of targets no longer configured."""
        async with translated():
            listed = {str(field) for field in await self._redis.hkeys(self._keys.blocklist_listed)}
        shown = {(zone, target) for zone, target, _ in self.targets()}
        for zone, target in shown:
            self._metrics.blocklist_listed.labels(zone, target).set(1 if f"{zone} {target}" in listed else 0)
        for labels in self._labelled - shown:
            with contextlib.suppress(KeyError):
                self._metrics.blocklist_listed.remove(*labels)
        self._labelled = shown
