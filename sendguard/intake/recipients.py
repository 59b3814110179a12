"""List ingress checks on a recipient: syntax, free-mail, role accounts, disposable domains, MX.

Each failed check is a stable reason code. Suppression and cooldown need shared state and are
checked atomically with the admission itself (`store.py`), not here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from sendguard.intake.mx import DETAILS, MailHost, MxChecker, cache_key
from sendguard.model import Reason, canonical_address, folded_address, normal_address
from sendguard.rules import Rules


@dataclass
class Recipient:
    """A recipient after the checks: its normalised address, mailbox, ASCII domain and what was found.

    `dns_deferral` is set when DNS gave no verdict (a timeout, SERVFAIL, or the request's DNS
    budget spent first): the recipient is deferred and checked again later, never rejected for it.
    """

    address: str
    canonical: str  # the mailbox it reaches (model.canonical_address)
    domain: str
    reasons: list[Reason] = field(default_factory=list)
    dns_deferral: Reason | None = None


_YIELD_EVERY = 500  # recipients checked between yields to the event loop


def budget_spent(budget: float) -> Reason:
    """Why a recipient whose domain this request never got to (or never heard back from) waits."""
    return Reason(
        "dns_temporary",
        f"this request's DNS time ({budget:g} s) was spent before its domain was looked up; will check again",
    )


class Ingress:
    """Runs the list checks against the current rules and a shared MX cache."""

    def __init__(self, mx: MxChecker) -> None:
        self._mx = mx

    async def check(self, raw_address: str, rules: Rules) -> Recipient:
        """One recipient's checks: a request of one."""
        return (await self.check_all([raw_address], rules))[0]

    async def check_all(self, raw_addresses: Sequence[str], rules: Rules) -> list[Recipient]:
        """Every recipient of one request checked, in order. Each recipient domain is looked up at
        most once, and all of them within the request's DNS budget (`MxChecker.check_many`): the
        agent chooses the domains, so their DNS must not hold the request for long."""
        checked: list[Recipient] = []
        for index, raw_address in enumerate(raw_addresses):
            checked.append(_listed(raw_address, rules))
            if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)  # a batch must not stall deliveries and other requests
        if rules.file.ingress.mx_check != "enforce":
            return checked
        unsure = [recipient for recipient in checked if not recipient.reasons]
        verdicts = await self._mx.check_many(recipient.domain for recipient in unsure)
        spent = budget_spent(self._mx.budget)
        for recipient in unsure:
            verdict = verdicts.get(cache_key(recipient.domain))
            if verdict is None:
                recipient.dns_deferral = spent
            else:
                _decided(recipient, verdict)
        return checked

    async def check_mail_host(self, recipient: Recipient) -> None:
        """Add the MX verdict to a recipient: a reason, or the deferral."""
        _decided(recipient, await self._mx.check(recipient.domain))


def _listed(raw_address: str, rules: Rules) -> Recipient:
    """The checks that need no DNS: syntax and the rules' lists."""
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
    return recipient


def _decided(recipient: Recipient, verdict: MailHost) -> None:
    if verdict is MailHost.OK:
        return
    reason = Reason(verdict.value, DETAILS[verdict])
    if verdict is MailHost.TEMPORARY:
        recipient.dns_deferral = reason
    else:
        recipient.reasons.append(reason)


def _in_domain_list(domain: str, listed: frozenset[str]) -> bool:
    """True for a listed domain and any subdomain of it (x.mailinator.com)."""
    labels = domain.split(".")
    return any(".".join(labels[i:]) in listed for i in range(len(labels) - 1))
