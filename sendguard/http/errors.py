"""sendguard's errors as HTTP answers, by exception class, in one place: routes raise, this answers.

Handed to FastAPI as its `exception_handlers`; starlette finds the handler by the error's class
(its nearest registered base), so a route never catches a domain error to translate it.

Unauthenticated          401  the token a write checked is revoked (as a route's own token check says)
RequestValidationError   422  the request's form: every field that is wrong, named
InvalidValue             422  a value the form allows that is still not one (a scope, an entry)
ConfigError              422  the rules file does not validate (a reload is refused)
Forbidden                403  the agent may not do this at all, with the reason code
UnknownMessage           404  an agent reported an event about a message not its own
NotSent                  409  an agent reported an event about its own message that was not sent
BatchConflict            409  the idempotency key names a different batch
ApprovalRefused          409  the approval rules do not allow this decision
AuditError               409  the trail cannot be read as it stands
StoreFull                503  Redis is near its maxmemory: no submission is admitted; retry later
NotReplicated            503  too few replicas confirmed a write in time (SENDGUARD_REDIS_WAIT_REPLICAS)
StoreWiped               503  Redis lost the marker this daemon started on (wiped): nothing is admitted
StoreError               503  Redis is unreachable; retry

The bodies are documented here too (`error_responses`), beside the handlers that make them, so the
OpenAPI document shows the errors the API really returns.
"""

import json
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from sendguard.errors import (
    ConfigError,
    InvalidValue,
    NotReplicated,
    StoreError,
    StoreFull,
    StoreWiped,
    Unauthenticated,
)
from sendguard.feedback.apply import NotSent, UnknownMessage
from sendguard.governance.approvals import ApprovalRefused
from sendguard.governance.audit import AuditError
from sendguard.intake.admission import Forbidden
from sendguard.intake.batches import BatchConflict
from sendguard.model import Reason


def _detail(status: int, detail: str) -> JSONResponse:
    """The body FastAPI gives an HTTPException, so these answers read like every other error."""
    return JSONResponse({"detail": detail}, status_code=status)


def invalid_request(found: Iterable[Mapping[str, Any]]) -> JSONResponse:
    """The 422 for a request's form, every wrong field named: the model's errors, or bodies.py's."""
    errors = []
    for error in found:
        loc = [str(part) for part in error["loc"] if part != "body"]
        field = ".".join(loc) or "body"
        message = str(error["msg"]).removeprefix("Value error, ")
        if field == "body" and error["type"] in ("model_attributes_type", "dict_type"):
            message = "must be a JSON object, sent with Content-Type: application/json"
        errors.append({"field": field, "message": message})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse({"error": "invalid_request", "detail": detail, "errors": errors}, 422)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return invalid_request(exc.errors())


async def _invalid_value(request: Request, exc: InvalidValue) -> JSONResponse:
    return _detail(422, f"{exc.field}: {exc}")


async def _rules_refused(request: Request, exc: ConfigError) -> JSONResponse:
    return _detail(422, str(exc))


async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
    return JSONResponse(
        {"error": "forbidden", "detail": exc.reason.detail, "reasons": [exc.reason.as_dict()]},
        status_code=403,
    )


async def _unknown_message(request: Request, exc: UnknownMessage) -> JSONResponse:
    return _detail(404, str(exc))


async def _conflict(request: Request, exc: BatchConflict | ApprovalRefused | NotSent) -> JSONResponse:
    return _detail(409, str(exc))


async def _audit_unreadable(request: Request, exc: AuditError) -> JSONResponse:
    return _detail(409, f"{exc}; run `sendguard audit verify`")


async def _store_down(request: Request, exc: StoreError) -> JSONResponse:
    return JSONResponse(
        {"error": "store_unavailable", "detail": "the state store is unreachable; retry"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _not_replicated(request: Request, exc: NotReplicated) -> JSONResponse:
    return JSONResponse(
        {"error": "not_replicated", "detail": f"{exc}; nothing is acknowledged, retry"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _unauthenticated(request: Request, exc: Unauthenticated) -> JSONResponse:
    """As `access.authenticate` answers a token it finds revoked."""
    return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def _store_full(request: Request, exc: StoreFull) -> JSONResponse:
    return JSONResponse(
        {"error": "store_full", "detail": str(exc)}, status_code=503, headers={"Retry-After": "60"}
    )


async def _store_wiped(request: Request, exc: StoreWiped) -> JSONResponse:
    return JSONResponse(
        {"error": "store_wiped", "detail": str(exc)}, status_code=503, headers={"Retry-After": "60"}
    )


HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    Unauthenticated: _unauthenticated,
    RequestValidationError: _invalid_request,
    InvalidValue: _invalid_value,
    ConfigError: _rules_refused,
    Forbidden: _forbidden,
    BatchConflict: _conflict,
    ApprovalRefused: _conflict,
    UnknownMessage: _unknown_message,
    NotSent: _conflict,
    AuditError: _audit_unreadable,
    StoreError: _store_down,
    StoreFull: _store_full,
    NotReplicated: _not_replicated,
    StoreWiped: _store_wiped,
}


async def error_answer(exc: Exception) -> tuple[int, dict[str, Any]] | None:
    """The status and body the API answers `exc` with, for a door that is not an HTTP route (the
    MCP tools in the daemon); None for an exception no handler answers (a bug: let it raise)."""
    if isinstance(exc, HTTPException):
        return exc.status_code, {"detail": exc.detail}
    response: Response
    if isinstance(exc, ValidationError):  # a body validated outside FastAPI, as the routes' form
        response = invalid_request(exc.errors())
    else:
        handler = next((HANDLERS[kind] for kind in type(exc).__mro__ if kind in HANDLERS), None)
        if handler is None:
            return None
        response = await handler(Request({"type": "http", "method": "POST", "headers": []}), exc)
    return response.status_code, json.loads(bytes(response.body))


class ErrorOut(BaseModel):
    """Every error's body has `detail`, what is wrong in words; some add a stable `error` code."""

    detail: str


class CodedErrorOut(ErrorOut):
    error: str = Field(
        description="body_too_large, store_unavailable, store_full, not_replicated or store_wiped"
    )


class ForbiddenOut(ErrorOut):
    error: str | None = Field(default=None, description="`forbidden` when a rule refused the request")
    reasons: list[Reason] | None = Field(default=None, description="the rule's reason code, when one did")


class FieldError(BaseModel):
    field: str = Field(description="the dotted path of the wrong field, e.g. recipients.3.to; `body` for all")
    message: str


class InvalidOut(ErrorOut):
    error: str | None = Field(
        default=None,
        description="`invalid_request` for the request's form; for inbound mail, why it was kept",
    )
    errors: list[FieldError] | None = Field(
        default=None, description="every wrong field, when it is the form"
    )
    kept_as: str | None = Field(default=None, description="inbound mail only: where the mail was kept")


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
_ERRORS: dict[int, tuple[type[ErrorOut], str, dict[str, Any]]] = {
    401: (
        ErrorOut,
        "no bearer token, or one that is unknown, expired or revoked",
        {"WWW-Authenticate": {"schema": {"type": "string"}}},
    ),
    403: (ForbiddenOut, "the token's role may not do this, or a rule forbids it (with its reason code)", {}),
    404: (ErrorOut, "what the path names does not exist, or is not the caller's to see", {}),
    409: (ErrorOut, "the request conflicts with the state it would change", {}),
    413: (CodedErrorOut, "the body is over the size limit (`body_too_large`)", {}),
    422: (InvalidOut, "the request is not valid: every wrong field is named", {}),
    503: (
        CodedErrorOut,
        "the state store is unreachable (`store_unavailable`), full (`store_full`), could not "
        "get the write to enough replicas (`not_replicated`) or was wiped under the daemon "
        "(`store_wiped`: until a person acts); retry",
        _RETRY_AFTER,
    ),
}
SIGNED_IN = (401, 403, 503)  # every /v1 route: a token to check, and Redis to check it with


def error_responses(*codes: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these status codes, with the body each really has.

    A code alone gets the general description; `(code, "why")` says what it means on this route.
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        status, why = code if isinstance(code, tuple) else (code, None)
        model, general, headers = _ERRORS[status]
        responses[status] = {"model": model, "description": why or general}
        if headers:
            responses[status]["headers"] = headers
    return responses
