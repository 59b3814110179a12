"""The shared words of the pipeline: a message's statuses, reason codes and the clock of stored times.

Every stage reads and writes these, so they live above all of them and import nothing of sendguard.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum


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
