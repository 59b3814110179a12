"""Mass sends against a hijacked agent, on a real daemon: whatever labels, sizes, inboxes, times,
cancels and keys it chooses, at most `mass_send_threshold - 1` of its messages reach the relay
within the window without a tier-2 approval, and an approval releases no more than it showed.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from sendguard.rules import WEEKDAYS
from sendguard.state.keys import Keys
from tests.conftest import Api, Daemon, max_in_any_window, message, wait_until
from tests.peers import DnsServer, SmtpSink

ClientFor = Callable[..., Api]
THRESHOLD = 6
ROGUES = 40  # agents, one per example (reused, still counted, if shrinking needs more)
RULES = f"""
[ingress]
recipient_cooldown = "0s"

[safe_mode]
max_denials = 1000000

[approvals]
mass_send_threshold = {THRESHOLD}
shared_inboxes = ["team@acme.example"]
""" + "".join(
    f'\n[[agent]]\nname = "rogue-{n}"\nowner = "sales"\ninboxes = ["*@acme.example"]\n' for n in range(ROGUES)
)
UNSETTLED = {"queued", "deferred", "sending"}

# Every label a hijacked agent writes, case included.
LABEL = (
    st.none()
    | st.sampled_from(["q4", "Q4", "smb", "SMB", "cfo-na-q4"])
    | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,10}", fullmatch=True)
)
SENDER = st.sampled_from(
    ["Alice <alice@acme.example>", "ALICE@ACME.EXAMPLE", "alice+x@acme.example", "bob@acme.example"]
)
SEND_AT = st.sampled_from([None, 1, 86_400])  # seconds ahead: now-ish, or due long after the test
KEY = st.none() | st.sampled_from(["k1", "k2", "k3"])


@st.composite
def labels(draw: st.DrawFn) -> dict[str, Any]:
    ahead = draw(SEND_AT)
    chosen = {
        "from": draw(SENDER),
        "segment": draw(LABEL),
        "campaign": draw(LABEL),
        "run_id": draw(st.none() | st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)),
        "idempotency_key": draw(KEY),
    }
    if ahead is not None:
        chosen["send_at"] = (datetime.now(UTC) + timedelta(seconds=ahead)).isoformat()
    return {name: value for name, value in chosen.items() if value is not None}


OPERATION = st.one_of(
    st.tuples(st.just("single"), labels()),
    st.tuples(st.just("batch"), labels(), st.integers(1, 2 * THRESHOLD)),
    st.tuples(st.just("parallel"), labels(), st.integers(1, THRESHOLD)),
    st.tuples(st.just("cancel"), st.integers(0, 1000)),
)


@dataclass
class Rogue:
    """One agent's example: its client, and every message it was told was accepted, by id, with
    whether it is due after the test (a reused idempotency key answers with the first message)."""

    api: Api
    prefix: str
    due_later: dict[str, bool] = field(default_factory=dict)

    def address(self) -> str:
        return f"{self.prefix}-{secrets.token_hex(4)}@customer.example"

    def single(self, chosen: dict[str, Any]) -> None:
        response = self.api.client.post("/v1/messages", json=message(self.address(), **chosen))
        assert response.status_code == 201, response.text
        self.due_later.setdefault(response.json()["id"], "send_at" in chosen and _far(chosen))

    def batch(self, chosen: dict[str, Any], size: int) -> None:
        body = {name: value for name, value in message("", **chosen).items() if name != "to"}
        body["recipients"] = [{"to": self.address()} for _ in range(size)]
        response = self.api.client.post("/v1/batches", json=body, timeout=60)
        # A reused key with other content is a 409; it admits nothing.
        assert response.status_code in (201, 409), response.text
        if response.status_code == 201:
            for row in response.json()["accepted"]:
                self.due_later.setdefault(row["id"], "send_at" in chosen and _far(chosen))


def _far(chosen: dict[str, Any]) -> bool:
    return bool(datetime.fromisoformat(chosen["send_at"]) > datetime.now(UTC) + timedelta(hours=1))


def test_no_labels_sizes_or_timing_get_a_mass_send_past_approval(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES)
    operator = client_for(daemon, "operator", "omar")
    examples = iter(range(10**6))

    @settings(max_examples=12, derandomize=True)
    @given(operations=st.lists(OPERATION, min_size=1, max_size=10))
    def hijacked(operations: list[tuple[Any, ...]]) -> None:
        n = next(examples) % ROGUES
        rogue = Rogue(client_for(daemon, "agent", f"rogue-{n}"), f"rogue{n}")
        for operation in operations:
            kind = operation[0]
            if kind == "single":
                rogue.single(operation[1])
            elif kind == "batch":
                rogue.batch(operation[1], operation[2])
            elif kind == "parallel":  # two submissions at once must not both slip under
                with ThreadPoolExecutor(2) as pool:
                    list(pool.map(rogue.batch, [operation[1]] * 2, [operation[2]] * 2))
            elif rogue.due_later:
                ids = list(rogue.due_later)
                rogue.api.client.post(f"/v1/messages/{ids[operation[1] % len(ids)]}/cancel")
        for message_id, later in rogue.due_later.items():
            if not later:
                wait_until(
                    lambda message_id=message_id: operator.status(message_id)["status"] not in UNSETTLED,
                    what=f"message {message_id} to settle",
                )
        arrived = [r for r in smtp.snapshot() if r.rcpt_tos[0].startswith(f"{rogue.prefix}-")]
        assert len(arrived) <= THRESHOLD - 1, f"{len(arrived)} of {rogue.prefix}'s messages passed unapproved"

    hijacked()


def test_send_at_cannot_gather_several_windows_into_one(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    window = 2.0
    daemon = make_daemon(RULES.replace("[approvals]\n", f'[approvals]\nmass_send_window = "{window:g}s"\n'))
    rogue = Rogue(client_for(daemon, "agent", "rogue-0"), "late")
    started = time.time()
    due = {"send_at": datetime.fromtimestamp(started + 2 * window, UTC).isoformat()}
    rogue.batch(due, THRESHOLD - 1)
    first = list(rogue.due_later)
    # Admitted a whole window later, but due at the same moment as the first: counted with it.
    wait_until(lambda: time.time() > started + window + 0.2, what="the first window to pass")
    rogue.batch(due, THRESHOLD - 1)
    second = [message_id for message_id in rogue.due_later if message_id not in first]
    assert {rogue.api.status(message_id)["status"] for message_id in second} == {"pending_approval"}
    for message_id in first:
        rogue.api.wait_status(message_id, "sent")
    assert len(smtp.snapshot()) == THRESHOLD - 1


def test_messages_released_together_reach_the_relay_under_the_line_unless_a_tier_two_approval_let_them(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, redis_url: str, prefix: str
) -> None:
    """Messages held in safe mode are counted when admitted, each window's worth under the
    threshold, and all released at once when a person resumes the scope (an agent can trip its own
    scope with reports about its own messages): at the relay the agent's messages keep under the
    threshold in every window all the same, the rest waiting their turn. Messages a tier-2
    approval released are not held to that line, as its approvers decided."""
    window, groups = 1.5, 2
    daemon = make_daemon(RULES.replace("[approvals]\n", f'[approvals]\nmass_send_window = "{window:g}s"\n'))
    rogue = Rogue(client_for(daemon, "agent", "rogue-0"), "held")
    admin = client_for(daemon, "admin", "dana")
    tripped = admin.client.post("/v1/safe-mode", json={"scope": "agent:rogue-0", "reason": "test"})
    assert tripped.status_code == 201, tripped.text
    for _ in range(groups):
        for _ in range(THRESHOLD - 1):
            rogue.single({})
        # The next group a window (and the two slots a count may look further) after this one's last.
        admitted = time.time()
        wait_until(lambda: time.time() > admitted + window * 1.1, what="a window to pass")  # noqa: B023
    held = list(rogue.due_later)
    assert {rogue.api.status(message_id)["status"] for message_id in held} == {"held"}
    resumed = admin.client.delete("/v1/safe-mode/agent:rogue-0", params={"reason": "looked at it"})
    assert resumed.status_code == 200 and resumed.json()["released"] == len(held), resumed.text
    arrived = smtp.wait_for(len(held), timeout=30)
    assert max_in_any_window([r.at for r in arrived], window) <= THRESHOLD - 1
    assert daemon.metric("sendguard_throttle_waits_total", scope="mass_send")

    # A tier-2 approval releases its batch whole, and so does its headroom after it, for a batch
    # (counted on its own) and for singles (counted by their admission): none of them waits. The
    # window is a minute from here, so the headroom outlasts whatever a busy machine spends.
    rules = Path(daemon.env["SENDGUARD_RULES"])
    rules.write_text(
        rules.read_text().replace(f'mass_send_window = "{window:g}s"', 'mass_send_window = "60s"')
    )
    assert admin.client.post("/v1/rules/reload").status_code == 200
    waits = daemon.metric("sendguard_throttle_waits_total", scope="mass_send")

    def batch(size: int) -> dict[str, Any]:
        body = {name: value for name, value in message("").items() if name != "to"}
        body["recipients"] = [{"to": rogue.address()} for _ in range(size)]
        sent = rogue.api.client.post("/v1/batches", json=body)
        assert sent.status_code == 201, sent.text
        return dict(sent.json())

    mass = batch(2 * THRESHOLD)
    approval = mass["approval"]["id"]
    for name, group in (("erin", "ops"), ("finn", "legal")):
        approver = client_for(daemon, "approver", name, "--group", group)
        decided = approver.client.post(f"/v1/approvals/{approval}/approve", json={"comment": "ok"})
        assert decided.status_code == 200, decided.text
    covered = batch(THRESHOLD // 2)
    assert covered["approval"] is None
    released = [row["id"] for answer in (mass, covered) for row in answer["accepted"]]
    for _ in range(THRESHOLD - THRESHOLD // 2):
        rogue.single({})
        released.append(list(rogue.due_later)[-1])
    assert {rogue.api.status(message_id)["status"] for message_id in released[2 * THRESHOLD :]} <= {
        "queued",
        "sending",
        "sent",
    }
    smtp.wait_for(len(held) + len(released), timeout=30)
    assert daemon.metric("sendguard_throttle_waits_total", scope="mass_send") == waits
    # What the headroom let through names the request (its approvers' batch is found by `approval`).
    store, keys = redis.Redis.from_url(redis_url, decode_responses=True), Keys(prefix)
    released_by = [store.hget(keys.msg(message_id), "released_by") for message_id in released]
    assert released_by == [None] * 2 * THRESHOLD + [approval] * THRESHOLD


def test_a_batch_retry_counts_the_recipients_its_first_attempt_refused(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, dns_server: DnsServer
) -> None:
    """A retry (the same request, so the same derived key) decides its recipients again, and those
    refused the first time (a domain that did not resolve yet) may be accepted now. The probe: they
    were admitted under the first attempt's route, counted by nobody, shown to no approver: 60
    queued at tier 0, or released by an approval's headroom that showed 6."""
    dns_server.SOA_MINIMUM = 1  # type: ignore[misc]  # the first attempt's NXDOMAIN is kept a second
    rogue = client_for(make_daemon(RULES), "agent", "rogue-0")
    body = {name: value for name, value in message("").items() if name != "to"}
    body["recipients"] = [{"to": f"p{n}@later.example"} for n in range(10 * THRESHOLD)]
    first = rogue.client.post("/v1/batches", json=body).json()
    assert (len(first["accepted"]), first["approval"]) == (0, None)
    dns_server.add_mx_domain("later.example")

    def resolves() -> bool:  # once the first attempt's negative answer has lapsed
        checked = rogue.client.post("/v1/recipients/check", json={"to": ["p0@later.example"]})
        return bool(checked.json()["recipients"][0]["verdict"] == "would_queue")

    wait_until(resolves, what="the domain's negative answer to lapse")

    retry = rogue.client.post("/v1/batches", json=body).json()

    assert retry["id"] == first["id"]  # a retry, answered from the first attempt's claim
    assert {row["status"] for row in retry["accepted"]} == {"pending_approval"}
    assert (retry["approval"]["tier"], len(retry["accepted"])) == (2, 10 * THRESHOLD)


@pytest.mark.parametrize("kind", ["single", "batch"])
def test_a_closed_send_window_cannot_gather_several_windows_into_one(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, kind: str
) -> None:
    """Messages submitted while the agent's send window is closed all go at its opening, so they
    count then, not when submitted: a group a window after another, both under the threshold, is
    counted with it (the probe found 30 of 30 at the relay within 65 ms, each group counted alone)."""
    window = 2.0
    today = datetime.now(UTC)
    closed = {WEEKDAYS[(today + timedelta(days=d)).weekday()] for d in (0, 1)}  # opens the day after
    days = ", ".join(f'"{day}"' for day in WEEKDAYS if day not in closed)
    rules = RULES.replace("[approvals]\n", f'[approvals]\nmass_send_window = "{window:g}s"\n')
    daemon = make_daemon(rules + f'\n[[window]]\nscope = "agent"\nmatch = "rogue-0"\ndays = [{days}]\n')
    rogue = Rogue(client_for(daemon, "agent", "rogue-0"), "closed")
    started = time.time()
    for _ in range(THRESHOLD - 1):
        if kind == "single":
            rogue.single({})
        else:
            rogue.batch({}, 1)
    first = list(rogue.due_later)
    assert {rogue.api.status(message_id)["status"] for message_id in first} == {"queued"}
    wait_until(lambda: time.time() > started + window + 0.2, what="a window to pass")
    if kind == "single":
        rogue.single({})
    else:
        rogue.batch({}, 1)
    [last] = [message_id for message_id in rogue.due_later if message_id not in first]
    assert rogue.api.status(last)["status"] == "pending_approval"


def test_a_batch_due_at_several_openings_counts_at_each(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    """A batch whose recipients' windows open at different times (their zones) counts against the
    sends due near each opening: one recipient early and the rest later does not let another
    batch of the later zone count alone."""
    # Two fixed-offset zones where 09:00-10:00 is not now, so their openings are an hour or more apart.
    closed = (zone for zone in (f"Etc/GMT{k:+d}" for k in range(-12, 12)) if _local(zone).hour != 9)
    early, late = sorted(itertools.islice(closed, 2), key=_next_opening)
    daemon = make_daemon(
        RULES.replace("[approvals]\n", '[approvals]\nmass_send_window = "10m"\n')
        + '\n[[window]]\nscope = "agent"\nmatch = "rogue-0"\n'
        + 'days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\nhours = "09:00-10:00"\n'
    )
    rogue = Rogue(client_for(daemon, "agent", "rogue-0"), "zones")

    def batch(zones: list[str]) -> list[dict[str, Any]]:
        body = {name: value for name, value in message("").items() if name != "to"}
        body["recipients"] = [{"to": rogue.address(), "recipient_timezone": zone} for zone in zones]
        response = rogue.api.client.post("/v1/batches", json=body, timeout=60)
        assert response.status_code == 201, response.text
        rows: list[dict[str, Any]] = response.json()["accepted"]
        return rows

    first = batch([early] + [late] * (THRESHOLD - 2))
    assert {row["status"] for row in first} == {"queued"}
    second = batch([late] * (THRESHOLD - 2))
    assert {row["status"] for row in second} == {"pending_approval"}


def _local(zone: str) -> datetime:
    return datetime.now(ZoneInfo(zone))


def _next_opening(zone: str) -> datetime:
    """The next 09:00 in `zone`."""
    nine = _local(zone).replace(hour=9, minute=0, second=0, microsecond=0)
    return nine if nine > _local(zone) else nine + timedelta(days=1)


DODGES = ("no segment or campaign", "a new segment per message", "a new campaign every 24", "batches of 24")


def _play(dodge: str, rogue: Rogue) -> None:
    """200 messages, labelled as the dodge would have them."""
    if dodge == "batches of 24":
        for size in [24] * 8 + [8]:
            rogue.batch({}, size)
        return
    for i in range(200):
        labels = {"segment": f"s{i}"} if dodge == "a new segment per message" else {}
        rogue.single(labels | ({"campaign": f"c{i // 24}"} if dodge == "a new campaign every 24" else {}))


def test_the_probed_dodges_get_threshold_minus_one_of_two_hundred_out(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    """The dodges the probe of issue 11 found (200 of 200 sent then), at the shipped threshold."""
    daemon = make_daemon(RULES.replace(f"mass_send_threshold = {THRESHOLD}", "mass_send_threshold = 25"))
    arrived: dict[str, int] = {}
    for n, dodge in enumerate(DODGES):
        rogue = Rogue(client_for(daemon, "agent", f"rogue-{n}"), f"dodge{n}")
        _play(dodge, rogue)
        assert len(rogue.due_later) == 200
        for message_id in rogue.due_later:
            wait_until(
                lambda message_id=message_id, api=rogue.api: (
                    api.status(message_id)["status"] not in UNSETTLED
                ),
                what=f"message {message_id} to settle",
            )
        arrived[dodge] = sum(1 for r in smtp.snapshot() if r.rcpt_tos[0].startswith(f"dodge{n}-"))
    print(f"messages at the relay without approval, of 200, threshold 25: {arrived}")
    assert arrived == dict.fromkeys(DODGES, 24)


def test_a_message_refused_for_its_recipient_spends_no_mass_send_headroom(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    """Sends refused by the recipient's cooldown or a suppression are not mass sends: a hijacked
    agent's repeats neither use up its tier-0 headroom nor open a request for approvers."""
    daemon = make_daemon(RULES.replace('recipient_cooldown = "0s"', 'recipient_cooldown = "1h"'))
    rogue, admin = client_for(daemon, "agent", "rogue-0"), client_for(daemon, "admin", "dana")
    assert rogue.send("same@customer.example")["status"] == "queued"
    for n in range(2 * THRESHOLD):  # each different, so no idempotency key answers with the first
        refused = rogue.send("same@customer.example", subject=f"Following up, take {n}")
        assert [reason["code"] for reason in refused["reasons"]] == ["recipient_cooldown"]
    others = [rogue.send(f"other{n}@customer.example") for n in range(THRESHOLD - 2)]
    assert [sent["status"] for sent in others] == ["queued"] * (THRESHOLD - 2)
    assert admin.client.get("/v1/approvals").json() == []
