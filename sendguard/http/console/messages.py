"""Messages in the console: find them, and one message's page with its whole timeline.

How a search stays bounded. Messages have no secondary index (by agent, segment, campaign or
status), and a page must not read unbounded data while someone waits for it. So a search takes
its candidates from the narrowest place one of its criteria names, reads at most `EXAMINED`
entries there, and matches every candidate's few fields (read in pipelined batches) against all
the criteria:

- an id: that record alone;
- held in scope X: the scope's `held:` set;
- a recipient: the mailbox's `waiting:` set (messages still waiting for it) and the last message
  sent to the address; earlier finished messages to it are in no index and are not found;
- waiting for a throttle, or status queued or deferred: the due queue; status sending: the claims;
- anything else (agent, segment, campaign, a finished status): a SCAN over the records that walks
  at most `EXAMINED` keys.

When the cap is reached the page says so and asks for a narrower search; the newest `SHOWN`
matches are listed. An index per agent, segment and campaign is the next step if that is often.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response

from sendguard.feedback.events import EventType
from sendguard.governance.audit import AuditEntry
from sendguard.governance.roles import Role
from sendguard.governance.sessions import Session
from sendguard.http.access import RuntimeDep
from sendguard.http.console.pages import PageError, allowed, page, recent_audit, section_router
from sendguard.model import Status, canonical_address
from sendguard.record import MessageRecord, Wait
from sendguard.rules import ScopeKind
from sendguard.scopes import parse_scope
from sendguard.state.store import IdSource, Store

router = section_router()
Looking = Annotated[Session, Depends(allowed(Role.OPERATOR, Role.ADMIN))]

EXAMINED = 20_000  # candidates (or, for a SCAN, keys) a search reads at most
SHOWN = 100  # matches listed, newest first
_BATCH = 500  # records read per round trip
_WAITS = [kind.value for kind in ScopeKind] + [wait.value for wait in Wait]  # what a message may wait for
# The fields a search matches on and lists; never the bodies.
_FIELDS = [
    "created",
    "agent",
    "to",
    "to_canonical",
    "segment",
    "campaign",
    "held_by",
    "waiting_for",
    "scopes",
    "subject",
]
_EVENTS = frozenset(event.value for event in EventType)


@dataclass(frozen=True)
class Query:
    """What a person looks for; every criterion given must hold. `scope` is not on the form: the
    safe-mode page counts with it what a trip would hold."""

    id: str = ""
    recipient: str = ""
    agent: str = ""
    segment: str = ""
    campaign: str = ""
    status: str = ""
    held_in: str = ""
    waiting_for: str = ""
    scope: str = ""

    @classmethod
    def from_form(cls, given: Mapping[str, str]) -> Query:
        """The query of the search form; PageError naming the field that is not what it should be."""
        query = cls(**{f.name: given.get(f.name, "").strip() for f in fields(cls) if f.name != "scope"})
        if query.id and not query.id.isalnum():
            raise PageError(422, f"A message id is letters and digits only; {query.id!r} is not one.")
        if query.status and query.status not in {one.value for one in Status}:
            known = ", ".join(status.value for status in Status)
            raise PageError(422, f"Status must be one of {known}; {query.status!r} is not.")
        if query.waiting_for and query.waiting_for not in _WAITS:
            known = ", ".join(_WAITS)
            raise PageError(
                422,
                f"Waiting for is a throttle's scope kind, a send window or the mass-send line ({known}); "
                f"{query.waiting_for!r} is not.",
            )
        if query.held_in:
            try:
                return cls(**{**query.__dict__, "held_in": parse_scope(query.held_in)})
            except ValueError as exc:
                raise PageError(422, f"Held in scope: {exc}.") from exc
        return query

    @property
    def given(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def source(self) -> tuple[IdSource, str]:
        """Where the candidates are: the narrowest place a criterion names (see the docstring)."""
        if self.held_in:
            return "held", self.held_in
        if self.recipient:
            return "waiting", self.recipient
        if self.waiting_for or self.scope or self.status in (Status.QUEUED, Status.DEFERRED):
            return "due", ""
        if self.status == Status.SENDING:
            return "inflight", ""
        return "all", ""

    def matches(self, record: MessageRecord) -> bool:
        return all(
            (
                not self.recipient or record.to_canonical == canonical_address(self.recipient),
                not self.agent or record.agent == self.agent,
                not self.segment or record.segment == self.segment,
                not self.campaign or record.campaign == self.campaign,
                not self.status or record.status == self.status,
                not self.held_in or record.held_by == self.held_in,
                not self.waiting_for or record.waiting_for == self.waiting_for,
                not self.scope or self.scope in record.scopes,
            )
        )


@dataclass(frozen=True)
class Found:
    shown: list[MessageRecord]  # the newest matches
    matched: int
    examined: int
    complete: bool  # False: the cap stopped the search before every candidate was read


async def search(store: Store, query: Query, cap: int = EXAMINED) -> Found:
    """The messages that match `query`, from at most `cap` candidates (see the module docstring)."""
    if query.id:
        ids, complete = [query.id], True
    else:
        source, value = query.source()
        ids, complete = await store.message_ids(source, value, cap=cap)
        if query.recipient and (last := await store.last_sent(query.recipient)) and last not in ids:
            ids.append(last)
    matched: list[MessageRecord] = []
    for start in range(0, len(ids), _BATCH):
        records = await store.records(ids[start : start + _BATCH], _FIELDS)
        matched += [record for record in records if record is not None and query.matches(record)]
    matched.sort(key=lambda record: record.created or 0, reverse=True)
    return Found(matched[:SHOWN], len(matched), len(ids), complete)


@router.get("/messages")
async def messages(request: Request, runtime: RuntimeDep, session: Looking) -> Response:
    try:
        query = Query.from_form(request.query_params)
    except PageError as problem:
        return _search_page(request, session, Query(), None, problem.status, problem.message)
    found = await search(runtime.store, query) if query.given else None
    return _search_page(request, session, query, found)


def _search_page(
    request: Request,
    session: Session,
    query: Query,
    found: Found | None,
    status: int = 200,
    problem: str = "",
) -> Response:
    return page(
        request,
        "messages.html",
        session,
        status,
        query=query,
        found=found,
        problem=problem,
        statuses=[one.value for one in Status],
        kinds=_WAITS,
    )


@dataclass(frozen=True)
class Moment:
    """One line of a message's timeline."""

    at: int
    what: str  # transition, event, SMTP reply or audit
    title: str
    detail: str
    by: str


def _from_history(entry: Mapping[str, Any]) -> Moment:
    cause, status = str(entry["cause"]), str(entry["status"])
    if cause in _EVENTS:
        return Moment(int(entry["at"]), "event", cause, str(entry["detail"]), "")
    return Moment(int(entry["at"]), "transition", f"{status} ({cause})", str(entry["detail"]), "")


def _from_audit(entry: AuditEntry) -> Moment:
    shown = {name: value for name, value in entry.fields.items() if value not in (None, "", [])}
    code = shown.pop("smtp_code", None)
    reply = shown.pop("smtp_text", "")
    for known in ("message_id", "agent"):
        shown.pop(known, None)
    detail = ", ".join(
        f"{name} {value if isinstance(value, str) else json.dumps(value)}" for name, value in shown.items()
    )
    if code is not None:
        return Moment(
            entry.at, "SMTP reply", f"{code} {reply}", f"{entry.kind} #{entry.seq}: {detail}", entry.actor
        )
    return Moment(entry.at, "audit", f"{entry.kind} #{entry.seq}", detail, entry.actor)


@router.get("/messages/{message_id}")
async def one(message_id: str, request: Request, runtime: RuntimeDep, session: Looking) -> Response:
    found = await runtime.store.get(message_id) if message_id.isalnum() else None
    if found is None:
        raise PageError(404, f"There is no message {message_id} (messages are kept 30 days).")
    record, history = found
    entries, cut = await recent_audit(runtime, lambda entry: entry.fields.get("message_id") == message_id)
    moments = [_from_history(entry) for entry in history] + [_from_audit(entry) for entry in entries]
    moments.sort(key=lambda moment: moment.at)  # stable: a transition before the entry written with it
    return page(request, "message.html", session, m=record, moments=moments, audit_cut=cut)
