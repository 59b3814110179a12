"""Can this domain receive mail? MX look-ups through dnspython, cached with the answer's TTL.

A timeout or SERVFAIL is not a verdict: it comes back as `TEMPORARY`, so the message is deferred
and checked again later instead of being rejected for a resolver's bad minute. It is remembered
for `TEMPORARY_TIMEOUTS` resolver timeouts (15 s by default), so requests that name the domain
again meanwhile do not each wait the timeout: a caller that keeps asking waits at most a quarter
of its time. Negative answers (NXDOMAIN, no records) are cached for the zone's SOA minimum.

The recipient domains of a request are chosen by the agent, so a request's look-ups are bounded
(`check_many`): each distinct domain once, `CONCURRENCY` at a time, and all of them within
`BUDGET_TIMEOUTS` resolver timeouts; a domain not decided by then has no verdict from this request.
The daemon's look-ups, all requests together, are `LOOKUPS_AT_ONCE` at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable
from enum import StrEnum

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from sendguard.config import parse_host_port

_DEFAULT_NEGATIVE_TTL = 300
_MAX_TTL = 86400
_CACHE_SIZE = 100_000
CONCURRENCY = 64  # distinct domains one request looks up at once
# Look-ups under way at once in the daemon, whatever the requests: each holds a socket, and thirty
# requests of 64 silent domains each held 1,944, past a common limit of open files.
LOOKUPS_AT_ONCE = 256
BUDGET_TIMEOUTS = 2  # a request's DNS time: one timeout for a domain, one more for the rest
TEMPORARY_TIMEOUTS = 3  # how long a timeout or SERVFAIL is remembered


class MailHost(StrEnum):
    """The verdict on a recipient domain; every value but OK and TEMPORARY is a reason code."""

    OK = "ok"
    DOMAIN_NOT_FOUND = "domain_not_found"
    NULL_MX = "null_mx"
    NO_MAIL_HOST = "no_mail_host"
    TEMPORARY = "dns_temporary"


DETAILS = {
    MailHost.DOMAIN_NOT_FOUND: "the recipient domain does not exist (NXDOMAIN)",
    MailHost.NULL_MX: "the recipient domain publishes a null MX and accepts no mail (RFC 7505)",
    MailHost.NO_MAIL_HOST: "the recipient domain has no MX, A or AAAA record",
    MailHost.TEMPORARY: "DNS failed temporarily; will check again",
}


def make_resolver(nameservers: list[str], timeout: float) -> dns.asyncresolver.Resolver:
    """A resolver on `SENDGUARD_DNS_NAMESERVERS` (else the system's), `timeout` per look-up, no
    cache of its own: callers cache what they mean to."""
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(*parse_host_port(entry, 53)) for entry in nameservers
        ]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    resolver.timeout = timeout
    resolver.cache = None
    return resolver


def cache_key(domain: str) -> str:
    """One spelling of a domain for its verdict: case and a final dot make no other domain."""
    return domain.lower().rstrip(".")


class _Temporary(Exception):
    pass


class MxChecker:
    """Resolves recipient domains once per TTL, shares in-flight look-ups between callers."""

    def __init__(self, nameservers: list[str], timeout: float) -> None:
        self._resolver = make_resolver(nameservers, timeout)
        self._cache: OrderedDict[str, tuple[MailHost, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Task[MailHost]] = {}
        self._slots = asyncio.Semaphore(LOOKUPS_AT_ONCE)
        self.budget = BUDGET_TIMEOUTS * timeout
        self._temporary_ttl = TEMPORARY_TIMEOUTS * timeout

    async def check(self, domain: str) -> MailHost:
        """The verdict for an ASCII (IDNA) domain."""
        domain = cache_key(domain)
        cached = self._cached(domain)
        if cached is not None:
            return cached
        task = self._pending.get(domain)
        if task is None:
            task = asyncio.ensure_future(self._resolve_and_cache(domain))
            self._pending[domain] = task
            task.add_done_callback(lambda _: self._pending.pop(domain, None))
        return await asyncio.shield(task)

    async def check_many(self, domains: Iterable[str]) -> dict[str, MailHost]:
        """The verdicts for a request's domains (keyed by `cache_key`), each looked up once,
        within the request's budget.

        Cached verdicts come first and cost no look-up; the others are looked up `CONCURRENCY` at a
        time, in the order given. A domain still waiting when `budget` seconds are spent is left
        out: the caller defers its recipients. A look-up under way then goes on by itself (the
        resolver's timeout ends it) and caches what it finds for the next request.
        """
        found: dict[str, MailHost] = {}
        unknown: list[str] = []
        for domain in dict.fromkeys(cache_key(domain) for domain in domains):
            cached = self._cached(domain)
            if cached is None:
                unknown.append(domain)
            else:
                found[domain] = cached
        if not unknown:
            return found
        queue = iter(unknown)

        async def look_up() -> None:
            for domain in queue:  # shared: each worker takes the next domain nobody has taken
                found[domain] = await self.check(domain)

        workers = [asyncio.ensure_future(look_up()) for _ in range(min(CONCURRENCY, len(unknown)))]
        try:
            done, _ = await asyncio.wait(workers, timeout=self.budget)
        finally:
            for worker in workers:
                worker.cancel()  # its look-up is shielded: only this request stops waiting for it
        for worker in done:
            worker.result()  # a failure of sendguard's own is raised, not taken for a verdict
        return found

    def _cached(self, domain: str) -> MailHost | None:
        cached = self._cache.get(domain)
        if cached is None:
            return None
        if cached[1] > time.monotonic():
            self._cache.move_to_end(domain)
            return cached[0]
        del self._cache[domain]
        return None

    async def _resolve_and_cache(self, domain: str) -> MailHost:
        ttl: float
        try:
            async with self._slots:
                verdict, ttl = await self._resolve(dns.name.from_text(domain))
        except _Temporary:
            verdict, ttl = MailHost.TEMPORARY, self._temporary_ttl
        except (dns.exception.DNSException, ValueError):
            # A name dnspython cannot even form (too long, empty label) cannot receive mail.
            verdict, ttl = MailHost.DOMAIN_NOT_FOUND, _DEFAULT_NEGATIVE_TTL
        self._cache[domain] = (verdict, time.monotonic() + min(ttl, _MAX_TTL))
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return verdict

    async def _resolve(self, name: dns.name.Name) -> tuple[MailHost, int]:
        try:
            answer = await self._query(name, dns.rdatatype.MX)
        except dns.resolver.NXDOMAIN as exc:
            return MailHost.DOMAIN_NOT_FOUND, _negative_ttl(exc)
        except dns.resolver.NoAnswer as exc:
            return await self._implicit_mx(name, _negative_ttl(exc))
        assert answer.rrset is not None
        records = list(answer.rrset)
        if len(records) == 1 and records[0].exchange == dns.name.root:
            return MailHost.NULL_MX, answer.rrset.ttl
        return MailHost.OK, answer.rrset.ttl

    async def _implicit_mx(self, name: dns.name.Name, negative_ttl: int) -> tuple[MailHost, int]:
        """RFC 5321 §5.1: without MX, an A or AAAA record is the mail host."""
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await self._query(name, rdtype)
            except dns.resolver.NXDOMAIN as exc:
                return MailHost.DOMAIN_NOT_FOUND, _negative_ttl(exc)
            except dns.resolver.NoAnswer:
                continue
            assert answer.rrset is not None
            return MailHost.OK, answer.rrset.ttl
        return MailHost.NO_MAIL_HOST, negative_ttl

    async def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer:
        try:
            return await self._resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise _Temporary from exc


def _negative_ttl(exc: dns.exception.DNSException) -> int:
    """The SOA minimum from a negative answer's authority section (RFC 2308), else a default."""
    responses: list[dns.message.Message] = []
    if isinstance(exc, dns.resolver.NXDOMAIN):
        responses = list(exc.responses().values())  # type: ignore[no-untyped-call]
    elif isinstance(exc, dns.resolver.NoAnswer):
        response = exc.response()  # type: ignore[no-untyped-call]
        if isinstance(response, dns.message.Message):
            responses = [response]
    for response in responses:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return int(min(rrset.ttl, rrset[0].minimum))
    return _DEFAULT_NEGATIVE_TTL
