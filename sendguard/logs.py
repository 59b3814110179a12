"""Logs: one JSON object per line on stderr, with message id, agent and scope when known.

Secrets and message bodies are never passed to a log call; settings carry `RedactedURL`s
whose str() is already masked, so even a careless f-string cannot print a password. Libraries log
what they were handed (httpx logs each request's full URL, and a webhook's path is its secret),
so every URL in another package's log line keeps only its scheme and host.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_CONTEXT_FIELDS = ("message_id", "agent", "scope", "status", "code", "stage")
_URL = re.compile(
    r"(?P<origin>[a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^/\s\"'@]*@)?(?P<host>[^/\s\"'?#]+)(?P<rest>[^\s\"']*)"
)


def _origin_only(match: re.Match[str]) -> str:
    rest = "/…" if match["rest"] not in ("", "/") else match["rest"]
    return f"{match['origin']}{match['host']}{rest}"


class RedactThirdPartyURLs(logging.Filter):
    """Cuts URLs in other packages' log lines down to scheme and host: their paths, queries and
    user info may be secrets (a webhook's path, a token in a query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "sendguard" or record.name.startswith("sendguard."):
            return True
        message = record.getMessage()
        redacted = _URL.sub(_origin_only, message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


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
    handler.addFilter(RedactThirdPartyURLs())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
