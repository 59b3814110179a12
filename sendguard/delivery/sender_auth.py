"""Sender authentication: do SPF, DKIM and DMARC vouch for every domain the register sends from?

Since February 2024 Gmail and Yahoo require of bulk senders (5,000+ messages a day to them) SPF and
DKIM for the sending domain, a DMARC record (at least `p=none`) and one-click unsubscribe
(RFC 8058) in marketing mail; mail from a domain that fails them is rejected or filed as spam
(https://support.google.com/a/answer/81126, https://senders.yahooinc.com/best-practices/).
`sendguard doctor` says, a sentence for each, what fails; the daemon runs the same checks at start
and at each rules reload, in the background (a slow DNS never delays it), as log warnings and the
`sendguard_sender_auth_ok{domain,check}` gauge, whose domains are the register's, so bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from enum import StrEnum

import dns.exception
import dns.resolver

from sendguard.config import Settings
from sendguard.intake.mx import make_resolver
from sendguard.metrics import Metrics
from sendguard.rules import Rules

log = logging.getLogger("sendguard.sender_auth")

_GUIDANCE = "Gmail and Yahoo require it of bulk senders since 2024"
ALL_DOMAINS = "*"  # the domain label of a check that is about the deployment, not one domain


class Check(StrEnum):
    SPF = "spf"
    DKIM = "dkim"
    DMARC = "dmarc"
    UNSUBSCRIBE = "unsubscribe"


class Verdict(StrEnum):
    PASS = "pass"
    WARN = "warn"  # works, but weaker than it should be: said, not a failure
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    """One check of one domain; `sentence` says what is wrong (empty when it passes)."""

    domain: str
    check: Check
    verdict: Verdict
    sentence: str = ""


async def check_sender_auth(rules: Rules, settings: Settings) -> list[Finding]:
    """Every check of every sender domain in the register, and the one-click unsubscribe URL."""
    resolver = make_resolver(settings.dns_nameservers, settings.dns_timeout)

    async def txt(name: str) -> list[str] | None:
        """The TXT strings at `name` ([] when there are none); None when DNS did not answer."""
        try:
            answer = await resolver.resolve(name, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException:
            return None
        return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]

    findings: list[Finding] = []
    for domain in rules.sender_domains():
        findings.append(_spf(domain, await txt(domain)))
        selectors = [rule.selector for rule in rules.file.dkim if rule.domain == domain]
        if not selectors:
            findings.append(
                Finding(
                    domain,
                    Check.DKIM,
                    Verdict.WARN,
                    f"{domain}: no DKIM selector is configured ([[dkim]] in the rules), so sendguard "
                    f"signs nothing from it and cannot check its key; unless the relay signs, {_GUIDANCE}",
                )
            )
        for selector in selectors:
            name = f"{selector}._domainkey.{domain}"
            findings.append(_dkim(domain, name, await txt(name)))
        findings.append(_dmarc(domain, await txt(f"_dmarc.{domain}")))
    if settings.public_url is None:
        sentence = (
            "no one-click unsubscribe URL is configured (SENDGUARD_PUBLIC_URL), so messages carry no "
            f"RFC 8058 List-Unsubscribe-Post header; {_GUIDANCE} for marketing mail"
        )
        findings.append(Finding(ALL_DOMAINS, Check.UNSUBSCRIBE, Verdict.FAIL, sentence))
    else:
        findings.append(Finding(ALL_DOMAINS, Check.UNSUBSCRIBE, Verdict.PASS))
    return findings


def _unanswered(domain: str, check: Check, name: str) -> Finding:
    return Finding(
        domain, check, Verdict.FAIL, f"{domain}: the TXT look-up of {name} failed, so {check} is unchecked"
    )


def _spf(domain: str, found: list[str] | None) -> Finding:
    """RFC 7208: exactly one `v=spf1` record (§4.5), ending in a policy for everyone else."""
    if found is None:
        return _unanswered(domain, Check.SPF, domain)
    records = [text for text in found if text.lower().split(" ", 1)[0] == "v=spf1"]
    if not records:
        return Finding(domain, Check.SPF, Verdict.FAIL, f"{domain}: publishes no SPF record; {_GUIDANCE}")
    if len(records) > 1:
        return Finding(
            domain,
            Check.SPF,
            Verdict.FAIL,
            f"{domain}: publishes {len(records)} SPF records, which RFC 7208 §4.5 makes a permanent "
            "error; merge them into one",
        )
    last = records[0].lower().split()[-1]
    if last in ("-all", "~all") or any(term.startswith("redirect=") for term in records[0].lower().split()):
        return Finding(domain, Check.SPF, Verdict.PASS)
    if last in ("+all", "all", "?all"):
        return Finding(
            domain,
            Check.SPF,
            Verdict.WARN,
            f"{domain}: its SPF record ends in {last!r}, which lets any server send as it; end it in "
            "'-all' or '~all'",
        )
    return Finding(
        domain,
        Check.SPF,
        Verdict.FAIL,
        f"{domain}: its SPF record does not end in '-all' or '~all', so it says nothing of other servers",
    )


def _dkim(domain: str, name: str, found: list[str] | None) -> Finding:
    """RFC 6376 §3.6.1: a key record with a non-empty `p=` (empty means the key is revoked)."""
    if found is None:
        return _unanswered(domain, Check.DKIM, name)
    keys = [tags.get("p", "") for tags in map(_tags, found) if "p" in tags]
    if not keys:
        return Finding(
            domain,
            Check.DKIM,
            Verdict.FAIL,
            f"{domain}: no DKIM key is published at {name}, so receivers cannot verify its signatures; "
            f"{_GUIDANCE}",
        )
    if not any(keys):
        return Finding(
            domain, Check.DKIM, Verdict.FAIL, f"{domain}: the DKIM key at {name} is revoked (empty p=)"
        )
    return Finding(domain, Check.DKIM, Verdict.PASS)


def _dmarc(domain: str, found: list[str] | None) -> Finding:
    """RFC 7489 §6.6.3: exactly one `v=DMARC1` record with a `p=` policy."""
    name = f"_dmarc.{domain}"
    if found is None:
        return _unanswered(domain, Check.DMARC, name)
    records = [tags for tags in map(_tags, found) if tags.get("v", "").upper() == "DMARC1"]
    if len(records) != 1:
        problem = "no DMARC record" if not records else f"{len(records)} DMARC records (receivers ignore all)"
        return Finding(
            domain, Check.DMARC, Verdict.FAIL, f"{domain}: {name} has {problem}; {_GUIDANCE}, at least p=none"
        )
    policy = records[0].get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return Finding(
            domain, Check.DMARC, Verdict.FAIL, f"{domain}: its DMARC record has no valid policy (p=)"
        )
    if policy == "none":
        return Finding(
            domain,
            Check.DMARC,
            Verdict.WARN,
            f"{domain}: its DMARC policy is p=none, which meets the 2024 bulk-sender minimum but asks "
            "receivers to do nothing with forged mail; move to quarantine or reject once reports are clean",
        )
    return Finding(domain, Check.DMARC, Verdict.PASS)


def _tags(text: str) -> dict[str, str]:
    """A `tag=value; tag=value` record (DKIM and DMARC) as a dict, tags lowercased."""
    tags = {}
    for part in text.split(";"):
        tag, sep, value = part.partition("=")
        if sep:
            tags[tag.strip().lower()] = "".join(value.split())
    return tags


class SenderAuthWatch:
    """Runs the checks in the background after start and each reload, into the log and the gauge."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    def recheck(self, rules: Rules) -> None:
        """Check `rules`' domains now, in the background, replacing a check still running."""
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._report(rules))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _report(self, rules: Rules) -> None:
        try:
            findings = await check_sender_auth(rules, self._settings)
        except Exception as exc:  # a check that cannot run must not end the daemon's start or stop
            log.error("sender authentication not checked: %s", exc)
            return
        passing: dict[tuple[str, str], bool] = {}
        for finding in findings:  # a domain with several DKIM selectors passes if all of them do
            labels = (finding.domain, finding.check.value)
            passing[labels] = passing.get(labels, True) and finding.verdict is Verdict.PASS
            if finding.sentence:
                log.warning("sender authentication %s: %s", finding.verdict.value, finding.sentence)
        gauge = self._metrics.sender_auth_ok
        gauge.clear()  # a domain the reloaded register dropped leaves the gauge
        for (domain, check), ok in passing.items():
            gauge.labels(domain, check).set(1 if ok else 0)
