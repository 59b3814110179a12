"""Control routes: recall what has not gone out, reload the rules, read the audit trail and the register."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from sendguard.governance.approvals import Request
from sendguard.governance.register import agents_report
from sendguard.governance.tokens import Principal
from sendguard.http.access import Admin, Approver, Auditor, Operator, RegisterReader, Reviewer, RuntimeDep
from sendguard.http.docs import Tag
from sendguard.http.errors import SIGNED_IN, error_responses
from sendguard.model import iso_ms
from sendguard.parts import Runtime
from sendguard.rules import rules_changes
from sendguard.submission import parse_sender

router = APIRouter()


class RecallIn(BaseModel):
    """Which messages to call back: all given fields must match."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"campaign": "q4", "reason": "wrong price in the template"}]},
    )

    agent: str | None = None
    campaign: str | None = None
    segment: str | None = None
    batch: str | None = None
    inbox: str | None = Field(default=None, description="the From address")
    reason: str = Field(min_length=1, max_length=500)

    @field_validator("inbox")
    @classmethod
    def _normalised(cls, inbox: str | None) -> str | None:
        """The address as submissions store it (lower case, Unicode domain), or nothing matches."""
        return parse_sender(inbox).address if inbox is not None else None

    @model_validator(mode="after")
    def _some_filter(self) -> "RecallIn":
        if not self.filters:
            raise ValueError("give at least one of agent, campaign, segment, batch, inbox")
        return self

    @property
    def filters(self) -> dict[str, str]:
        fields = {
            "agent": self.agent,
            "campaign": self.campaign,
            "segment": self.segment,
            "batch": self.batch,
            "from_addr": self.inbox,
        }
        return {name: value for name, value in fields.items() if value}


class RecallOut(BaseModel):
    cancelled: int
    by_state: dict[str, int] = Field(description="how many were held, queued or deferred")


class RulesOut(BaseModel):
    version: str
    previous_version: str
    path: str
    changed: list[str] = Field(
        description="top-level tables and lists whose values differ: ingress, safe_mode, approvals, "
        "throttle, free_domains, role_accounts, disposable_domains"
    )
    agents_added: list[str]
    agents_removed: list[str]
    agents_changed: list[str]
    environments: dict[str, str] = Field(
        description="agents kept whose environment changed, with the one they are in now"
    )


@router.post(
    "/v1/recall",
    response_model=RecallOut,
    tags=[Tag.CONTROL],
    summary="Recall messages",
    responses=error_responses(*SIGNED_IN, 413, 422),
)
async def recall(body: RecallIn, runtime: RuntimeDep, who: Operator) -> RecallOut:
    """Cancel every matching message not yet sent (all given filters must match); those already
    sending cannot be called back. The answer counts them by the state they were in."""
    counts = await runtime.recall(body.filters, body.reason, who)
    return RecallOut(cancelled=sum(counts.values()), by_state=counts)


@router.post(
    "/v1/rules/reload",
    response_model=RulesOut,
    tags=[Tag.CONTROL],
    summary="Reload the rules",
    responses=error_responses(*SIGNED_IN, (422, "the rules file does not validate: the key is named")),
)
async def reload_rules(runtime: RuntimeDep, who: Admin) -> RulesOut:
    """Read the rules file again; a file that does not validate is refused and the old rules stay.
    The answer has both versions and what changed."""
    previous = await runtime.reload(who.actor)
    current = runtime.rules
    changes = rules_changes(previous, current)
    return RulesOut(
        version=current.version,
        previous_version=previous.version,
        path=str(current.path),
        changed=changes.sections,
        agents_added=changes.agents_added,
        agents_removed=changes.agents_removed,
        agents_changed=changes.agents_changed,
        environments=changes.environments,
    )


@router.get(
    "/v1/agents", tags=[Tag.AGENTS], summary="Read the agent register", responses=error_responses(*SIGNED_IN)
)
async def list_agents(runtime: RuntimeDep, who: RegisterReader) -> list[dict[str, Any]]:
    """The agent register in force, every field, with what each production agent lacks for a review
    (`gaps`) and its last 24 hours (`activity`)."""
    return [report.to_dict() for report in await agents_report(runtime.redis, runtime.keys, runtime.rules)]


@router.get(
    "/v1/audit",
    tags=[Tag.AUDIT],
    summary="Read the audit trail",
    responses=error_responses(*SIGNED_IN, (409, "the trail cannot be read as it stands"), 422),
)
async def audit_trail(
    runtime: RuntimeDep,
    who: Auditor,
    message_id: str | None = None,
    agent: str | None = None,
    batch: str | None = None,
    kind: Annotated[str | None, Query(description="the entry's kind, e.g. suppression.added")] = None,
    since: Annotated[AwareDatetime | None, Query(description="RFC 3339 with a zone")] = None,
    until: Annotated[AwareDatetime | None, Query(description="RFC 3339 with a zone")] = None,
    after: Annotated[int, Query(ge=0, description="only entries after this sequence number")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Chained audit entries, oldest first, filtered; page with `after` (the last `seq` seen)."""
    found = await runtime.audit.entries(
        message_id=message_id,
        agent=agent,
        batch=batch,
        kind=kind,
        since_ms=_ms(since),
        until_ms=_ms(until),
        after_seq=after,
        limit=limit,
    )
    return [entry.to_dict() for entry in found]


def _ms(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment else None


class DecisionIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"comment": "list checked with sales; go"}]}
    )

    comment: str = Field(min_length=1, max_length=1000, description="why; recorded with the decision")


def _request_out(request: Request) -> dict[str, Any]:
    out = dict(request.__dict__)
    out["created"], out["expires"] = iso_ms(request.created), iso_ms(request.expires)
    out["headroom_until"] = iso_ms(request.headroom_until) or None
    out["decisions"] = [decision | {"at": iso_ms(decision["at"])} for decision in request.decisions]
    out["approvals_given"], out["approvals_needed"] = request.approvals_given, request.approvals_needed
    out["releases"] = request.releases()
    return out


@router.get(
    "/v1/approvals",
    tags=[Tag.APPROVALS],
    summary="List approval requests",
    responses=error_responses(*SIGNED_IN, 422),
)
async def list_approvals(
    runtime: RuntimeDep,
    who: Reviewer,
    status: Annotated[str | None, Query(pattern="^(pending|approved|denied|expired)$")] = None,
) -> list[dict[str, Any]]:
    """Approval requests, newest first (pending ones by expiry, soonest first): tier, why,
    requester, decisions, expiry."""
    return [_request_out(request) for request in await runtime.approvals.list(status)]


@router.get(
    "/v1/approvals/{approval_id}",
    tags=[Tag.APPROVALS],
    summary="Read an approval request",
    responses=error_responses(*SIGNED_IN, (404, "no such approval request"), 422),
)
async def show_approval(approval_id: str, runtime: RuntimeDep, who: Reviewer) -> dict[str, Any]:
    """One request and exactly what it would release: counts, breakdowns, sample messages."""
    request = await runtime.approvals.get(approval_id) if approval_id.isalnum() else None
    if request is None:
        raise HTTPException(404, f"no approval request {approval_id}")
    return _request_out(request) | {"contents": await runtime.approvals.contents(approval_id)}


_DECISION_ERRORS = error_responses(
    *SIGNED_IN,
    (404, "no such approval request"),
    (409, "the approval rules do not allow this decision: the rule is named"),
    413,
    422,
)


@router.post(
    "/v1/approvals/{approval_id}/approve",
    tags=[Tag.APPROVALS],
    summary="Approve a request",
    responses=_DECISION_ERRORS,
)
async def approve(approval_id: str, body: DecisionIn, runtime: RuntimeDep, who: Approver) -> dict[str, Any]:
    """Tier 1 needs one approval, tier 2 two, from different people in different groups; the
    request's messages go out once it has them. The comment is recorded with the decision."""
    return await _decide(approval_id, body, runtime, who, approve=True)


@router.post(
    "/v1/approvals/{approval_id}/deny",
    tags=[Tag.APPROVALS],
    summary="Deny a request",
    responses=_DECISION_ERRORS,
)
async def deny(approval_id: str, body: DecisionIn, runtime: RuntimeDep, who: Approver) -> dict[str, Any]:
    """One denial cancels the request's messages (`approval_denied`). The comment is recorded with
    the decision."""
    return await _decide(approval_id, body, runtime, who, approve=False)


async def _decide(
    approval_id: str, body: DecisionIn, runtime: Runtime, who: Principal, *, approve: bool
) -> dict[str, Any]:
    request = await runtime.approvals.decide(approval_id, who, approve, body.comment)
    return _request_out(request)
