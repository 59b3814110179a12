"""sendguard's errors as HTTP answers, by exception class, in one place: routes raise, this answers.

Handed to FastAPI as its `exception_handlers`; starlette finds the handler by the error's class
(its nearest registered base), so a route never catches a domain error to translate it.

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
StoreError               503  Redis is unreachable; retry
"""

from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from sendguard.errors import ConfigError, InvalidValue, StoreError, StoreFull
from sendguard.feedback.apply import NotSent, UnknownMessage
from sendguard.governance.approvals import ApprovalRefused
from sendguard.governance.audit import AuditError
from sendguard.intake.admission import Forbidden
from sendguard.intake.batches import BatchConflict


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


async def _store_full(request: Request, exc: StoreFull) -> JSONResponse:
    return JSONResponse(
        {"error": "store_full", "detail": str(exc)}, status_code=503, headers={"Retry-After": "60"}
    )


HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
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
}
