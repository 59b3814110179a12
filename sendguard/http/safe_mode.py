"""Safe mode over HTTP: list, trip and resume scopes, and Alertmanager alerts that trip them."""

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sendguard.feedback.counters import Trip
from sendguard.http.access import Admin, Operator, Reader, RuntimeDep
from sendguard.http.docs import Tag
from sendguard.http.errors import SIGNED_IN, error_responses
from sendguard.model import iso_ms
from sendguard.scopes import parse_scope, trip_scope

log = logging.getLogger("sendguard.http.safe_mode")
router = APIRouter(tags=[Tag.SAFE_MODE])


class TripOut(BaseModel):
    scope: str
    cause: str
    detail: str
    value: float | None
    threshold: float | None
    at: str
    by: str


class TripIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"scope": "segment:cfo-na-q4", "reason": "two complaints in an hour"}]
        },
    )

    scope: str = Field(description="'global' (the kill switch) or '<kind>:<value>', e.g. segment:cfo-na-q4")
    reason: str = Field(min_length=1, max_length=500)


class ResumeOut(BaseModel):
    scope: str
    resumed: TripOut | None
    released: int = Field(description="held messages put back in the queue")
    still_held: int = Field(description="held messages that another tripped scope still holds")


class AlertIn(BaseModel):
    status: str
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class AlertmanagerIn(BaseModel):
    """Alertmanager's webhook payload (version 4); only the fields sendguard acts on."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": "4",
                    "status": "firing",
                    "receiver": "sendguard",
                    "alerts": [
                        {
                            "status": "firing",
                            "labels": {
                                "alertname": "SendguardBounceRate",
                                "sendguard_scope": "agent:sdr-bot",
                            },
                            "annotations": {"summary": "hard bounces over 5% in the last hour"},
                        }
                    ],
                }
            ]
        }
    )

    alerts: list[AlertIn]


class AlertsOut(BaseModel):
    tripped: list[str]
    already: list[str] = Field(description="scopes that were already in safe mode")
    ignored: list[str] = Field(description="alerts that trip nothing, and why")


def _trip_out(trip: Trip) -> TripOut:
    return TripOut(
        scope=trip.scope,
        cause=trip.cause,
        detail=trip.detail,
        value=trip.value,
        threshold=trip.threshold,
        at=iso_ms(trip.at),
        by=trip.by,
    )


@router.get(
    "/v1/safe-mode",
    response_model=list[TripOut],
    summary="List scopes in safe mode",
    responses=error_responses(*SIGNED_IN),
)
async def list_trips(runtime: RuntimeDep, who: Reader) -> list[TripOut]:
    """The scopes in safe mode now: scope, cause, the measured value and its threshold, when, by whom."""
    return [_trip_out(trip) for trip in await runtime.safe_mode.active()]


@router.post(
    "/v1/safe-mode",
    response_model=TripOut,
    status_code=201,
    summary="Trip a scope",
    responses={
        200: {"model": TripOut, "description": "the scope was already in safe mode: its trip"},
        **error_responses(*SIGNED_IN, 413, 422),
    },
)
async def trip(body: TripIn, runtime: RuntimeDep, who: Operator) -> TripOut | JSONResponse:
    """Trip a scope by hand: its messages are held until a person resumes it. `global` stops
    everything (the kill switch). Any spelling of a scope trips that scope (`agent:SDR-Bot` is
    `agent:sdr-bot`, `inbox:Alice+q4@acme.example` is `inbox:alice@acme.example`); an agent that is
    not in the rules' register is refused (422), as its trip would hold nothing."""
    scope = trip_scope(body.scope, runtime.rules)
    active, created = await runtime.safe_mode.trip(scope, "manual", who.actor, body.reason)
    if not created:
        return JSONResponse(_trip_out(active).model_dump(), status_code=200)
    return _trip_out(active)


@router.delete(
    "/v1/safe-mode/{scope:path}",
    response_model=ResumeOut,
    summary="Resume a scope",
    responses=error_responses(*SIGNED_IN, (404, "the scope is not in safe mode"), 422),
)
async def resume(
    scope: str,
    runtime: RuntimeDep,
    who: Admin,
    reason: Annotated[str, Query(min_length=1, max_length=500, description="why sending may resume")],
) -> ResumeOut:
    """Resume a scope: lift the trip, restart its signal window, release its held messages.

    A retry of a resume that took effect answers 200 with `resumed: null`.
    """
    resumed = await runtime.safe_mode.resume(parse_scope(scope), who.actor, reason)
    if resumed.not_tripped:
        raise HTTPException(404, f"{resumed.scope} is not in safe mode")
    return ResumeOut(
        scope=resumed.scope,
        resumed=_trip_out(resumed.trip) if resumed.trip else None,
        released=resumed.released,
        still_held=resumed.still_held,
    )


@router.post(
    "/v1/alerts",
    response_model=AlertsOut,
    summary="Take Alertmanager's webhook",
    responses=error_responses(*SIGNED_IN, 413, 422),
)
async def alerts(body: AlertmanagerIn, runtime: RuntimeDep, who: Operator) -> AlertsOut:
    """A firing alert labelled `sendguard_scope` trips that scope; one without a usable label is
    answered in `ignored`, as is one naming an agent not in the rules' register (its trip would hold
    nothing; the other alerts of the post still act). A resolved alert does not resume: a person does.
    """
    out = AlertsOut(tripped=[], already=[], ignored=[])
    ignored = runtime.metrics.alerts_ignored
    for alert in body.alerts:
        name = alert.labels.get("alertname", "unnamed alert")
        raw_scope = alert.labels.get("sendguard_scope")
        if alert.status != "firing":
            ignored.labels("not_firing").inc()  # a resolved alert: a person resumes, not Alertmanager
            out.ignored.append(f"{name}: not firing")
            continue
        # A misrouted or mislabelled stop-sending alert trips nothing: say so where people look.
        if raw_scope is None:
            ignored.labels("no_scope").inc()
            log.warning("alert %r ignored: no sendguard_scope label", name)
            out.ignored.append(f"{name}: no sendguard_scope label")
            continue
        try:
            scope = trip_scope(raw_scope, runtime.rules)
        except ValueError as exc:
            ignored.labels("bad_scope").inc()
            log.warning("alert %r ignored: %s", name, exc)
            out.ignored.append(f"{name}: {exc}")
            continue
        summary = alert.annotations.get("summary")
        reason = f"{name}: {summary}" if summary else name  # the caller's token is the actor
        _, created = await runtime.safe_mode.trip(scope, "alert", who.actor, reason)
        (out.tripped if created else out.already).append(scope)
    return out
