"""Approvals in the console: the queue, one request with what it would send, and the decision.

A request's page shows its samples (text as text, HTML only in a sandboxed frame served with a
policy of its own), the breakdowns, the decisions so far, and a word diff against the last
approved send of the same agent and campaign (or segment). Only approvers decide; operators and
admins see the same pages without the form.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response

from sendguard.governance.approvals import ApprovalRefused
from sendguard.governance.approvals import Request as ApprovalRequest
from sendguard.governance.roles import Role
from sendguard.governance.sessions import Session
from sendguard.governance.tokens import normal_name
from sendguard.http.access import RuntimeDep
from sendguard.http.console.diff import MAX_WORDS, word_diff
from sendguard.http.console.pages import SAMPLE_POLICY, Form, PageError, acting, allowed, page, section_router
from sendguard.parts import Runtime

router = section_router()
Reviewer = Annotated[Session, Depends(allowed(Role.APPROVER, Role.OPERATOR, Role.ADMIN))]
Deciding = Annotated[Form, Depends(acting(Role.APPROVER))]


async def _request(runtime: Runtime, approval_id: str) -> ApprovalRequest:
    found = await runtime.approvals.get(approval_id) if approval_id.isalnum() else None
    if found is None:
        raise PageError(404, f"There is no approval request {approval_id}.")
    return found


@router.get("/approvals")
async def queue(request: Request, runtime: RuntimeDep, session: Reviewer) -> Response:
    pending = await runtime.approvals.list("pending")
    decided = [r for r in await runtime.approvals.list(None, limit=50) if r.status != "pending"]
    counts = await runtime.approvals.sizes(pending)
    return page(request, "approvals.html", session, pending=pending, decided=decided, counts=counts)


async def _comparison(runtime: Runtime, request: ApprovalRequest) -> dict[str, Any] | None:
    """This request's first message against the last approved one like it, field by field."""
    first = await runtime.approvals.first_message(request.id)
    if first is None:
        return None
    earlier = await runtime.approvals.last_approved_like(request, first)
    if earlier is None:
        return {"earlier": None, "first": first}
    previous, message = earlier
    return {
        "earlier": previous,
        "first": first,
        "subject": word_diff(message.subject, first.subject),
        "text": word_diff(message.text, first.text),
        "html": word_diff(message.html, first.html),
        "rules": (previous.rules_version, request.rules_version),
        "max_words": f"{MAX_WORDS:,}",
    }


async def _request_page(
    request: Request,
    runtime: Runtime,
    session: Session,
    approval_id: str,
    status: int = 200,
    refusal: str = "",
) -> Response:
    found = await _request(runtime, approval_id)
    return page(
        request,
        "approval.html",
        session,
        status,
        request_=found,
        contents=await runtime.approvals.contents(approval_id),
        compared=await _comparison(runtime, found),
        may_decide=session.principal.role is Role.APPROVER and found.status == "pending",
        refusal=refusal,
    )


@router.get("/approvals/{approval_id}")
async def one(approval_id: str, request: Request, runtime: RuntimeDep, session: Reviewer) -> Response:
    return await _request_page(request, runtime, session, approval_id)


@router.get("/approvals/{approval_id}/samples/{message_id}")
async def sample_html(approval_id: str, message_id: str, runtime: RuntimeDep, session: Reviewer) -> Response:
    """A sample's HTML part, for the sandboxed frame: its own policy lets nothing run or load."""
    html = await runtime.approvals.message_html((await _request(runtime, approval_id)).id, message_id)
    if not html:
        raise PageError(404, f"Request {approval_id} has no message {message_id} with an HTML part.")
    return Response(
        html,
        media_type="text/html",
        headers={
            "Content-Security-Policy": SAMPLE_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


@router.post("/approvals/{approval_id}/decide")
async def decide(approval_id: str, request: Request, runtime: RuntimeDep, signed: Deciding) -> Response:
    session, form = signed
    verdict, comment = form.get("verdict", ""), form.get("comment", "").strip()
    if verdict not in ("approve", "deny"):
        raise PageError(422, "Choose Approve or Deny.")
    if not 1 <= len(comment) <= 1000:
        problem = "Write a comment (up to 1,000 characters): it is recorded with your decision."
        return await _request_page(request, runtime, session, approval_id, 422, problem)
    found = await _request(runtime, approval_id)
    try:
        await runtime.approvals.decide(approval_id, session.principal, verdict == "approve", comment)
    except ApprovalRefused as refused:
        agent = runtime.rules.agent(found.agent)
        owner = _owner_group(agent.owner) if agent and agent.owner else ""
        explained = _in_words(str(refused), session.principal.group, owner)
        return await _request_page(request, runtime, session, approval_id, 409, explained)
    return RedirectResponse(f"/ui/approvals/{approval_id}", status_code=303)


def _owner_group(owner: str) -> str:
    """An agent's owner as a group name compares, or "" when it could not be one."""
    try:
        return normal_name(owner, "owner")
    except ValueError:
        return ""


def _in_words(refusal: str, group: str, owner: str) -> str:
    """The approval rules' refusal, with the rule behind it, for the person who was refused."""
    if "cannot decide it" in refusal:
        return f"Refused: {refusal}. Nobody approves a send their own token asked for."
    if "already decided" in refusal:
        return f"Refused: {refusal}. A tier-2 send needs two different people; you have given yours."
    if "group other than" in refusal:
        owning = f" ({group} owns this agent: its own team has had its say)" if group == owner else ""
        return (
            f"Refused: {refusal}{owning}. A tier-2 send needs approvals from two different groups, so "
            "that one team alone cannot release a mass send."
        )
    return f"Refused: {refusal}."
