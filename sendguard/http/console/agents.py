"""The agent register in the console: every agent's entry, its last 24 hours and where the warm-up
ramps of its inboxes and domains stand, for the monthly review.

Read-only, for the roles that read `GET /v1/agents` (operators, admins, auditors), from the same
`agents_report`; changing an agent is a rules change, versioned and audited at its reload.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response

from sendguard.governance.register import agents_report
from sendguard.governance.roles import Role
from sendguard.governance.sessions import Session
from sendguard.http.access import RuntimeDep
from sendguard.http.console.pages import allowed, page, section_router

router = section_router()
Reviewer = Annotated[Session, Depends(allowed(Role.OPERATOR, Role.ADMIN, Role.AUDITOR))]


@router.get("/agents")
async def register(request: Request, runtime: RuntimeDep, session: Reviewer) -> Response:
    rules = runtime.rules
    reports = await agents_report(runtime.redis, runtime.keys, rules)
    ramps = {
        report.entry.name: await runtime.throttles.ramp_limits(rules.file.ramp, [report.entry])
        for report in reports
    }
    return page(request, "agents.html", session, reports=reports, ramps=ramps, rules=rules)
