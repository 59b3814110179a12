"""Recall: call back every waiting message that matches, and record who did it and why."""

from __future__ import annotations

from collections.abc import Mapping

from sendguard.governance.audit import AuditLog
from sendguard.governance.tokens import Principal
from sendguard.state.store import Store


class Recall:
    """Cancels what has not gone out yet; messages already `sending` cannot be called back."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit

    async def __call__(self, filters: Mapping[str, str], reason: str, who: Principal) -> dict[str, int]:
        """Cancel every waiting message whose record fields equal all `filters`; counts by state."""
        counts = await self._store.recall(filters, f"recalled by {who}: {reason}")
        await self._audit.append(
            "recall", who.actor, {"filters": dict(filters), "reason": reason, "cancelled": counts}
        )
        return counts
