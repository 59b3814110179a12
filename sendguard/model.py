"""The shared words of the pipeline: a message's statuses, reason codes, addresses and the clock of
stored times.

Every stage reads and writes these, so they live above all of them and import nothing of sendguard.
"""

from __future__ import annotations

import functools
import json
import re
import time
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import DOT_ATOM_TEXT, EMAIL_MAX_LENGTH


class Status(StrEnum):
    """The message lifecycle (see PRODUCT.md)."""

    REJECTED = "rejected"
    PENDING_APPROVAL = "pending_approval"
    HELD = "held"
    QUEUED = "queued"
    DEFERRED = "deferred"
    SENDING = "sending"
    SENT = "sent"
    BOUNCED = "bounced"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


WAITING = (Status.PENDING_APPROVAL, Status.HELD, Status.QUEUED, Status.DEFERRED, Status.SENDING)
CANCELLABLE = (Status.PENDING_APPROVAL, Status.HELD, Status.QUEUED, Status.DEFERRED)


@dataclass(frozen=True)
class Reason:
    """A stable reason code and a sentence for the person reading it."""

    code: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.detail}


@dataclass(frozen=True)
class Address:
    """An email address in the form sendguard stores, suppresses and matches it by."""

    address: str  # local part @ Unicode domain, lower case: a message's `to` and `from_addr`
    domain: str  # the Unicode domain, lower case
    ascii_domain: str  # the IDNA domain, lower case: what DNS, the relay and domain lists use

    @property
    def local(self) -> str:
        return self.address.rpartition("@")[0]

    @property
    def canonical(self) -> str:
        """The mailbox it reaches (see `canonical_address`)."""
        return canonical_address(self.address)


@functools.lru_cache(maxsize=4096)
def normal_address(text: str) -> Address:
    """The address as sendguard stores it; ValueError (email_validator's, saying why) if it is not one.

    For addresses sendguard takes in and keeps: senders, recipients, suppression entries. Cached:
    an agent sends from the same few addresses, and validating one costs as much as a Redis call.
    A batch's thousands of recipients are each new but share a few domains: a plain address (an
    ASCII dot-atom before the @, an ASCII name after it, short enough) is the domain's cached
    verdict with its local part, which is what validating it whole gives; any other goes whole.
    """
    local, at, domain = text.rpartition("@")
    if at and _PLAIN_DOMAIN.fullmatch(domain) and DOT_ATOM_TEXT.match(local):
        forms = _domain_forms(domain)
        if forms is not None:
            unicode_domain, ascii_domain = forms
            # email_validator's length checks: as written, normalised, and with the IDNA domain.
            longest = max(
                len(text), len(local) + 1 + len(unicode_domain.encode()), len(local) + 1 + len(ascii_domain)
            )
            if longest <= EMAIL_MAX_LENGTH:
                return Address(
                    f"{local}@{unicode_domain}".lower(), unicode_domain.lower(), ascii_domain.lower()
                )
    valid = validate_email(text, check_deliverability=False)
    return Address(
        address=f"{valid.local_part}@{valid.domain}".lower(),
        domain=valid.domain.lower(),
        ascii_domain=valid.ascii_domain.lower(),
    )


_PLAIN_DOMAIN = re.compile(r"[A-Za-z0-9.-]+")


@functools.lru_cache(maxsize=4096)
def _domain_forms(domain: str) -> tuple[str, str] | None:
    """A domain's Unicode and IDNA forms as email_validator gives them after an @, or None if it
    refuses the domain (the whole address is then validated, for its own words on why)."""
    try:
        valid = validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    return valid.domain, valid.ascii_domain


def folded_address(text: str) -> str:
    """An address only trimmed and lower-cased, never refused.

    For addresses that must be recorded or matched even when they do not validate: ones that come
    back from outside (events, inbound mail), a recipient rejected as invalid, the rules file's
    lists. It agrees with `normal_address(text).address` on every valid address except an
    internationalised one (a Unicode or `xn--` domain), which `normal_address` puts in one Unicode form.
    """
    return text.strip().lower()


def canonical_address(text: str) -> str:
    """The mailbox an address reaches: lower case, a `+tag` taken off the local part. Never refused.

    `Bob+Q4@Acme.example` and `bob@acme.example` are one person's mailbox: suppressions, the
    waiting index and per-inbox throttles go by this form, so a made-up tag escapes none of them.
    A local part that is only a tag (`+x@...`) is kept whole.
    """
    local, at, domain = folded_address(text).rpartition("@")
    return f"{local.split('+', 1)[0] or local}{at}{domain}"


@functools.cache
def _zone_names() -> frozenset[str]:
    # `localtime` is whatever the machine is set to: not a zone anyone can name for a recipient.
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


def time_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone `name` (`Europe/Berlin`); ValueError naming it if the tz database lacks it."""
    if name not in _zone_names():
        raise ValueError(f"{name!r} is not an IANA time zone such as 'Europe/Berlin' or 'America/New_York'")
    return zoneinfo.ZoneInfo(name)


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_ms(ms: str | int | float | None) -> str:
    """A stored time (milliseconds since the epoch) as people and JSON clients read it."""
    if ms in (None, ""):
        return ""
    return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="milliseconds")


def decode_reasons(raw: str | None) -> list[Reason]:
    """Reasons as a record stores them (a JSON list of code and detail)."""
    value = json.loads(raw) if raw else []
    if not isinstance(value, list):  # cjson encodes an empty list as {}
        return []
    return [Reason(str(reason["code"]), str(reason["detail"])) for reason in value]
