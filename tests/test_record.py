"""`new_record`, admission's constructor of a new message's record, builds what MessageRecord(...) does."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from sendguard.model import Reason, Status
from sendguard.record import MessageRecord, Wait, new_record

FIELDS: dict[str, Any] = {
    "id": "m1",
    "status": Status.QUEUED,
    "reasons": (Reason("dns_temporary", "later"),),
    "approval": "a1",
    "agent": "sdr-bot",
    "to": "ann@customer.example",
    "to_domain": "customer.example",
    "template": "b1",
    "values": '{"first_name": "Ann"}',
    "send_at": datetime(2099, 1, 1, tzinfo=UTC),
    "dns_checks": 0,
    "waiting_for": Wait.SEND_WINDOW,
    "scopes": ("recipient_domain:customer.example", "global"),
}


@pytest.mark.parametrize("given", [FIELDS, {"id": "m2", "status": Status.REJECTED}])
def test_new_record_is_the_constructors_record_and_as_frozen(given: dict[str, Any]) -> None:
    built, constructed = new_record(**given), MessageRecord(**given)
    assert built == constructed and hash(built) == hash(constructed) and repr(built) == repr(constructed)
    assert vars(built) == vars(constructed)  # every field held by the instance, defaults too
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.status = Status.SENT  # type: ignore[misc]
    assert dataclasses.replace(built, to="bo@customer.example").to == "bo@customer.example"


def test_new_record_takes_fields_by_name_only() -> None:
    with pytest.raises(TypeError):
        new_record("m3", Status.QUEUED)
