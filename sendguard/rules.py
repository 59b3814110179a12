"""The rules file: policy that RevOps tunes (ingress checks, throttles, the agent register).

Settings the file leaves out take their defaults; the lists (`[[throttle]]`, `[[agent]]`) are
exactly what the file says. Every error names the file, the table and the key, because the
person reading it is editing that file.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from sendguard.dkim import DkimSigner
from sendguard.errors import ConfigError
from sendguard.model import canonical_address, time_zone

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """`90s`, `15m`, `1h30m`, `7d` into seconds; a bare number is refused as ambiguous."""
    if not isinstance(value, str):
        raise ValueError("must be a duration string such as '90s', '15m', '1h' or '7d'")
    text = value.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration such as '90s', '15m', '1h' or '7d'")
    return total


Duration = Annotated[float, BeforeValidator(parse_duration)]


class ScopeKind(StrEnum):
    """The kinds of scope a throttle or a safe-mode trip can be keyed by."""

    RECIPIENT_DOMAIN = "recipient_domain"
    SENDER_DOMAIN = "sender_domain"
    INBOX = "inbox"
    SEGMENT = "segment"
    CAMPAIGN = "campaign"
    AGENT = "agent"
    GLOBAL = "global"


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngressRules(_Table):
    block_free_domains: bool = True
    block_role_accounts: bool = True
    block_disposable: bool = True
    mx_check: Literal["enforce", "off"] = "enforce"
    recipient_cooldown: Duration = Field(default=72 * 3600.0, ge=0)
    max_enrichment_age: Duration = Field(default=30 * 86400.0, gt=0)
    # Paths relative to the rules file; left out, the lists shipped with sendguard are used.
    free_domains_list: str | None = None
    role_accounts_list: str | None = None
    disposable_domains_list: str | None = None


class ScopedRule(_Table):
    """A rule on a scope kind, for every value of it (`match = "*"`) or for one."""

    scope: ScopeKind
    match: str = Field(default="*", min_length=1)

    @model_validator(mode="after")
    def _lowercase_match(self) -> Self:
        if self.scope is ScopeKind.GLOBAL and self.match != "*":
            raise ValueError("a global rule covers every message as one; its match must be '*'")
        if self.scope in {ScopeKind.RECIPIENT_DOMAIN, ScopeKind.SENDER_DOMAIN, ScopeKind.INBOX}:
            object.__setattr__(self, "match", self.match.lower())
        return self

    def applies_to(self, value: str | None) -> bool:
        return value is not None and (self.match == "*" or self.match == value)


class ThrottleRule(ScopedRule):
    limit: int = Field(gt=0)
    per: Duration = Field(gt=0)
    min_gap: Duration = Field(default=0.0, ge=0)
    jitter: Duration = Field(default=0.0, ge=0)


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # date.weekday() order
_TIME_OF_DAY = re.compile(r"^(\d\d):(\d\d)(?::(\d\d))?$")  # seconds for tests and odd cases
RECIPIENT = "recipient"  # a window's timezone: each message's recipient_timezone


def _seconds_of_day(text: str) -> int | None:
    """`09:30` (or `09:30:15`) as seconds after midnight; 24:00 ends a day; None if no such time."""
    found = _TIME_OF_DAY.match(text)
    if not found:
        return None
    hours, minutes, seconds = (int(part or 0) for part in found.groups())
    if minutes > 59 or seconds > 59 or hours > 24 or (hours == 24 and (minutes or seconds)):
        return None
    return (hours * 60 + minutes) * 60 + seconds


def _hours(value: str) -> str:
    opens_text, _, closes_text = value.partition("-")
    opens, closes = _seconds_of_day(opens_text), _seconds_of_day(closes_text)
    if opens is None or closes is None or opens == 86400:
        raise ValueError(f"{value!r} is not a span of hours such as '09:00-17:30' (24:00 may end one)")
    if opens >= closes:
        raise ValueError(
            f"{value!r} does not open before it closes; a span lies within one day "
            "(for one past midnight give two: ['00:00-06:00', '22:00-24:00'])"
        )
    return value


def _zone_or_recipient(value: str) -> str:
    return value if value == RECIPIENT else time_zone(value).key


class WindowRule(ScopedRule):
    """When messages of a scope may go: on these days, between these hours, in this zone's wall time.

    Open means the wall clock of `timezone` reads a listed day, not a skipped date, and a time in
    `hours` (opening included, closing not). Business hours in the recipient's zone by default.
    """

    days: list[Weekday] = Field(default=["mon", "tue", "wed", "thu", "fri"], min_length=1)
    # One span or several (a lunch break, a night shift): open in any of them.
    hours: Annotated[
        list[Annotated[str, AfterValidator(_hours)]],
        BeforeValidator(lambda value: [value] if isinstance(value, str) else value),
        Field(min_length=1),
    ] = ["09:00-17:00"]
    timezone: Annotated[str, AfterValidator(_zone_or_recipient)] = RECIPIENT
    skip_dates: list[date] = []

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Each span's opening and closing as seconds after local midnight."""
        return [
            (_seconds_of_day(opens) or 0, _seconds_of_day(closes) or 0)
            for opens, _, closes in (span.partition("-") for span in self.hours)
        ]


class WindowSettings(_Table):
    """What `timezone = "recipient"` means for a message that names no recipient_timezone."""

    default_recipient_timezone: Annotated[str, AfterValidator(lambda name: time_zone(name).key)] = "UTC"


class RampRule(ScopedRule):
    """A new inbox or sender domain's warm-up: `start` a day, `step` more each `period` from its first
    send, up to `ceiling`; held as a rolling window of length `per` like a throttle."""

    start: int = Field(gt=0)
    step: int = Field(default=0, ge=0)
    period: Duration = Field(default=86400.0, gt=0)
    ceiling: int = Field(gt=0)
    per: Duration = Field(default=86400.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.scope not in (ScopeKind.INBOX, ScopeKind.SENDER_DOMAIN):
            raise ValueError("a ramp warms up an inbox or a sender_domain; scope must be one of them")
        if self.ceiling < self.start:
            raise ValueError(f"ceiling {self.ceiling} is below start {self.start}")
        return self

    def limit(self, since_first_ms: int | None) -> int:
        """The limit `since_first_ms` after the first send (None: nothing sent yet); the same
        arithmetic as lua/shared/throttle.lua's."""
        periods = 0 if since_first_ms is None else max(0, since_first_ms) // int(self.period * 1000)
        return min(self.ceiling, self.start + self.step * periods)


# The register is reviewed monthly: a production agent reviewed longer ago than this is overdue.
REVIEW_OVERDUE_AFTER = timedelta(days=31)


def _today() -> date:
    return datetime.now(UTC).date()


def _not_ahead(value: date | None) -> date | None:
    """A test or review that has not happened yet is a typo or a wish; one day of slack lets a
    person east of UTC write their own today."""
    if value is not None and value > _today() + timedelta(days=1):
        raise ValueError(f"{value.isoformat()} is in the future; give the date it happened")
    return value


PastDate = Annotated[date | None, AfterValidator(_not_ahead)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class AgentEntry(_Table):
    """One agent of the register: what it may do, and what a governance review needs to know."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    owner: Text | None = None  # the person or team answerable for it (a production agent needs one)
    builder: Text | None = None  # who built it: a team, a vendor
    # sandbox: every check, throttle and approval as usual, but its mail lands in the outbox, never
    # the relay. Left out, production: a file written before the field keeps sending as it did.
    environment: Literal["sandbox", "production"] = "production"
    systems: list[Text] = []  # the systems it touches (CRM, ticketing, ...)
    data_classes: list[Text] = []  # the kinds of data it handles (contact data, deal notes, ...)
    rollback_plan: Text | None = None  # how to stop it and undo what it did
    last_tested: PastDate = None
    last_reviewed: PastDate = None
    inboxes: list[str] = Field(min_length=1)
    segments: list[str] = ["*"]
    tier: Literal[0, 1] = 0  # 1: every send needs one approval (a new agent, say)
    versions: list[str] = Field(
        default=["*"],
        min_length=1,
        description="agent versions that may send; * matches any run of characters",
    )

    @model_validator(mode="after")
    def _check_inboxes(self) -> AgentEntry:
        for pattern in self.inboxes:
            if "@" not in pattern:
                raise ValueError(f"inbox pattern {pattern!r} must be an address or *@domain")
        return self

    def may_use_inbox(self, address: str) -> bool:
        address = address.lower()
        domain = address.rpartition("@")[2]
        return any(p.lower() in (address, f"*@{domain}") for p in self.inboxes)

    def may_use_segment(self, segment: str | None) -> bool:
        return segment is None or "*" in self.segments or segment in self.segments

    @property
    def needs_segment(self) -> bool:
        """An agent kept to some segments names one in every send: no segment is not a way out."""
        return "*" not in self.segments

    def may_run_version(self, version: str) -> bool:
        return any(fnmatch.fnmatchcase(version, pattern) for pattern in self.versions)


_ALL_SCOPE_KINDS: list[ScopeKind] = [kind for kind in ScopeKind if kind is not ScopeKind.RECIPIENT_DOMAIN]


class SafeModeRules(_Table):
    """When the signals trip safe mode; defaults follow SES and Gmail's published lines."""

    window: Duration = Field(default=3600.0, ge=60)
    scopes: list[ScopeKind] = Field(default=_ALL_SCOPE_KINDS)
    min_sent: int = Field(default=50, ge=1)
    bounce_rate: float = Field(default=0.05, gt=0, le=1)
    complaint_rate: float = Field(default=0.003, gt=0, le=1)
    min_replies: int = Field(default=5, ge=1)
    negative_reply_rate: float = Field(default=0.3, gt=0, le=1)
    abusive_replies: int = Field(default=3, ge=1)
    max_denials: int = Field(default=20, ge=1)

    @field_validator("scopes")
    @classmethod
    def _bounded(cls, scopes: list[ScopeKind]) -> list[ScopeKind]:
        if ScopeKind.RECIPIENT_DOMAIN in scopes:
            # One counter set (and metric label) per recipient domain would grow without bound.
            raise ValueError("recipient_domain cannot be watched; trip a recipient domain by hand instead")
        return list(dict.fromkeys(scopes))


class ApprovalRules(_Table):
    """When people must approve: mass sends (tier 2) and tier-1 agents and shared inboxes."""

    mass_send_threshold: int = Field(default=25, ge=2)
    mass_send_window: Duration = Field(default=3600.0, gt=0)
    ttl: Duration = Field(default=86400.0, gt=0)
    # The most requests (tier 1 and 2) one agent may have pending at once; past it its submissions
    # that need a new one are refused (too_many_approval_requests) until people decide some.
    max_pending_requests: int = Field(default=10, ge=1)
    shared_inboxes: list[str] = []

    @field_validator("shared_inboxes")
    @classmethod
    def _canonical(cls, inboxes: list[str]) -> list[str]:
        for inbox in inboxes:
            if "@" not in inbox:
                raise ValueError(f"{inbox!r} is not an address")
        return [canonical_address(inbox) for inbox in inboxes]

    def is_shared(self, inbox: str) -> bool:
        """Whether mail from `inbox` is from a shared inbox, however its case or `+tag` is spelt."""
        return canonical_address(inbox) in self.shared_inboxes


class DkimRule(_Table):
    """Sign mail from `domain` with the key in `key_file` (relative to the rules file), published
    at `<selector>._domainkey.<domain>`."""

    domain: str = Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", max_length=253)
    selector: str = Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", max_length=63)
    key_file: str = Field(min_length=1)

    @field_validator("domain")
    @classmethod
    def _lower(cls, domain: str) -> str:
        return domain.lower()


class ReplyStopRules(_Table):
    """What a reply stops. `recipient`: the waiting mail to that mailbox (as before). `domain`:
    also the answered agent's mail to everyone else at the replier's company, for `cooldown`
    (free-mail domains are never one company). 30 days: about the length of a multi-touch outbound
    sequence, so the company is not mailed again by the sequence it answered; no standard sets it."""

    by: Literal["recipient", "domain"] = "recipient"
    cooldown: Duration = Field(default=30 * 86400.0, gt=0)


# A reply rule's text pattern runs on text the relay (and the provider behind it) writes, with
# Python's backtracking `re`: a bounded pattern over a bounded slice of the reply keeps it cheap.
REPLY_TEXT_PATTERN_MAX = 300
REPLY_TEXT_SCANNED = 4096
# A group repeated that itself holds a repetition, `(a+)+` or `(\w*x)*`: backtracking can take
# exponential time on a reply that almost matches.
_NESTED_REPETITION = re.compile(r"\((?:[^()\\]|\\.)*[*+}](?:[^()\\]|\\.)*\)[*+{]")


class ReplyAction(StrEnum):
    """What a reply rule does to the scope of the message that got the reply."""

    DEFER = "defer"  # no sends for `duration`, then sending resumes by itself
    TRIP = "trip"  # safe mode: a person resumes
    SLOW = "slow"  # at most `limit` per `per` for `duration`


class ReplyRule(_Table):
    """A pattern on a relay's refusal (code, enhanced code, text) and what to do when it matches."""

    name: str | None = None
    code: str | None = Field(default=None, pattern=r"^[45]([0-9]{2}|xx)$")  # 421, or 4xx for a class
    enhanced: str | None = Field(default=None, pattern=r"^[45](\.[0-9]{1,3}){0,2}$")  # 4.7.28, or 4.7
    text: str | None = Field(default=None, min_length=1, max_length=REPLY_TEXT_PATTERN_MAX)
    scope: ScopeKind
    action: ReplyAction
    duration: Duration | None = Field(default=None, gt=0, le=7 * 86400.0)
    limit: int | None = Field(default=None, gt=0)
    per: Duration | None = Field(default=None, gt=0)

    @field_validator("text")
    @classmethod
    def _compiles(cls, text: str | None) -> str | None:
        if text is None:
            return None
        if _NESTED_REPETITION.search(text):
            raise ValueError(
                f"{text!r} repeats a group that repeats inside: it can take exponential time on a reply; "
                "write it without the nested repetition"
            )
        try:
            re.compile(text, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"{text!r} is not a regular expression: {exc}") from exc
        return text

    @model_validator(mode="after")
    def _complete(self) -> ReplyRule:
        if self.code is None and self.enhanced is None and self.text is None:
            raise ValueError("a reply rule needs at least one of code, enhanced and text")
        if self.action is not ReplyAction.TRIP and self.duration is None:
            raise ValueError(f"a {self.action.value} rule needs a duration")
        if self.action is ReplyAction.TRIP and self.duration is not None:
            raise ValueError("a trip lasts until a person resumes it: a trip rule takes no duration")
        if (self.action is ReplyAction.SLOW) != (self.limit is not None and self.per is not None):
            raise ValueError("limit and per go together, on a slow rule only")
        if self.code and self.enhanced and self.code[0] != self.enhanced[0]:
            raise ValueError(f"code {self.code} and enhanced {self.enhanced} are of different classes")
        return self

    @property
    def label(self) -> str:
        """How the audit trail and notifications name the rule."""
        return self.name or f"{self.code or ''} {self.enhanced or ''} {self.text or ''}".strip()

    @property
    def identity(self) -> str:
        """The rule as a hash of its settings: the same rule after a reload that moved it."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class BlocklistRules(_Table):
    """DNSBL look-ups of the register's sender domains and of the relay's sending IPs."""

    domain_zones: list[str] = []  # domain lists, queried as <domain>.<zone> (Spamhaus DBL style)
    ip_zones: list[str] = []  # IP lists, queried as <reversed address>.<zone> (RFC 5782)
    sending_ips: list[IPvAnyAddress] = []
    interval: Duration = Field(default=900.0, ge=1)

    @field_validator("domain_zones", "ip_zones")
    @classmethod
    def _zone_names(cls, zones: list[str]) -> list[str]:
        for zone in zones:
            if not re.fullmatch(r"(?!-)[a-z0-9-]{1,63}(\.(?!-)[a-z0-9-]{1,63})+\.?", zone.lower()):
                raise ValueError(f"{zone!r} is not a DNS zone name such as 'dbl.spamhaus.org'")
        return list(dict.fromkeys(zone.lower().rstrip(".") for zone in zones))


class RulesFile(_Table):
    ingress: IngressRules = IngressRules()
    safe_mode: SafeModeRules = SafeModeRules()
    approvals: ApprovalRules = ApprovalRules()
    throttle: list[ThrottleRule] = []
    agent: list[AgentEntry] = []
    dkim: list[DkimRule] = []
    reply_stops: ReplyStopRules = ReplyStopRules()
    reply_rule: list[ReplyRule] = []
    blocklists: BlocklistRules = BlocklistRules()
    windows: WindowSettings = WindowSettings()
    window: list[WindowRule] = []
    ramp: list[RampRule] = []


@dataclass(frozen=True)
class Rules:
    """A loaded rules file with its lists; `version` is the file's content hash, for the record."""

    path: Path
    version: str
    file: RulesFile
    free_domains: frozenset[str]
    role_accounts: frozenset[str]
    disposable_domains: frozenset[str]
    # sender domain -> its signer, keys read from `[[dkim]]` key files at load (never logged)
    dkim_signers: Mapping[str, DkimSigner] = field(default_factory=dict)

    def agent(self, name: str) -> AgentEntry | None:
        return next((a for a in self.file.agent if a.name == name), None)

    def sender_domains(self) -> list[str]:
        """Every domain the register lets an agent send from, sorted: the domains DNS must vouch for."""
        return sorted({inbox.rpartition("@")[2].lower() for a in self.file.agent for inbox in a.inboxes})

    def warnings(self) -> list[str]:
        """What the file allows that a hijacked agent could use, for `sendguard rules check` to say.

        An agent that may use `*@domain` can send as any address there (ceo@ included), and every
        address it makes up gets a per-inbox throttle bucket of its own. A production agent
        reaches real people, so it needs an owner, a rollback plan and a review within the month;
        a sandbox agent reaches nobody, and its promotion is the rules change that gets checked.
        """
        capped = {rule.scope for rule in self.file.throttle if rule.match == "*"}
        missing = [kind.value for kind in (ScopeKind.AGENT, ScopeKind.SENDER_DOMAIN) if kind not in capped]
        unless = f"; this file has no {' or '.join(missing)} throttle to cap it" if missing else ""
        found = []
        for number, agent in enumerate(self.file.agent, start=1):
            for pattern in agent.inboxes:
                if pattern.startswith("*@"):
                    domain = pattern[2:].lower()
                    found.append(
                        f"rules file {self.path}: [[agent]] #{number} key 'inboxes': {agent.name!r} may send "
                        f"as any address at {domain}, ceo@{domain} included, each with a per-inbox "
                        f"throttle of its own{unless}; list its inboxes one by one"
                    )
            if agent.environment == "production":
                found += [
                    f"rules file {self.path}: [[agent]] #{number} key '{key}': production agent "
                    f"{agent.name!r} {problem}"
                    for key, problem in governance_gaps(agent)
                ]
        return found


def governance_gaps(agent: AgentEntry) -> list[tuple[str, str]]:
    """(key, what is missing) for what a production agent's register entry lacks."""
    gaps = []
    if agent.owner is None:
        gaps.append(("owner", "has no owner: name the person or team answerable for it"))
    if agent.rollback_plan is None:
        gaps.append(("rollback_plan", "has no rollback plan: say how to stop it and undo what it did"))
    if agent.last_reviewed is None:
        gaps.append(("last_reviewed", "has never been reviewed: the register is reviewed monthly"))
    elif (age := _today() - agent.last_reviewed) > REVIEW_OVERDUE_AFTER:
        gaps.append(
            (
                "last_reviewed",
                f"was last reviewed {agent.last_reviewed.isoformat()}, {age.days} days ago: the register "
                f"is reviewed monthly (overdue after {REVIEW_OVERDUE_AFTER.days} days)",
            )
        )
    return gaps


@dataclass(frozen=True)
class RulesChanges:
    """What differs between two loaded rules files, as a person reloading them wants to see it."""

    sections: list[str]  # top-level tables and lists whose values differ (the agent register apart)
    agents_added: list[str]
    agents_removed: list[str]
    agents_changed: list[str]
    # agent -> the environment it is in now, for agents kept whose environment changed: a
    # promotion to production (or a step back to sandbox) is the change a reviewer looks for
    environments: dict[str, str]


def rules_changes(before: Rules, after: Rules) -> RulesChanges:
    """Compare by value, not text: a reworded comment changes the version and nothing here."""
    sections = [
        name
        for name in RulesFile.model_fields
        if name != "agent" and getattr(before.file, name) != getattr(after.file, name)
    ]
    sections += [
        name
        for name in ("free_domains", "role_accounts", "disposable_domains")
        if getattr(before, name) != getattr(after, name)
    ]
    old = {agent.name: agent for agent in before.file.agent}
    new = {agent.name: agent for agent in after.file.agent}
    return RulesChanges(
        sections=sections,
        agents_added=sorted(new.keys() - old.keys()),
        agents_removed=sorted(old.keys() - new.keys()),
        agents_changed=sorted(name for name in old.keys() & new.keys() if old[name] != new[name]),
        environments={
            name: new[name].environment
            for name in sorted(old.keys() & new.keys())
            if old[name].environment != new[name].environment
        },
    )


class CurrentRules:
    """The rules in force, held for the parts that read them at each use; a reload swaps `now`.

    Made before those parts, so none of them needs a way back to whatever owns the reload.
    """

    def __init__(self, rules: Rules) -> None:
        self.now = rules


def packaged_rules_dir() -> Path:
    """The default rules shipped inside the wheel, or the repo's `rules/` in a source checkout."""
    packaged = Path(str(resources.files("sendguard"))) / "_rules"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "rules"


def default_rules_path(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    local = Path("rules/sendguard.toml")
    return local if local.is_file() else packaged_rules_dir() / "sendguard.toml"


def load_rules(path: Path) -> Rules:
    """Read and validate a rules file; ConfigError names the file, table and key on any fault."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"rules file {path}: cannot be read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"rules file {path}: not valid TOML: {exc}") from exc
    try:
        parsed = RulesFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc)) from exc
    first_seen: dict[str, int] = {}
    for number, agent in enumerate(parsed.agent, start=1):
        if agent.name in first_seen:
            raise ConfigError(
                f"rules file {path}: [[agent]] #{number} key 'name': {agent.name!r} "
                f"repeats [[agent]] #{first_seen[agent.name]}"
            )
        first_seen[agent.name] = number
    return Rules(
        path=path,
        version=hashlib.sha256(raw).hexdigest()[:16],
        file=parsed,
        free_domains=_read_list(path, parsed.ingress, "free_domains"),
        role_accounts=_read_list(path, parsed.ingress, "role_accounts"),
        disposable_domains=_read_list(path, parsed.ingress, "disposable_domains"),
        dkim_signers=_dkim_signers(path, parsed.dkim),
    )


def _dkim_signers(rules_path: Path, rules: list[DkimRule]) -> dict[str, DkimSigner]:
    """Each `[[dkim]]` key read and parsed now, so a bad key file fails the load, not a delivery."""
    signers: dict[str, DkimSigner] = {}
    for number, rule in enumerate(rules, start=1):
        where = f"rules file {rules_path}: [[dkim]] #{number}"
        if rule.domain in signers:
            raise ConfigError(f"{where} key 'domain': {rule.domain} has a key already")
        try:
            signers[rule.domain] = DkimSigner.from_file(
                rule.domain, rule.selector, rules_path.parent / rule.key_file
            )
        except ValueError as exc:
            raise ConfigError(f"{where} key 'key_file': {exc}") from exc
    return signers


def _read_list(rules_path: Path, ingress: IngressRules, name: str) -> frozenset[str]:
    key = f"{name}_list"
    configured: str | None = getattr(ingress, key)
    if configured is None:
        list_path = packaged_rules_dir() / "lists" / f"{name}.txt"
    else:
        list_path = rules_path.parent / configured
    try:
        text = list_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"rules file {rules_path}: [ingress] key '{key}': cannot read {list_path}: {exc.strerror}"
        ) from exc
    return _entries(text)


@functools.lru_cache(maxsize=3)  # a rules file's three lists
def _entries(text: str) -> frozenset[str]:
    """A list file's entries, in lower case, without comments. Kept by the file's text: every load
    (each daemon a process builds, each reload) reads the same lists, and the 10,000 disposable
    domains take 3 ms to read into a set; the file is still read each time, so an edit is seen."""
    return frozenset(entry.lower() for line in text.splitlines() if (entry := line.split("#", 1)[0].strip()))


def _describe(path: Path, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        loc = list(error["loc"])
        table = "top level"
        if loc and loc[0] in ("throttle", "agent", "dkim", "reply_rule", "window", "ramp"):
            name = loc.pop(0)
            table = f"[[{name}]] #{loc.pop(0) + 1}" if loc and isinstance(loc[0], int) else f"[[{name}]]"
        elif loc and loc[0] in ("ingress", "safe_mode", "approvals", "reply_stops", "blocklists", "windows"):
            table = f"[{loc.pop(0)}]"
        key = ".".join(str(part) for part in loc)
        where = f"{table} key '{key}'" if key else table
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"rules file {path}: {where}: {message}")
    return "\n".join(problems)
