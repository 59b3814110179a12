"""Budgets one request cannot blow, and answers that are true (issue 11, properties 7 and 8).

A batch's template is stored once and a recipient keeps its values; `text` and `html` are capped;
admission answers 503 `store_full` before Redis reaches its maxmemory; a body that is not text is a
422 naming the field on every JSON route; a batch cut short by Redis is completed by its retry;
a single message retried without a key is answered by the first.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from sendguard.config import Settings
from sendguard.intake.batches import CHUNK
from sendguard.state.embedded_redis import DataDir, EmbeddedRedis
from sendguard.state.keys import Keys
from sendguard.submission import MAX_BODY_BYTES
from tests.conftest import Api, Daemon, RedisServer, message, wait_until
from tests.peers import SmtpSink

ClientFor = Callable[..., Api]
Mint = Callable[..., str]
TIER_0 = '[ingress]\nmx_check = "off"\n\n[approvals]\nmass_send_threshold = 100000\n'
BODY = "Hi {{first_name}},\n\n" + "a line of an ordinary cold email, long enough to matter.\n" * 350
LATER = "2099-01-01T00:00:00+00:00"


def batch(recipients: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": "Alice <alice@acme.example>",
        "subject": "A question for {{first_name}}",
        "text": BODY,
        "html": "<p>Hi {{first_name}}</p>",
        "headers": {"X-Campaign": "q4"},
        "segment": "cfo-na-q4",
        "agent_version": "test-1",
        "recipients": recipients,
    }
    body.update(overrides)
    return body


def people(count: int, prefix: str = "p") -> list[dict[str, Any]]:
    return [{"to": f"{prefix}{n}@customer.example", "vars": {"first_name": f"P{n}"}} for n in range(count)]


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def message_keys(client: redis.Redis, keys: Keys) -> list[str]:
    return list(client.scan_iter(match=keys.msg("*"), count=1000))


# --- property 7: a batch stores its template once --------------------------------------------------


def test_a_batch_stores_its_template_once_and_each_recipient_only_its_values(
    make_daemon: Callable[..., Daemon],
    client_for: ClientFor,
    smtp: SmtpSink,
    store: redis.Redis,
    prefix: str,
) -> None:
    keys = Keys(prefix)
    daemon = make_daemon('[ingress]\nrecipient_cooldown = "0s"\n\n[approvals]\nmass_send_threshold = 5\n')
    agent = client_for(daemon, "agent", "sdr-bot")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    finn = client_for(daemon, "approver", "finn", "--group", "sales")
    recipients = [*people(5), {"to": "info@customer.example", "vars": {"first_name": "Info"}}]
    answer = agent.client.post("/v1/batches", json=batch(recipients), timeout=60).json()
    accepted = [row["id"] for row in answer["accepted"]]
    [rejected] = [row["id"] for row in answer["rejected"]]
    assert len(accepted) == 5 and answer["approval"]["tier"] == 2

    template = store.hgetall(keys.template(answer["id"]))
    assert (template["text"], template["waiting"]) == (BODY, "5")
    assert store.pttl(keys.template(answer["id"])) == -1, "kept while its messages wait"
    for message_id in accepted:
        stored = store.hgetall(keys.msg(message_id))
        assert not {"subject", "text", "html", "headers"} & set(stored), "no copy of the content"
        assert stored["template"] == answer["id"] and list(json.loads(stored["values"])) == ["first_name"]
        size = store.memory_usage(keys.msg(message_id))
        assert size is not None and size < len(BODY) / 4, "a recipient costs its values, not the body"
    kept = set(store.hgetall(keys.msg(rejected)))
    assert not {"subject", "text", "html", "headers", "values", "template"} & kept, "a rejection keeps none"

    # Every reader sees the content each recipient gets: the API, the approvers, the relay.
    shown = agent.status(accepted[1])
    assert shown["subject"] == "A question for P1"
    sample = dana.client.get(f"/v1/approvals/{answer['approval']['id']}").json()["contents"]["samples"][0]
    assert sample["text"] == BODY.replace("{{first_name}}", sample["subject"].rpartition(" ")[2])
    for approver in (dana, finn):
        response = approver.client.post(
            f"/v1/approvals/{answer['approval']['id']}/approve", json={"comment": "ok"}
        )
        assert response.status_code == 200, response.text
    arrived = {r.rcpt_tos[0]: r.message for r in smtp.wait_for(5)}
    mail = arrived["p3@customer.example"]
    text = mail.get_body(("plain",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == BODY.replace("{{first_name}}", "P3")
    assert (mail["Subject"], mail["X-Campaign"]) == ("A question for P3", "q4")

    # Once none of its messages waits, the template expires with them.
    for message_id in accepted:
        agent.wait_status(message_id, "sent")
    assert store.hget(keys.template(answer["id"]), "waiting") == "0"
    assert store.pttl(keys.template(answer["id"])) > 0


# --- property 7: size caps -------------------------------------------------------------------------


def test_text_and_html_are_capped_at_one_mebibyte_each_even_once_filled(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(TIER_0, max_request_bytes=str(8 << 20))
    agent = client_for(daemon, "agent", "sdr-bot")
    for part in ("text", "html"):
        over = agent.client.post(
            "/v1/messages", json=message("ann@customer.example", **{part: "x" * (MAX_BODY_BYTES + 1)})
        )
        assert over.status_code == 422, over.text
        [error] = over.json()["errors"]
        assert error["field"] == part and "1,048,577 bytes" in error["message"], error
        refused = agent.client.post(
            "/v1/batches", json=batch(people(1), **{part: "é" * (MAX_BODY_BYTES // 2 + 1)}), timeout=60
        )
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == part, refused.text
    at_cap = agent.send("ann@customer.example", text="x" * MAX_BODY_BYTES)
    assert at_cap["status"] == "queued", at_cap

    # Filling can lengthen a body past the cap: that recipient is rejected, unbuilt; the rest go.
    template = "x" * (MAX_BODY_BYTES - 10) + "{{pad}}"
    filled = [
        {"to": "short@customer.example", "vars": {"first_name": "S", "pad": "ok"}},
        {"to": "long@customer.example", "vars": {"first_name": "L", "pad": "y" * 11}},
    ]
    answer = agent.client.post("/v1/batches", json=batch(filled, text=template, html=None), timeout=60).json()
    assert [row["to"] for row in answer["accepted"]] == ["short@customer.example"]
    [too_large] = answer["rejected"]
    assert [reason["code"] for reason in too_large["reasons"]] == ["content_too_large"]
    assert "1,048,577 bytes once filled" in too_large["reasons"][0]["detail"]


# --- property 7: Redis memory ----------------------------------------------------------------------


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of its own with a small maxmemory, refusing writes when full (noeviction)."""
    directory = tmp_path / "small-redis"
    directory.mkdir()
    server = RedisServer(directory, "--maxmemory", "12mb", "--maxmemory-policy", "noeviction")
    server.start()
    yield server
    server.stop()


def test_admission_answers_store_full_before_redis_reaches_its_maxmemory(
    make_daemon: Callable[..., Daemon], mint: Mint, small_redis: RedisServer
) -> None:
    daemon = make_daemon(TIER_0, redis_url=small_redis.url)
    agent = Api(daemon, mint("agent", "sdr-bot", daemon=daemon))
    watcher = redis.Redis.from_url(small_redis.url, decode_responses=True)
    answers = []
    for wave in range(60):  # each wave ~1 MB in Redis: the 12 MB fill up long before the last
        response = agent.client.post(
            "/v1/batches", json=batch(people(200, f"w{wave}-"), send_at=LATER), timeout=60
        )
        answers.append(response)
        if response.status_code != 201:
            break
    full = answers[-1]
    assert full.status_code == 503, full.text
    assert full.json()["error"] == "store_full" and "maxmemory" in full.json()["detail"]
    assert len(answers) > 3 and all(answer.status_code == 201 for answer in answers[:-1])
    # Refused before Redis was full: no write was ever refused for memory, and there is room left.
    memory = watcher.info("memory")
    assert int(memory["used_memory"]) < int(memory["maxmemory"])
    assert "errorstat_OOM" not in watcher.info("errorstats")
    # The accepted messages still move: cancelling one is a write, and it works.
    waiting = answers[0].json()["accepted"][0]["id"]
    assert agent.client.post(f"/v1/messages/{waiting}/cancel").json()["status"] == "cancelled"
    watcher.close()


def test_the_embedded_redis_runs_with_maxmemory_and_noeviction(tmp_path: Path) -> None:
    assert Settings().redis_maxmemory == 1 << 30
    embedded = EmbeddedRedis(DataDir(tmp_path / "data"), 64 << 20)
    client = redis.Redis.from_url(embedded.start(), decode_responses=True)
    try:
        assert client.config_get("maxmemory") == {"maxmemory": str(64 << 20)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()
        embedded.stop()


def test_a_redis_without_maxmemory_is_warned_about_at_start(
    make_daemon: Callable[..., Daemon], caplog: pytest.LogCaptureFixture
) -> None:
    make_daemon(TIER_0)  # the suite's Redis has no maxmemory
    assert any("Redis has no maxmemory" in record.getMessage() for record in caplog.records)


# --- property 8: strict decoding -------------------------------------------------------------------

BAD = "@@not-text@@"
NOT_TEXT = {
    "raw-surrogate": b"\xed\xa0\x80",  # what UTF-8 would make of U+D800, which it may not encode
    "escaped-surrogate": b"\\udfff",
    "invalid-utf8": b"\xff\xfe",
}
ROUTES = [
    ("agent", "/v1/messages", message("ann@customer.example", text=f"Hello {BAD}"), "text"),
    ("agent", "/v1/batches", batch([*people(2), {"to": "x@customer.example", "vars": {"first_name": BAD}}]),
     "recipients.2.vars.first_name"),
    ("agent", "/v1/events", {"type": "reply", "message_id": "0123", "text": BAD}, "text"),
    ("admin", "/v1/suppressions", {"entries": ["a@customer.example", BAD]}, "entries.1"),
    ("admin", "/v1/safe-mode", {"scope": "segment:smb", "reason": BAD}, "reason"),
    ("admin", "/v1/recall", {"campaign": "q4", "reason": BAD}, "reason"),
    ("admin", "/v1/alerts", {"alerts": [{"status": "firing", "labels": {BAD: "x"}}]}, "alerts.0.labels"),
]  # fmt: skip


@pytest.mark.parametrize("kind", NOT_TEXT)
def test_a_body_that_is_not_text_is_a_422_naming_the_field_on_every_route(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, kind: str
) -> None:
    daemon = make_daemon(TIER_0)
    clients = {"agent": client_for(daemon, "agent", "sdr-bot"), "admin": client_for(daemon, "admin", "root")}
    for role, route, body, field in ROUTES:
        raw = json.dumps(body).encode().replace(BAD.encode(), NOT_TEXT[kind])
        response = clients[role].client.post(route, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, (route, response.text)
        [error] = response.json()["errors"]
        assert error["field"].startswith(field) and "not a character" in error["message"], (route, error)
    assert clients["admin"].client.get("/v1/safe-mode").json() == []
    assert clients["admin"].client.get("/v1/suppressions").json() == {"addresses": [], "domains": []}
    assert smtp.snapshot() == []


def test_a_batch_whose_recipient_550_is_not_text_admits_none_of_its_600(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, store: redis.Redis, prefix: str
) -> None:
    daemon = make_daemon(TIER_0)
    agent = client_for(daemon, "agent", "sdr-bot")
    recipients = people(600)
    recipients[550]["vars"]["first_name"] = BAD
    raw = json.dumps(batch(recipients)).encode().replace(BAD.encode(), NOT_TEXT["raw-surrogate"])
    response = agent.client.post("/v1/batches", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "recipients.550.vars.first_name"
    assert message_keys(store, Keys(prefix)) == []
    assert smtp.snapshot() == []
    # Fixed, the same batch goes whole: no recipient is told it is in its own cooldown.
    recipients[550]["vars"]["first_name"] = "P550"
    answer = agent.client.post("/v1/batches", json=batch(recipients), timeout=60).json()
    assert len(answer["accepted"]) == 600 and answer["rejected"] == []


# --- property 8: a batch cut short by Redis is completed by its retry ------------------------------


def _shutdown_once_admitting(server: RedisServer, baseline: int, done: threading.Event) -> None:
    """From a connection of its own, SHUTDOWN Redis (append-only file flushed) once admission began."""
    watcher = redis.Redis.from_url(server.url)
    deadline = time.monotonic() + 60
    while watcher.dbsize() < baseline + 100 and time.monotonic() < deadline:  # ~20 recipients in
        time.sleep(0.001)
    with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it goes
        watcher.shutdown()
    done.set()


@pytest.mark.parametrize("key", ["q4-wave-1", None], ids=["own-key", "derived-key"])
def test_redis_lost_mid_batch_then_the_retry_completes_it_with_no_duplicate_and_no_false_cooldown(
    make_daemon: Callable[..., Daemon], mint: Mint, own_redis: RedisServer, smtp: SmtpSink, key: str | None
) -> None:
    # Two chunks of admission: Redis goes away while the first is written (50 to 100 recipients in),
    # so the retry completes one chunk and writes the other whole.
    count = 2 * CHUNK
    # More relay connections than the default: the 1,000 sends at the end are only the check.
    daemon = make_daemon(TIER_0, redis_url=own_redis.url, smtp_connections="16", workers="16")
    keys = Keys(daemon.env["SENDGUARD_REDIS_PREFIX"])
    agent = Api(daemon, mint("agent", "sdr-bot", daemon=daemon))
    admin = Api(daemon, mint("admin", "root", daemon=daemon))
    # Held while the batch is admitted twice, so what reaches the relay is decided by the retry alone.
    assert admin.client.post("/v1/safe-mode", json={"scope": "global", "reason": "drill"}).status_code == 201
    # A short text: what is proved is who gets a message, and the long body only made each of the
    # 2,000 checks and the 1,000 renders and receipts slower.
    body = batch(people(count), idempotency_key=key, text="Hi {{first_name}},\n\na short note.\n")
    watcher = redis.Redis.from_url(own_redis.url, decode_responses=True)
    done = threading.Event()
    stopper = threading.Thread(target=_shutdown_once_admitting, args=(own_redis, watcher.dbsize(), done))
    stopper.start()

    first = agent.client.post("/v1/batches", json=body, timeout=120)
    stopper.join(60)
    assert done.is_set()
    assert first.status_code == 503 and first.json()["error"] == "store_unavailable", first.text
    assert own_redis.process is not None
    own_redis.process.wait(15)
    own_redis.start()
    admitted = len(message_keys(watcher, keys))
    assert 0 < admitted < count, f"Redis went away with {admitted} of {count} admitted: not mid-batch"

    second = agent.client.post("/v1/batches", json=body, timeout=120)
    assert second.status_code == 201, second.text
    answer = second.json()
    assert len(answer["accepted"]) == count and answer["rejected"] == []
    assert {row["status"] for row in answer["accepted"]} == {"held"}
    assert not [r for row in answer["accepted"] for r in row["reasons"] if r["code"] != "safe_mode"]
    assert len(message_keys(watcher, keys)) == count, "the retry made no second copy of any recipient"

    assert admin.client.delete("/v1/safe-mode/global", params={"reason": "drill over"}).status_code == 200
    smtp.wait_for(count, timeout=120)
    wait_until(lambda: watcher.hget(keys.template(answer["id"]), "waiting") == "0", what="every send done")
    arrivals = Counter(r.rcpt_tos[0] for r in smtp.snapshot())
    assert arrivals == Counter(row["to"] for row in answer["accepted"]), "each recipient exactly once"
    watcher.close()


# --- property 8: a single message without a key ---------------------------------------------------


@pytest.mark.parametrize("cooldown", ["72h", "0s"])
def test_a_single_message_retried_without_a_key_is_answered_by_the_first(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, cooldown: str
) -> None:
    # The agent's retry after a 503 it could not read, or an answer its connection lost: with a
    # cooldown it would be a false `recipient_cooldown`, without one a second copy.
    daemon = make_daemon(f'[ingress]\nrecipient_cooldown = "{cooldown}"\n')
    agent = client_for(daemon, "agent", "sdr-bot")
    first = agent.send("zoe@customer.example")
    assert first["status"] == "queued"
    retried = agent.send("zoe@customer.example")
    assert retried["id"] == first["id"] and retried["status"] in ("queued", "sending", "sent"), retried
    agent.wait_status(first["id"], "sent")
    assert agent.send("zoe@customer.example") == {"id": first["id"], "status": "sent", "reasons": []}
    # A request that differs in anything is a new decision.
    changed = agent.send("zoe@customer.example", send_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    assert changed["id"] != first["id"]
    # The same content twice on purpose: each with its own key.
    twice = [agent.send("yves@customer.example", idempotency_key=f"yves-{n}") for n in range(2)]
    assert twice[0]["id"] != twice[1]["id"]

    def arrivals() -> Counter[str]:
        return Counter(r.rcpt_tos[0] for r in smtp.snapshot())

    if cooldown == "72h":
        assert changed["reasons"][0]["code"] == "recipient_cooldown"  # true: zoe has a message
        assert twice[1]["reasons"][0]["code"] == "recipient_cooldown"
        agent.wait_status(twice[0]["id"], "sent")
    else:
        assert changed["status"] == "queued"
        wait_until(lambda: arrivals()["yves@customer.example"] == 2, what="both messages to yves")
    assert arrivals()["zoe@customer.example"] == 1
