"""List ingress checks on a recipient: syntax, free-mail, role accounts, disposable domains, MX.

Each failed check is a stable reason code. Suppression and cooldown need shared state and are
checked atomically with the admission itself (`store.py`), not here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sendguard.intake.mx import DETAILS, MailHost, MxChecker
from sendguard.model import Reason, canonical_address, folded_address, normal_address
from sendguard.rules import Rules


@dataclass
class Recipient:
    """A recipient after the checks: its normalised address, mailbox, ASCII domain and what was found."""

    address: str
    canonical: str  # the mailbox it reaches (model.canonical_address)
    domain: str
    reasons: list[Reason] = field(default_factory=list)
    dns_temporary: bool = False


class Ingress:
    """Runs the list checks against the current rules and a shared MX cache."""

    def __init__(self, mx: MxChecker) -> None:
        self._mx = mx

    async def check(self, raw_address: str, rules: Rules) -> Recipient:
        try:
            normal = normal_address(raw_address)
        except ValueError as exc:  # recorded as written, so the rejection can be read and counted
            return Recipient(
                address=folded_address(raw_address),
                canonical=canonical_address(raw_address),
                domain=raw_address.rpartition("@")[2].lower(),
                reasons=[Reason("invalid_address", str(exc))],
            )
        domain = normal.ascii_domain
        recipient = Recipient(address=normal.address, canonical=normal.canonical, domain=domain)
        settings = rules.file.ingress
        local = normal.canonical.rpartition("@")[0]
        if settings.block_free_domains and domain in rules.free_domains:
            recipient.reasons.append(Reason("free_domain", f"{domain} is a free-mail provider"))
        if settings.block_role_accounts and local in rules.role_accounts:
            recipient.reasons.append(Reason("role_account", f"{local}@ is a role account"))
        if settings.block_disposable and _in_domain_list(domain, rules.disposable_domains):
            recipient.reasons.append(Reason("disposable_domain", f"{domain} is a disposable mail domain"))
        if settings.mx_check == "enforce" and not recipient.reasons:
            await self.check_mail_host(recipient)
        return recipient

    async def warm(self, addresses: list[str], rules: Rules, concurrency: int = 64) -> None:
        """Look up the mail hosts of many recipients' domains at once, so checking them one by one
        finds each in the cache instead of waiting for DNS in turn."""
        if rules.file.ingress.mx_check != "enforce":
            return
        domains = {folded_address(address).rpartition("@")[2] for address in addresses}
        pending = sorted(domain for domain in domains if "." in domain and domain.isascii())
        limit = asyncio.Semaphore(concurrency)

        async def look_up(domain: str) -> None:
            async with limit:
                await self._mx.check(domain)

        await asyncio.gather(*(look_up(domain) for domain in pending))

    async def check_mail_host(self, recipient: Recipient) -> None:
        """Add the MX verdict to a recipient: a reason, or the temporary flag."""
        verdict = await self._mx.check(recipient.domain)
        recipient.dns_temporary = verdict is MailHost.TEMPORARY
        if verdict not in (MailHost.OK, MailHost.TEMPORARY):
            recipient.reasons.append(Reason(verdict.value, DETAILS[verdict]))


def _in_domain_list(domain: str, listed: frozenset[str]) -> bool:
    """True for a listed domain and any subdomain of it (x.mailinator.com)."""
    labels = domain.split(".")
    return any(".".join(labels[i:]) in listed for i in range(len(labels) - 1))
