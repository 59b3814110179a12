"""Request bodies, before any route sees them: a size limit, and JSON that is text.

Both are ASGI middleware, so they hold for every route, the routers' included, and run before
FastAPI reads a body: `BodyLimit` refuses an oversized body with 413 as it streams in, and
`StrictJson` refuses a JSON body that is not text with a 422 naming the field, as the model's
own errors do (errors.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sendguard.http.errors import invalid_request


class BodyLimit:
    """Refuses request bodies over the limit with 413, before they are read into memory.

    `paths` gives some routes a limit of their own (raw inbound mail is larger than JSON).
    """

    def __init__(self, app: ASGIApp, limit: int, paths: dict[str, int]) -> None:
        self._app = app
        self._default = limit
        self._paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        limit = self._paths.get(scope["path"], self._default)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(limit)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
            return message

        try:
            await self._app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"error": "body_too_large", "detail": f"request body is over the {limit} byte limit"},
        status_code=413,
    )


_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_JSON_MEDIA = re.compile(r"application/(?:.+\+)?json")  # the bodies FastAPI parses as JSON
_NOT_TEXT = "must be text: invalid UTF-8 or a lone surrogate (U+D800-U+DFFF) is not a character"


class StrictJson:
    """Refuses a JSON body that is not text, naming the field: bytes that are not UTF-8, or a lone
    surrogate, sent raw (the three bytes UTF-8 would give it) or as an escape (`"\\ud800"`).

    Either is no character: Redis, the audit trail and the email package each fail on it later,
    which answered 500 after part of a batch was admitted, or left a message stuck `sending`.
    FastAPI would decode raw surrogates and let them through, so this reads the body first.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _JSON_MEDIA.fullmatch(_media_type(scope)):
            await self._app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if (where := _not_text(body)) is not None:
            error = {"type": "string_unicode", "loc": ("body", *where), "msg": _NOT_TEXT}
            await invalid_request([error])(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self._app(scope, replay, send)


def _media_type(scope: Scope) -> str:
    raw: bytes = dict(scope["headers"]).get(b"content-type", b"")
    return raw.decode("latin-1").partition(";")[0].strip().lower()


def _not_text(body: bytes) -> tuple[str | int, ...] | None:
    """Where the body is not text (the path of a string or key; `()` for the body itself), or None."""
    try:
        text = body.decode("utf-8")  # strict: refuses invalid bytes and encoded surrogates alike
    except UnicodeDecodeError:
        # Undecodable bytes become lone surrogates (U+DC80-U+DCFF), found below with the others.
        text = body.decode("utf-8", "surrogateescape")
    else:
        if not _SURROGATE_ESCAPE.search(body):  # valid UTF-8 can hold a surrogate only as an escape
            return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        # Not JSON: the route's model refuses it; unless it is not text either, which is said here.
        return () if _SURROGATE.search(text) else None
    return _lone_surrogate(value)


def _lone_surrogate(body: Any) -> tuple[str | int, ...] | None:
    """Where a string or key holding a lone surrogate is in decoded JSON; None if nowhere.

    Iterative: JSON nested as deep as the parser allows must not exhaust the stack here.
    """
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and _SURROGATE.search(value):
            return path
        items: Iterable[tuple[str | int, Any]] = (
            value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        )
        for key, item in items:
            if isinstance(key, str) and _SURROGATE.search(key):
                return (*path, key.encode("utf-8", "backslashreplace").decode())  # the answer is JSON too
            stack.append(((*path, key), item))
    return None
