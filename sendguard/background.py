"""Background work at shutdown: given its time to end, then cancelled until it has ended.

Nothing may still run once the parts are closed: a task finishing later would reopen a Redis or
relay connection that nobody closes, and the loop's close would find it open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def end_within(tasks: Iterable[asyncio.Task[Any]], seconds: float) -> int:
    """Wait up to `seconds` for `tasks`, then cancel those not done until they are; how many were.

    Cancelling more than once: redis-py can swallow a cancellation that lands mid-command.
    """
    pending = {task for task in tasks if not task.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=seconds)
    cut_short = len(pending)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1)
    return cut_short
