"""Logs: one JSON object per line on stderr, with message id, agent and scope when known.

Secrets and message bodies are never passed to a log call; settings carry `RedactedURL`s
whose str() is already masked, so even a careless f-string cannot print a password.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_CONTEXT_FIELDS = ("message_id", "agent", "scope", "status", "code", "stage")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; known `extra=` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
