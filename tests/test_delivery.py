"""Delivery end to end: a real daemon process, a real Redis and a real SMTP relay (SmtpSink)."""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from sendguard.config import RedactedURL, Settings
from sendguard.delivery.relay import RelayPool
from sendguard.delivery.throttle import Throttles
from sendguard.model import Status
from sendguard.parts import Runtime, build
from sendguard.record import MessageRecord
from sendguard.rules import load_rules
from sendguard.state.embedded_redis import DataDir, process_alive
from sendguard.state.keys import Keys
from sendguard.state.marker import StoreMarker
from sendguard.state.redis_connection import redis_connection
from sendguard.state.store import Claim, Moved, NoWork, Store
from tests.conftest import AGENT_RULES, Api, Daemon, RedisServer, wait_until, write_claimed
from tests.peers import SmtpSink

RULES = """
[ingress]
mx_check = "off"
recipient_cooldown = "0s"
"""

TERMINAL = frozenset({"sent", "bounced", "failed", "rejected", "cancelled"})
MESSAGE_ID = re.compile(r"^<[0-9a-f]{23}\.sg@acme\.example>$")

Mint = Callable[..., str]
MakeDaemon = Callable[..., Daemon]
ClientFor = Callable[[Daemon, str, str], Api]


def header_id(message_id: str) -> str:
    """The Message-ID header sendguard puts on a message from alice@acme.example."""
    return f"<{message_id}.sg@acme.example>"


def settle(api: Api, ids: list[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
    """Wait until every message reached a final status; return their records by id."""
    records: dict[str, dict[str, Any]] = {}

    def all_final() -> bool:
        for message_id in ids:
            if records.get(message_id, {}).get("status") not in TERMINAL:
                records[message_id] = api.status(message_id)
        return all(records[i]["status"] in TERMINAL for i in ids)

    wait_until(all_final, timeout=timeout, what=f"{len(ids)} messages to reach a final status")
    return records


def statuses(record: dict[str, Any]) -> list[str]:
    return [step["status"] for step in record["history"]]


def causes(record: dict[str, Any]) -> list[str]:
    return [step["cause"] for step in record["history"]]


def received_ids(sink: SmtpSink) -> Counter[str | None]:
    return Counter(received.message_id for received in sink.received)


@pytest.fixture
def api(make_daemon: MakeDaemon, client_for: ClientFor) -> Api:
    return client_for(make_daemon(RULES), "agent", "sdr-bot")


# -- outcomes of one delivery -------------------------------------------------


def test_accepted_message_is_sent_once_with_its_message_id(api: Api, smtp: SmtpSink) -> None:
    decision = api.send("dana@customer.example", subject="Hello Dana")
    assert decision["status"] == "queued"
    message_id = decision["id"]

    record = settle(api, [message_id])[message_id]
    assert record["status"] == "sent"
    assert record["attempts"] == 1
    assert record["uncertain"] == 0
    assert record["smtp_code"] == 250

    received = smtp.received
    assert len(received) == 1
    got = received[0]
    assert got.message_id == header_id(message_id)
    assert MESSAGE_ID.match(got.message_id)
    assert got.mail_from == "alice@acme.example"
    assert got.rcpt_tos == ("dana@customer.example",)
    assert got.message["Subject"] == "Hello Dana"
    assert got.message["To"] == "dana@customer.example"

    assert statuses(record) == ["queued", "sending", "sent"]
    assert causes(record) == ["submitted", "attempt", "relay_accepted"]
    assert record["history"][1]["detail"] == "attempt 1"
    assert record["history"][2]["detail"].startswith("250")
    assert all(step["at"] for step in record["history"])


def test_internationalised_from_address_is_sent_with_smtputf8(api: Api, smtp: SmtpSink) -> None:
    # Found by tests/test_fuzz.py: rendering the From header raised and left the message `sending`.
    message_id = api.send("dana@customer.example", **{"from": '"Ü, Ö" <ü@acme.example>'})["id"]

    assert settle(api, [message_id])[message_id]["status"] == "sent"
    [got] = smtp.received
    assert got.mail_from == "ü@acme.example"
    # Parsed from text: a bytes parser would leave the raw UTF-8 of the header as surrogates.
    [sender] = email.parser.Parser(policy=email.policy.default).parsestr(got.data.decode())["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Ü, Ö", "ü@acme.example")
    assert got.message_id == header_id(message_id)


def test_a_relay_without_smtputf8_fails_that_message_and_keeps_sending_the_rest(
    api: Api, smtp: SmtpSink
) -> None:
    smtp.smtputf8 = False
    utf8 = api.send("dana@customer.example", **{"from": "Ü <ü@acme.example>"})["id"]
    plain = api.send("erin@customer.example")["id"]
    records = settle(api, [utf8, plain])
    assert records[utf8]["status"] == "failed" and records[utf8]["attempts"] == 1
    # The relay refuses MAIL FROM with the SMTPUTF8 option: the message fails, no retry, no bounce.
    assert causes(records[utf8])[-1] == "sender_refused"
    assert records[plain]["status"] == "sent"
    assert [got.rcpt_tos for got in smtp.received] == [("erin@customer.example",)]


def test_a_message_written_in_the_older_layout_is_answered_and_delivered_as_it_was(
    api: Api, smtp: SmtpSink, redis_url: str, prefix: str
) -> None:
    """Records written before the content key (keys.py `content`) hold their content as hash
    fields and always a `scopes` field: read as they are, so an upgrade has nothing to migrate."""
    send_at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    message_id = api.send(
        "dana@customer.example", send_at=send_at, text="Written by the old layout", headers={"X-Note": "old"}
    )["id"]
    answer = api.status(message_id)
    keys = Keys(prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:  # as the admission script of earlier versions wrote it
        content = json.loads(client.execute_command("GETDEL", keys.content(message_id)))
        scopes = ["recipient_domain:customer.example", "inbox:alice@acme.example", "global"]
        old = {
            **content,
            "id": message_id,
            "scopes": json.dumps(scopes),
            "to_canonical": "dana@customer.example",
        }
        client.hset(keys.msg(message_id), mapping=old)
    finally:
        client.close()
    assert api.status(message_id) == answer
    record = settle(api, [message_id])[message_id]
    assert record["status"] == "sent"
    [received] = smtp.received
    assert received.message.get_content().strip() == "Written by the old layout"
    assert received.message["X-Note"] == "old"


def _headers_not_json(client: redis.Redis, key: str) -> None:
    """A hand edit, a bug of an older version: its headers are not JSON."""
    client.set(key, json.dumps({**json.loads(client.get(key) or "{}"), "headers": '{"X-Note": '}))


def _body_gone(client: redis.Redis, key: str) -> None:
    """Evicted by a Redis not set to noeviction, or lost in a partial restore."""
    assert client.delete(key) == 1


@pytest.mark.parametrize(
    ("damage", "said"),
    [(_headers_not_json, "cannot be rendered"), (_body_gone, "its content is gone from Redis")],
    ids=["headers-not-json", "body-gone"],
)
def test_a_message_whose_content_is_damaged_or_gone_fails_and_nothing_is_sent(
    api: Api,
    smtp: SmtpSink,
    redis_url: str,
    prefix: str,
    damage: Callable[[redis.Redis, str], None],
    said: str,
) -> None:
    send_at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    message_id = api.send("dana@customer.example", send_at=send_at)["id"]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        damage(client, Keys(prefix).content(message_id))
    finally:
        client.close()
    record = settle(api, [message_id])[message_id]
    assert record["status"] == "failed" and statuses(record) == ["queued", "failed"]
    assert said in record["history"][-1]["detail"]
    assert smtp.received == []


def test_a_record_that_cannot_be_read_fails_and_delivery_goes_on(
    api: Api, smtp: SmtpSink, redis_url: str, prefix: str
) -> None:
    send_at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    damaged_id = api.send("dana@customer.example", send_at=send_at)["id"]
    key = Keys(prefix).msg(damaged_id)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.hset(key, "attempts", "many")  # not a count: the record cannot be read
        wait_until(lambda: client.hget(key, "status") == "failed", what="the damaged message to fail")
        last = json.loads(client.lrange(Keys(prefix).hist(damaged_id), -1, -1)[0])
    finally:
        client.close()
    assert last["cause"] == "unsendable" and last["detail"].startswith("cannot be read: ValueError")
    # The claim loop survived it: the next message goes out.
    later_id = api.send("erin@customer.example")["id"]
    assert settle(api, [later_id])[later_id]["status"] == "sent"
    assert list(received_ids(smtp)) == [header_id(later_id)]


def test_550_at_rcpt_bounces_without_retry(api: Api, smtp: SmtpSink) -> None:
    bounced_id = api.send("bounce.me@customer.example")["id"]
    record = settle(api, [bounced_id])[bounced_id]
    assert record["status"] == "bounced"
    assert record["smtp_code"] == 550
    assert "user unknown" in (record["smtp_text"] or "")
    assert record["attempts"] == 1
    assert statuses(record) == ["queued", "sending", "bounced"]
    assert causes(record)[-1] == "smtp_5xx"
    assert record["history"][-1]["detail"].startswith("rcpt: 550")

    # The due queue is worked in time order: a message due later than any retry of the bounce
    # could be (retry base 0.2 s, +20% jitter) is only sent after such a retry would have been.
    send_at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    later_id = api.send("erin@customer.example", send_at=send_at)["id"]
    assert settle(api, [later_id])[later_id]["status"] == "sent"
    assert api.status(bounced_id)["attempts"] == 1
    assert list(received_ids(smtp)) == [header_id(later_id)]


def test_451_at_rcpt_is_retried_until_max_attempts(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink
) -> None:
    api = client_for(make_daemon(RULES, max_attempts="3"), "agent", "sdr-bot")
    message_id = api.send("defer.me@customer.example")["id"]
    record = settle(api, [message_id])[message_id]
    assert record["status"] == "failed"
    assert record["attempts"] == 3
    assert record["smtp_code"] == 451
    assert statuses(record) == [
        "queued",
        "sending",
        "deferred",
        "sending",
        "deferred",
        "sending",
        "failed",
    ]
    assert causes(record)[2] == causes(record)[4] == "smtp_4xx"
    assert causes(record)[-1] == "retries_exhausted"
    assert "after 3 attempts" in record["history"][-1]["detail"]
    assert smtp.received == []


@pytest.mark.parametrize(
    "reply",
    ["454 4.7.0 Throttling failure", "421 4.7.0 Too many connections, closing channel"],
    ids=["454", "421"],
)
def test_relay_slow_down_is_retried_until_sent(api: Api, smtp: SmtpSink, reply: str) -> None:
    smtp.mail_reply = reply
    ids = [api.send(f"slow{i}@customer.example")["id"] for i in range(5)]

    def deferred_twice() -> bool:
        return all(statuses(api.status(i)).count("deferred") >= 2 for i in ids)

    wait_until(deferred_twice, timeout=20, what="every message to be deferred twice by the relay")
    assert smtp.received == []
    smtp.mail_reply = None

    records = settle(api, ids)
    assert {i: r["status"] for i, r in records.items()} == dict.fromkeys(ids, "sent")
    code = reply[:3]
    for record in records.values():
        assert "bounced" not in statuses(record)
        assert record["uncertain"] == 0
        deferrals = [step for step in record["history"] if step["status"] == "deferred"]
        assert any(step["detail"].startswith(f"mail: {code}") for step in deferrals), deferrals
    assert received_ids(smtp) == Counter({header_id(i): 1 for i in ids})


def test_every_uncertain_attempt_is_counted(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink
) -> None:
    """Each attempt whose body went out without a reply in time may have delivered: each one counts."""
    api = client_for(make_daemon(RULES, smtp_timeout="0.5"), "agent", "sdr-bot")
    smtp.delay = 1.0  # the relay answers DATA only after sendguard's deadline
    message_id = api.send("late@customer.example")["id"]

    def uncertain_attempts() -> int:
        return causes(api.status(message_id)).count("uncertain")

    wait_until(lambda: uncertain_attempts() >= 2, timeout=20, what="two uncertain attempts")
    smtp.delay = 0.0
    record = settle(api, [message_id])[message_id]
    assert record["status"] == "sent"
    counted = causes(record).count("uncertain")
    assert counted >= 2
    assert record["uncertain"] == counted, record["history"]
    assert received_ids(smtp)[header_id(message_id)] - 1 <= record["uncertain"]
    for step in record["history"]:
        if step["cause"] == "uncertain":
            assert step["detail"], f"an uncertain attempt should say what happened: {record['history']}"


def test_waiting_for_a_relay_connection_is_not_an_uncertain_send(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink
) -> None:
    """A relay that answers every message well within the timeout gets each message exactly once,
    even when messages queue for the daemon's only relay connection."""
    daemon = make_daemon(RULES, smtp_timeout="2", smtp_connections="1")
    api = client_for(daemon, "agent", "sdr-bot")
    smtp.delay = 0.8
    ids = [api.send(f"queue{i}@customer.example")["id"] for i in range(4)]
    records = settle(api, ids, timeout=60)
    assert {r["status"] for r in records.values()} == {"sent"}
    assert {i: r["uncertain"] for i, r in records.items()} == dict.fromkeys(ids, 0), {
        i: [(h["status"], h["cause"]) for h in r["history"]] for i, r in records.items()
    }
    assert received_ids(smtp) == Counter({header_id(i): 1 for i in ids})


def test_connections_to_the_relay_are_reused(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink
) -> None:
    api = client_for(make_daemon(RULES, smtp_connections="3"), "agent", "sdr-bot")
    ids = [api.send(f"reuse{i}@customer.example")["id"] for i in range(20)]
    records = settle(api, ids)
    assert {r["status"] for r in records.values()} == {"sent"}
    assert received_ids(smtp) == Counter({header_id(i): 1 for i in ids})
    assert smtp.connections <= 3, f"{smtp.connections} SMTP connections for 20 messages"


def test_sandbox_outbox_when_no_relay_is_configured(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES, smtp_url="")
    api = client_for(daemon, "agent", "sdr-bot")
    recipients = [f"box{i}@customer.example" for i in range(3)]
    ids = [api.send(to, subject=f"Outbox {to}")["id"] for to in recipients]
    records = settle(api, ids)
    assert {r["status"] for r in records.values()} == {"sent"}
    assert all("sandbox outbox" in (r["smtp_text"] or "") for r in records.values())

    outbox = Path(daemon.env["SENDGUARD_DATA_DIR"]) / "outbox"
    assert sorted(p.name for p in outbox.iterdir()) == sorted(f"{i}.eml" for i in ids)
    parser = email.parser.BytesParser(policy=email.policy.default)
    for message_id, to in zip(ids, recipients, strict=True):
        parsed = parser.parsebytes((outbox / f"{message_id}.eml").read_bytes())
        assert parsed["To"] == to
        assert parsed["Message-ID"] == header_id(message_id)
        assert parsed["Subject"] == f"Outbox {to}"
        assert parsed["From"].addresses[0].addr_spec == "alice@acme.example"
        assert parsed["Date"] is not None
        body = parsed.get_body(("plain",))
        assert body is not None
        assert body.get_content().strip() == "Hello from the test suite"
    assert smtp.received == []
    assert smtp.connections == 0


# -- drills -------------------------------------------------------------------


@pytest.mark.drill
def test_sigterm_drains_in_flight_deliveries(
    make_daemon: MakeDaemon, mint: Mint, smtp: SmtpSink, redis_url: str, prefix: str
) -> None:
    smtp.delay = 0.5
    token = mint("agent", "sdr-bot")
    first = make_daemon(RULES, process=True)  # it takes SIGTERM
    api = Api(first, token)
    try:
        ids = [api.send(f"drain{i}@customer.example")["id"] for i in range(5)]
        in_flight: set[str] = wait_until(
            lambda: {i for i in ids if api.status(i)["status"] == "sending"},
            what="a delivery to be in flight",
        )
    finally:
        api.close()
    assert first.terminate() == 0, first.log()

    # What was in flight when SIGTERM came finished before the daemon exited; nothing is left mid-send.
    keys = Keys(prefix)
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        after = {i: store.hget(keys.msg(i), "status") for i in ids}
    finally:
        store.close()
    assert "sending" not in after.values(), after
    assert {i: after[i] for i in in_flight} == dict.fromkeys(in_flight, "sent")
    assert set(after.values()) <= {"sent", "queued", "deferred"}, after
    drained = received_ids(smtp)
    assert all(drained[header_id(i)] >= 1 for i in in_flight)

    second = make_daemon(RULES)
    api = Api(second, token)
    try:
        records = settle(api, ids)
    finally:
        api.close()
    assert {i: r["status"] for i, r in records.items()} == dict.fromkeys(ids, "sent")
    counts = received_ids(smtp)
    assert set(counts) == {header_id(i) for i in ids}
    duplicates = sum(count - 1 for count in counts.values())
    uncertain = sum(r["uncertain"] for r in records.values())
    assert duplicates <= uncertain, (counts, uncertain)


def redis_servers_of(data: Path) -> list[int]:
    """Pids of running redis-servers working in this data dir (the embedded config's `dir`)."""
    redis_dir = (data / "redis").resolve()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() != "redis-server":
                    continue
                if (entry / "cwd").resolve() == redis_dir and process_alive(int(entry.name)):
                    pids.append(int(entry.name))
    return sorted(pids)


@pytest.fixture
def embedded_redis_reaper() -> Iterator[list[Path]]:
    """Data dirs whose embedded redis-servers this test started; any still running are stopped after it."""
    data_dirs: list[Path] = []
    yield data_dirs
    for data in data_dirs:
        for pid in redis_servers_of(data):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            wait_until(lambda pid=pid: not process_alive(pid), timeout=10, what=f"redis-server {pid} to stop")


@pytest.mark.drill
def test_embedded_redis_survives_a_daemon_crash(
    make_daemon: MakeDaemon, mint: Mint, tmp_path: Path, embedded_redis_reaper: list[Path]
) -> None:
    first = make_daemon(RULES, embedded=True)
    assert "SENDGUARD_REDIS_URL" not in first.env
    assert first.env["SENDGUARD_RULES"] == str(tmp_path / "rules.toml")
    data = Path(first.env["SENDGUARD_DATA_DIR"])
    embedded_redis_reaper.append(data)
    pid_file = data / "redis" / "redis.pid"

    token = mint("agent", "sdr-bot", daemon=first)  # on its embedded Redis, found as the CLI finds it
    api = Api(first, token)
    try:
        send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        decision = api.send("later@customer.example", send_at=send_at)
        assert decision["status"] == "queued"
        message_id = decision["id"]
        before = api.status(message_id)
    finally:
        api.close()

    old_pid = int(pid_file.read_text())
    assert process_alive(old_pid)
    assert redis_servers_of(data) == [old_pid]
    first.kill()
    assert process_alive(old_pid), "SIGKILL to the daemon should leave its embedded redis-server orphaned"

    second = make_daemon(RULES, embedded=True, data_dir=data)
    new_pid = int(pid_file.read_text())
    assert new_pid != old_pid
    assert not process_alive(old_pid), "the orphaned redis-server was not replaced"
    assert process_alive(new_pid)
    assert redis_servers_of(data) == [new_pid]

    api = Api(second, token)
    try:
        after = api.status(message_id)
    finally:
        api.close()
    assert after["status"] == "queued"
    assert after["to"] == "later@customer.example"
    assert after["attempts"] == 0
    assert after["history"] == before["history"]

    assert second.terminate() == 0, second.log()
    wait_until(
        lambda: not process_alive(new_pid),
        timeout=10,
        what="the embedded redis-server to stop with its daemon",
    )
    assert redis_servers_of(data) == []


QUEUED_FOR_RESTART = 100_000
COPY_QUEUED = """
local record = redis.call('HGETALL', KEYS[1])
local due = redis.call('ZSCORE', KEYS[2], ARGV[3])
local first, count = tonumber(ARGV[1]), tonumber(ARGV[2])
for n = first, first + count - 1 do
  local id = ARGV[3] .. string.format('%06d', n)
  redis.call('HSET', ARGV[4] .. id, unpack(record))
  redis.call('HSET', ARGV[4] .. id, 'id', id)
  redis.call('ZADD', KEYS[2], due, id)
end
redis.call('HINCRBY', KEYS[3], 'queued', count)
"""


@pytest.mark.drill
def test_a_daemon_restarts_on_a_hundred_thousand_queued_messages(
    make_daemon: MakeDaemon, mint: Mint, embedded_redis_reaper: list[Path]
) -> None:
    """A restarted embedded Redis answers LOADING while it reads a large append-only file; the
    daemon waits for it, saying how far it got, instead of exiting on its first command."""
    first = make_daemon(RULES, embedded=True)
    data = Path(first.env["SENDGUARD_DATA_DIR"])
    embedded_redis_reaper.append(data)
    token = mint("agent", "sdr-bot", daemon=first)  # on its embedded Redis, found as the CLI finds it
    api = Api(first, token)
    try:
        send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        decision = api.send("later@customer.example", send_at=send_at)
    finally:
        api.close()
    assert decision["status"] == "queued"

    # The queue a busy deployment has: the admitted record copied under new ids, all due later.
    # Copied inside Redis, ten times faster than 100,000 round trips from here, in steps short
    # enough that the running daemon is never told BUSY.
    keys = Keys(first.env["SENDGUARD_REDIS_PREFIX"])
    client = redis.Redis(unix_socket_path=str(DataDir(data).socket_path), decode_responses=True)
    try:
        for start in range(0, QUEUED_FOR_RESTART, 10_000):
            client.eval(
                COPY_QUEUED,
                3,
                keys.msg(decision["id"]),
                keys.due,
                keys.count,
                start,
                10_000,
                decision["id"],
                keys.msg(""),
            )
        assert client.zcard(keys.due) == QUEUED_FOR_RESTART + 1
    finally:
        client.close()
    assert first.terminate() == 0, first.log()

    second = make_daemon(RULES, embedded=True, data_dir=data)
    wait_until(
        lambda: second.metric("sendguard_messages_waiting", state="queued") == QUEUED_FOR_RESTART + 1,
        what="every queued message counted after the restart",
    )
    assert "redis: loading its data set" in second.log() and "redis: data set loaded" in second.log()
    assert second.terminate() == 0, second.log()


async def test_a_claim_passes_over_at_most_32_due_entries_whose_record_is_gone(
    redis_url: str, prefix: str
) -> None:
    """Due entries left behind by records that are gone are dropped a bounded number at a time, so
    one claim never holds Redis for the length of the queue."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    try:
        await client.zadd(keys.due, {f"gone{n}": n for n in range(100)})
        await client.set(keys.store_marker, "m")
        store = Store(client, keys, StoreMarker(client, keys, value="m"))
        assert isinstance(await store.claim("daemon-a", ["t1", "t2"]), NoWork)
        assert await client.zcard(keys.due) == 100 - 32
    finally:
        await client.aclose()


async def test_a_claim_answers_each_record_as_it_stands_after_the_claim(redis_url: str, prefix: str) -> None:
    """claim.lua reads a record once and answers it with its owner and claim patched in: the answer
    must be the hash as Redis holds it after the claim, whether the fields were there or not, and
    a due entry whose record has no status is passed over as one that is gone."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    store = Store(client, keys)
    try:
        base = {"status": "queued", "to": "a@b.example", "from_addr": "s@acme.example", "agent": "x"}
        await client.hset(keys.msg("fresh"), mapping=base)
        await client.hset(keys.msg("stale"), mapping={**base, "claim": "old-token", "owner": "old-daemon"})
        await client.hset(keys.msg("statusless"), mapping={"to": "a@b.example"})
        await client.zadd(keys.due, {"fresh": 1, "stale": 2, "statusless": 3})
        await client.set(keys.store_marker, "m")
        answer = await store._claim(keys=[keys.due, keys.inflight], args=["daemon-a", "m", "t1", "t2", "t3"])
        claimed = {entry[0]: (entry[1], entry[2]) for entry in answer[2:]}
        assert set(claimed) == {"fresh", "stale"}
        for message_id, (token, flat) in claimed.items():
            stored = await client.hgetall(keys.msg(message_id))
            assert dict(zip(flat[::2], flat[1::2], strict=True)) == stored and len(flat) == 2 * len(stored)
            assert stored["claim"] == token and stored["owner"] == "daemon-a"
        assert await client.zcard(keys.due) == 0 and await client.zcard(keys.inflight) == 2
    finally:
        await client.aclose()


async def test_a_send_its_daemon_knows_never_reached_the_relay_is_requeued_not_uncertain(
    redis_url: str, prefix: str
) -> None:
    """Two sends started, then let go of as Redis failed: the one whose daemon says the relay never
    had it (a start whose reply was lost) is queued again as not sent; the other may have gone."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    store, throttles = Store(client, keys), Throttles(client, keys, lease_ms=31_000)
    records = [
        MessageRecord(
            f"m{n}", Status.QUEUED, agent="sdr-bot", from_addr="sdr@acme.example", to=f"lead{n}@c.example"
        )
        for n in range(2)
    ]
    try:
        claims = await write_claimed(client, keys, records)
        for claim in claims:
            await client.zadd(keys.inflight, {claim.message_id: 0})
            started = await store.start(
                claim,
                "attempt 1",
                {"attempts": 1},
                "",
                throttles.reservation(throttles.buckets([], {}), f"{claim.message_id}:1"),
                [],
            )
            assert started.moved is Moved.MOVED
        assert await store.recover(own="test", unsent=[claims[0].token]) == (2, 1)
        found = {r.id: r for r in await store.records(["m0", "m1"], ["uncertain"]) if r is not None}
        assert {key: (r.status, r.uncertain) for key, r in found.items()} == {
            "m0": (Status.QUEUED, 0),
            "m1": (Status.QUEUED, 1),
        }
        causes = [json.loads(entry)["cause"] for entry in await client.lrange(keys.hist("m0"), 0, -1)]
        assert causes[-1] == "not_sent"
    finally:
        await client.aclose()


async def test_a_stop_while_a_claim_is_in_flight_ends_the_claim_loop_when_the_claim_returns(
    own_redis: RedisServer, smtp: SmtpSink, tmp_path: Path
) -> None:
    """The claim loop is told to stop while Redis holds its claim; the claim then fails. The loop
    ends at once, rather than waiting out the pause between retries (a second) first."""
    rules = tmp_path / "rules.toml"
    rules.write_text(AGENT_RULES)
    settings = Settings(redis_url=own_redis.url, redis_prefix="stop", smtp_url=smtp.url)
    async with redis_connection(settings, for_daemon=False) as (client, _):
        deliverer = (await build(settings, load_rules(rules), client)).deliverer
        with redis.Redis.from_url(own_redis.url) as pauser:
            pauser.execute_command("CLIENT", "PAUSE", "10000", "ALL")
        # The store's own claim, called through; the event says the loop is inside it.
        in_claim, claim = asyncio.Event(), deliverer._store.claim

        async def claim_seen(owner: str, tokens: Sequence[str]) -> list[Claim] | NoWork:
            in_claim.set()
            return await claim(owner, tokens)

        deliverer._store.claim = claim_seen  # type: ignore[method-assign]
        claiming = asyncio.create_task(deliverer.run())
        await asyncio.wait_for(in_claim.wait(), timeout=10)  # and waits for the paused Redis
        assert not claiming.done()
        await deliverer.stop(grace=1)
        assert own_redis.process is not None
        own_redis.process.kill()  # the claim fails: the loop would wait a second before its next
        started = time.monotonic()
        await asyncio.wait_for(claiming, timeout=10)
        assert time.monotonic() - started < 0.5


@contextlib.asynccontextmanager
async def _one_due_message(
    own_redis: RedisServer, smtp: SmtpSink, tmp_path: Path
) -> AsyncIterator[tuple[Runtime, aioredis.Redis, Keys]]:
    """A daemon's parts built on `own_redis`, not running, and one message `m0` queued and due."""
    rules = tmp_path / "rules.toml"
    rules.write_text(AGENT_RULES)
    settings = Settings(redis_url=own_redis.url, redis_prefix="due", smtp_url=smtp.url)
    async with redis_connection(settings, for_daemon=False) as (client, _):
        runtime, keys = await build(settings, load_rules(rules), client), Keys("due")
        record = MessageRecord(
            "m0", Status.QUEUED, agent="sdr-bot", from_addr="sdr@acme.example", to="lead@c.example"
        )
        (claim,) = await write_claimed(client, keys, [record])
        await client.zadd(keys.inflight, {claim.message_id: 0})
        assert await runtime.store.recover(own="test", unsent=[claim.token]) == (1, 0)  # queued, due
        yield runtime, client, keys


def _cancel_running(qualname: str) -> list[asyncio.Task[Any]]:
    """The tasks running the coroutine `qualname`, cancelled so they cannot outlive the test."""
    found = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == qualname]
    for task in found:
        task.cancel()
    return found


async def test_a_claim_answered_after_a_stop_starts_no_delivery_and_goes_back_to_the_queue(
    own_redis: RedisServer, smtp: SmtpSink, tmp_path: Path
) -> None:
    """The claim loop is told to stop while Redis holds its claim; then Redis answers it with a
    message. No delivery starts: one started now would run on past the closing of the relay pool
    and of Redis, unwaited, and open connections nobody closes (the loop's close then found them).
    The claim goes back to the queue when the stopping daemon's claims are recovered."""
    async with _one_due_message(own_redis, smtp, tmp_path) as (runtime, client, keys):
        deliverer, store = runtime.deliverer, runtime.store
        # The store's own claim, called through; the event says the loop is inside it.
        in_claim, claim_due = asyncio.Event(), store.claim

        async def claim_seen(owner: str, tokens: Sequence[str]) -> list[Claim] | NoWork:
            in_claim.set()
            return await claim_due(owner, tokens)

        with redis.Redis.from_url(own_redis.url) as pauser:
            pauser.execute_command("CLIENT", "PAUSE", "10000", "WRITE")  # the claim's script waits
            store.claim = claim_seen  # type: ignore[method-assign]
            claiming = asyncio.create_task(deliverer.run())
            await asyncio.wait_for(in_claim.wait(), timeout=10)  # and waits for the paused Redis
            await deliverer.stop(grace=1)
            pauser.execute_command("CLIENT", "UNPAUSE")
        await asyncio.wait_for(claiming, timeout=10)
        assert not _cancel_running("Deliverer._deliver"), "a delivery started after the stop"
        await store.forget_instance(runtime.instance)
        assert await store.recover() == (1, 0)
        assert (await client.hget(keys.msg("m0"), "status")) == Status.QUEUED.value
        assert smtp.connections == 0


async def test_a_relay_answer_unrecorded_at_the_end_of_the_grace_gets_another_and_then_is_let_go_of(
    own_redis: RedisServer, smtp: SmtpSink, tmp_path: Path
) -> None:
    """The relay answers a send while Redis cannot take the record of it, and the daemon stops.
    The delivery is cancelled at the end of the grace, but its record goes on (shielded) for up to
    another grace, then is cancelled too: nothing runs on past the stop, where it would open a
    connection to Redis after Redis is closed. Its message is never lost nor sent twice."""
    async with _one_due_message(own_redis, smtp, tmp_path) as (runtime, client, keys):
        deliverer, store = runtime.deliverer, runtime.store
        smtp.delay = 1.0  # the relay holds its answer while Redis is paused
        delivering = asyncio.create_task(deliverer.run())
        await asyncio.to_thread(wait_until, lambda: smtp.answering == 1, what="the data at the relay")
        with redis.Redis.from_url(own_redis.url) as pauser:
            pauser.execute_command("CLIENT", "PAUSE", "20000", "WRITE")  # the answer's record waits
            try:
                await deliverer.stop(grace=1.5)
                recording = _cancel_running("Deliverer._until_stored")
                assert not recording, "the record of a relay's answer runs on past the stop"
            finally:
                pauser.execute_command("CLIENT", "UNPAUSE")
        await asyncio.wait_for(delivering, timeout=10)
        await runtime.transport.close()
        assert len(smtp.received) == 1
        await store.forget_instance(runtime.instance)
        # Redis may still run the record it had been sent before the cancel (this one does, once
        # unpaused, and on a loaded machine as late as between two of our commands): then the
        # message is sent and nothing is left to recover; otherwise it is recovered uncertain and
        # queued again, and a record arriving after that finds its claim gone and changes nothing.
        recovered = await store.recover()
        outcome = (await client.hget(keys.msg("m0"), "status"), recovered)
        assert outcome in {("sent", (0, 0)), ("queued", (1, 1))}


@pytest.mark.parametrize(
    ("replies", "stalled"),
    [({}, "RSET"), ({"RSET": "500 5.5.1 not now"}, "QUIT")],
    ids=["reset-after-a-refusal", "quit-after-a-failed-reset"],
)
async def test_a_delivery_cancelled_while_the_pool_tidies_its_connection_closes_it(
    replies: dict[str, str], stalled: str
) -> None:
    # A shutdown's cancel can land while the pool resets a connection after a refusal, or says
    # QUIT to one it could not reset. Left open, that connection outlives the pool and the loop.
    asked, closed = asyncio.Event(), asyncio.Event()
    replies = {"RCPT": "550 5.1.1 user unknown", **replies}
    ends: list[asyncio.StreamWriter] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ends.append(writer)
        writer.write(b"220 stalling relay\r\n")
        while line := await reader.readline():
            verb = line[:4].decode().upper()
            if verb == stalled:
                asked.set()  # and no reply, ever
            else:
                writer.write(f"{replies.get(verb, '250 OK')}\r\n".encode())
        closed.set()  # the client hung up
        writer.close()

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = RelayPool(RedactedURL(f"smtp://127.0.0.1:{port}?starttls=off"), size=1, timeout=60)
    sending = asyncio.create_task(pool.send("m1", "sdr@sender.example", "zoe@customer.example", b"Hi\r\n"))
    try:
        await asyncio.wait_for(asked.wait(), 10)
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        # `sending` still holds the connection in its frames: only closing it ends it now.
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        for end in ends:  # a failure must not leave the test's loop with an open connection
            end.close()
        await pool.close()
        server.close()
        await server.wait_closed()
