"""The audit trail in the console: browse and filter it, and verify it on demand.

Entries are listed oldest first and paged by `seq`, as `GET /v1/audit` pages them, so a page
link stays valid while the trail grows (unfiltered, a link jumps to the newest page). Verifying
recomputes the whole chain, so it runs only when someone asks (a button), against this daemon's
anchor file, and says how long it took.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.responses import Response

from sendguard.governance.audit import AuditEntry
from sendguard.governance.audit_entries import canonical
from sendguard.governance.roles import Role
from sendguard.governance.sessions import Session
from sendguard.http.access import RuntimeDep
from sendguard.http.console.pages import PageError, allowed, page, section_router
from sendguard.parts import Runtime

router = section_router()
Auditing = Annotated[Session, Depends(allowed(Role.AUDITOR, Role.ADMIN))]
PAGE_SIZE = 50
FILTERS = ("message_id", "agent", "batch", "kind", "since", "until")


def _moment_ms(name: str, text: str) -> int | None:
    """A browser's `datetime-local` value (read as UTC, as the console shows times) or RFC 3339."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise PageError(
            422, f"{name.capitalize()} {text!r} is not a date and time such as 2026-11-28T10:42."
        ) from exc
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


def _shown(entry: AuditEntry) -> dict[str, str]:
    """An entry's fields as text: strings as they are, anything else as compact JSON."""
    return {
        name: value if isinstance(value, str) else canonical(value) for name, value in entry.fields.items()
    }


async def _verification(runtime: Runtime) -> dict[str, Any]:
    """Verify the whole chain against this daemon's anchor file, timed."""
    anchor = runtime.audit.anchor
    started = time.monotonic()
    result = await runtime.audit.verify(anchor)
    took_ms = (time.monotonic() - started) * 1000
    return {"result": result, "anchor": anchor, "took_ms": took_ms, "pending": await runtime.audit.pending()}


@router.get("/audit")
async def trail(
    request: Request,
    runtime: RuntimeDep,
    session: Auditing,
    after: int = 0,
    verify: bool = False,
) -> Response:
    given = {name: request.query_params.get(name, "").strip() for name in FILTERS}
    if after < 0:
        raise PageError(422, "After must be a sequence number, 0 or more.")
    found = await runtime.audit.entries(
        message_id=given["message_id"] or None,
        agent=given["agent"] or None,
        batch=given["batch"] or None,
        kind=given["kind"] or None,
        since_ms=_moment_ms("since", given["since"]),
        until_ms=_moment_ms("until", given["until"]),
        after_seq=after,
        limit=PAGE_SIZE,
    )
    kept = {name: value for name, value in given.items() if value}
    more = f"/ui/audit?{urlencode(kept | {'after': found[-1].seq})}" if len(found) == PAGE_SIZE else ""
    seq, digest = await runtime.audit.head()
    # Unfiltered, the newest entries are one page before the head; filtered, a scan must find them.
    newest = f"/ui/audit?after={seq - PAGE_SIZE}" if not kept and seq - PAGE_SIZE > after else ""
    return page(
        request,
        "audit.html",
        session,
        given=given,
        after=after,
        entries=[(entry, _shown(entry)) for entry in found],
        more=more,
        newest=newest,
        first=f"/ui/audit?{urlencode(kept)}",
        verify_link=f"/ui/audit?{urlencode(kept | {'after': after, 'verify': 1})}",
        head=(seq, digest),
        verification=await _verification(runtime) if verify else None,
    )
