"""Scopes: the slices of traffic a throttle counts and a safe-mode trip stops.

A scope is written `global` or `<kind>:<value>` (`segment:cfo-na-q4`, `inbox:alice@acme.example`),
the form people type, the API returns and Redis stores.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from sendguard.errors import InvalidValue
from sendguard.model import Address, canonical_address, normal_address
from sendguard.rules import AgentEntry, Rules, ScopeKind

GLOBAL = "global"


class Scoped(Protocol):
    """The fields a message's scopes are read from: its record's (`MessageRecord`), or a recipient's
    before its record is built."""

    @property
    def to_domain(self) -> str: ...
    @property
    def from_addr(self) -> str: ...
    @property
    def segment(self) -> str | None: ...
    @property
    def campaign(self) -> str | None: ...
    @property
    def agent(self) -> str: ...


def scope_values(record: Scoped) -> dict[ScopeKind, str | None]:
    """The value a message has for each scope kind (None: the scope does not apply).

    The inbox is the mailbox the From address reaches (`Alice+x@Acme.example` is
    `alice@acme.example`), so an agent cannot invent tags to get a throttle bucket or a safe-mode
    scope of its own.
    """
    inbox = canonical_address(record.from_addr)
    return _values(record.to_domain, inbox, record.segment, record.campaign, record.agent)


@functools.lru_cache(maxsize=4096)
def admitted_scopes(
    to_domain: str, from_addr: str, segment: str | None, campaign: str | None, agent: str
) -> tuple[str, ...]:
    """The scopes a new message with these fields is in (`message_scopes` of its `scope_values`).

    Cached: a batch's thousands of recipients share all of them but a few recipient domains."""
    return scopes_of(to_domain, canonical_address(from_addr), segment, campaign, agent)


@functools.lru_cache(maxsize=4096)
def scopes_of(
    to_domain: str, inbox: str, segment: str | None, campaign: str | None, agent: str
) -> tuple[str, ...]:
    """The scopes of a message whose From mailbox is `inbox`, most specific first: the one rule in
    Python (lua/shared/record.lua's `derived_scopes` is its twin in Redis). Cached: a claim reads
    them back from a stored record's fields, which thousands of messages share."""
    return tuple(message_scopes(_values(to_domain, inbox, segment, campaign, agent)))


def _values(
    to_domain: str, inbox: str, segment: str | None, campaign: str | None, agent: str
) -> dict[ScopeKind, str | None]:
    return {
        ScopeKind.RECIPIENT_DOMAIN: to_domain,
        ScopeKind.SENDER_DOMAIN: inbox.rpartition("@")[2],
        ScopeKind.INBOX: inbox,
        ScopeKind.SEGMENT: segment,
        ScopeKind.CAMPAIGN: campaign,
        ScopeKind.AGENT: agent,
        ScopeKind.GLOBAL: "*",
    }


def scope_name(kind: ScopeKind, value: str) -> str:
    return GLOBAL if kind is ScopeKind.GLOBAL else f"{kind.value}:{value}"


def message_scopes(
    values: Mapping[ScopeKind, str | None], kinds: Iterable[ScopeKind] = ScopeKind
) -> list[str]:
    """The scope names a message belongs to, for the given kinds."""
    return [scope_name(kind, value) for kind in kinds if (value := values.get(kind)) is not None]


def parse_scope(text: str) -> str:
    """A scope a person typed, in the form its messages' scopes take (`scope_values`), so that a
    trip or a lookup by any spelling of a scope is the trip or lookup of that scope: an agent's name
    in lower case (as the register spells every name), an inbox as its mailbox (`canonical_address`),
    a sender domain in the Unicode form of a sender's address and a recipient domain in its IDNA
    form, either without a trailing dot. A segment or campaign is an agent's own label, matched as
    the agent wrote it (`segment:Q4` and `segment:q4` are two), so it is only trimmed.

    InvalidValue (a ValueError) says what a scope looks like. Whether an agent is in the register is
    `trip_scope`'s to say: a trip of an agent that is not holds nothing, a resume of one removed
    since it was tripped must still be possible.
    """
    text = text.strip()
    if text == GLOBAL:
        return GLOBAL
    kind_text, sep, value = text.partition(":")
    kinds = ", ".join(k.value for k in ScopeKind if k is not ScopeKind.GLOBAL)
    try:
        kind = ScopeKind(kind_text)
    except ValueError:
        kind = None
    if not sep or kind is None or kind is ScopeKind.GLOBAL or not value.strip():
        raise InvalidValue(
            "scope", f"scope {text!r} must be 'global' or '<kind>:<value>' with kind one of {kinds}"
        )
    return scope_name(kind, _canonical_value(kind, value.strip()))


def _canonical_value(kind: ScopeKind, value: str) -> str:
    if kind is ScopeKind.AGENT:
        return value.lower()
    if kind is ScopeKind.INBOX:
        local, at, domain = value.rpartition("@")
        typed = f"{local}{at}{domain.rstrip('.')}" if at else value
        return _normal(typed, lambda normal: normal.canonical) or canonical_address(typed)
    if kind in (ScopeKind.SENDER_DOMAIN, ScopeKind.RECIPIENT_DOMAIN):
        domain = value.rstrip(".").lower() or value.lower()
        # A sender domain as a sender's address has it (Unicode), a recipient's as the checks do (IDNA).
        if kind is ScopeKind.SENDER_DOMAIN:
            return _normal(f"a@{domain}", lambda normal: normal.domain) or domain
        return _normal(f"a@{domain}", lambda normal: normal.ascii_domain) or domain
    return value


def _normal(address: str, form: Callable[[Address], str]) -> str | None:
    """`form` of the address as sendguard stores it, or None when it is not one (kept as typed)."""
    try:
        return form(normal_address(address))
    except ValueError:
        return None


def trip_scope(text: str, rules: Rules) -> str:
    """A scope to trip, as `parse_scope` reads it, if it is no `agent:` scope or names an agent in
    the register; else InvalidValue naming the agent, since its trip would answer "tripped" and
    hold nothing."""
    scope = parse_scope(text)
    kind, _, value = scope.partition(":")
    if kind == ScopeKind.AGENT and rules.agent(value) is None:
        raise InvalidValue(
            "scope", f"no agent {value!r} in the rules' register: a trip of {scope} would hold nothing"
        )
    return scope


def split_scope(scope: str) -> tuple[str, str]:
    """(kind, value) for metric labels; global is ("global", "global")."""
    kind, _, value = scope.partition(":")
    return kind, value or GLOBAL


def agent_in(scopes: Iterable[str]) -> str:
    """The agent an `agent:` scope among `scopes` names ('' for none): whose activity an event counts in."""
    return next((value for kind, value in map(split_scope, scopes) if kind == ScopeKind.AGENT), "")


def agent_values(agent: AgentEntry) -> dict[ScopeKind, list[str]]:
    """The scope values every message of an agent may have, kind by kind, as far as its register
    entry says: its name, its inboxes' mailboxes and domains, the segments it is kept to. A
    campaign, a recipient domain or a segment of an agent that may use any is known only per message.
    """
    exact = [canonical_address(inbox) for inbox in agent.inboxes if not inbox.startswith("*@")]
    return {
        ScopeKind.GLOBAL: ["*"],
        ScopeKind.AGENT: [agent.name],
        ScopeKind.INBOX: exact,
        ScopeKind.SENDER_DOMAIN: sorted({inbox.rpartition("@")[2].lower() for inbox in agent.inboxes}),
        ScopeKind.SEGMENT: [] if "*" in agent.segments else list(agent.segments),
        ScopeKind.CAMPAIGN: [],
        ScopeKind.RECIPIENT_DOMAIN: [],
    }


def concerns(agent: AgentEntry, scope: str) -> bool:
    """Whether a scope (a safe-mode trip, a throttle bucket) can stop or slow a message the agent may
    send: global, its own agent scope, its inboxes and their domains, segments it may use, any campaign."""
    kind, _, value = scope.partition(":")
    if kind == GLOBAL or kind == ScopeKind.CAMPAIGN:
        return True
    if kind == ScopeKind.AGENT:
        return value == agent.name
    if kind == ScopeKind.INBOX:
        return agent.may_use_inbox(value)
    if kind == ScopeKind.SENDER_DOMAIN:
        return value in agent_values(agent)[ScopeKind.SENDER_DOMAIN]
    if kind == ScopeKind.SEGMENT:
        return agent.may_use_segment(value)
    return False
