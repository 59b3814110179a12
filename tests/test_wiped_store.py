"""A store that comes back empty or is replaced under a deployment (a Redis restarted without
persistence, a FLUSHALL, a failover to an empty replica): the daemon notices through the store
marker, claims nothing, says so, and does not start on it again until a person accepts it.

The wipe is done as the probe found it: every key under the test's prefix deleted while a daemon
runs on it (state/marker.py, README "When the store is wiped").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from sendguard.errors import ConfigError, StoreWiped
from sendguard.governance.audit import AnchorAhead, AuditLog
from sendguard.parts import build
from sendguard.rules import load_rules
from sendguard.state.embedded_redis import DataDir
from sendguard.state.keys import Keys
from sendguard.state.marker import StoreMarker, last_anchored_seq
from sendguard.state.store import NoWork, Store
from tests.conftest import Api, Daemon, LoopThread, RedisServer, message, sendguard_command, wait_until
from tests.peers import SmtpSink

RULES = """
[ingress]
mx_check = "off"
recipient_cooldown = "0s"
"""


def _wipe(redis_url: str, prefix: str) -> int:
    """Delete every key under the prefix, as an empty Redis coming back would leave it."""
    with redis.Redis.from_url(redis_url) as store:
        keys = list(store.scan_iter(f"{prefix}:*"))
        if keys:
            store.delete(*keys)
    return len(keys)


def _anchor_seqs(anchor: Path) -> list[int]:
    return [int(line.split(" ", 1)[0]) for line in anchor.read_text().splitlines() if line]


def _anchored(daemon: Daemon) -> Path:
    """The daemon's anchor file, once it holds every entry written so far."""
    settings = daemon.settings()
    anchor, keys = settings.data_dir / "audit.anchor", Keys(settings.redis_prefix)

    def caught_up() -> bool:
        with redis.Redis.from_url(daemon.env["SENDGUARD_REDIS_URL"]) as store:
            head, pending = int(store.hget(keys.audit_head, "seq") or 0), store.llen(keys.audit_pending)
        return bool(head) and not pending and last_anchored_seq(anchor) == head

    wait_until(caught_up, what="the trail to be chained and anchored")
    return anchor


def _sent_once(daemon: Daemon, agent: Api) -> Path:
    """One message sent and its entries anchored; the daemon's anchor file."""
    agent.wait_status(agent.send("first@customer.example")["id"], "sent")
    return _anchored(daemon)


def test_a_wiped_store_stops_every_claim_and_says_so_and_the_anchor_never_goes_back(
    make_daemon: Callable[..., Daemon],
    client_for: Callable[..., Api],
    smtp: SmtpSink,
    redis_url: str,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")
    anchor = _sent_once(daemon, agent)
    later = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    agent.send("later@customer.example", send_at=later)  # queued, due after the wipe
    assert (
        admin.client.post("/v1/suppressions", json={"entries": ["gone@customer.example"]}).status_code < 300
    )
    _anchored(daemon)
    before = _anchor_seqs(anchor)
    assert daemon.http.get("/readyz").status_code == 200
    assert daemon.metric("sendguard_store_wiped") == 0
    delivered = len(smtp.snapshot())

    assert _wipe(redis_url, prefix) > 0
    ready = wait_until(
        lambda: (r := daemon.http.get("/readyz")).status_code == 503 and r, what="/readyz to say 503"
    )
    print("readyz after wipe:", ready.status_code, ready.text)
    assert ready.json()["store"] == "wiped" and "wiped or replaced" in ready.json()["detail"]
    wait_until(lambda: daemon.metric("sendguard_store_wiped") == 1, what="the gauge to say wiped")

    # The on-call re-mints a token on the empty store and the agent sends to the suppressed address.
    agent2 = client_for(daemon, "agent", "sdr-bot")
    again = agent2.client.post("/v1/messages", json=message("gone@customer.example"))
    print("send after wipe:", again.status_code, again.text)
    assert again.status_code == 503 and again.json()["error"] == "store_wiped", again.text
    # A message that reached the store before the daemon looked (as from a daemon that has not
    # looked yet), due now: the claim loop must leave it where it is.
    keys = Keys(prefix)
    with redis.Redis.from_url(redis_url, decode_responses=True) as store:
        fields = {"status": "queued", "to": "gone@customer.example", "from_addr": "alice@acme.example"}
        store.hset(keys.msg("slipped"), mapping=fields | {"agent": "sdr-bot", "scopes": "[]"})
        store.zadd(keys.due, {"slipped": 0})
    time.sleep(3)  # the idle claim loop looks at least once a second
    with redis.Redis.from_url(redis_url, decode_responses=True) as store:
        left = store.zscore(keys.due, "slipped"), store.hgetall(keys.msg("slipped"))
    print("sink after wipe:", len(smtp.snapshot()) - delivered, "new; the slipped message:", left)
    assert len(smtp.snapshot()) == delivered, "a message was sent from a wiped store"
    assert left[0] == 0 and left[1]["status"] == "queued" and "owner" not in left[1], left

    after = _anchor_seqs(anchor)
    print("anchor lines before:", before[-3:], "after:", after[-3:])
    assert after == sorted(after) and after[-1] == before[-1], "an anchor line went back below the last"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("marker" in text and "accept-empty-store" in text for text in errors) == 1, errors
    assert any("names entry" in text for text in errors), errors

    # The wiped daemon writes no heartbeat that would make the store look alive, but a tombstone:
    # a daemon started on it with a data directory of its own (a rescheduled pod's) refuses it too.
    with redis.Redis.from_url(redis_url, decode_responses=True) as store:
        wait_until(lambda: store.exists(keys.store_wiped), what="the tombstone")
        assert not list(store.scan_iter(keys.instance("*"))), "the wiped daemon still heartbeats"
    with pytest.raises(StoreWiped, match="saw this store's marker gone"):
        make_daemon(RULES, data_dir=tmp_path / "new")


def test_a_store_rolled_back_to_an_older_snapshot_stops_every_claim_and_says_so(
    own_redis: RedisServer, make_daemon: Callable[..., Daemon], client_for: Callable[..., Api], smtp: SmtpSink
) -> None:
    """A Redis restored from an older snapshot keeps the marker but has lost what was written since:
    the probe's kill switch and suppression were gone, /readyz said 200, and the daemon sent to the
    suppressed address. The store's clock, moved on at every look, reads below what it saw."""
    own_redis.options = ("--appendonly", "no")  # snapshots alone, as Redis' own default keeps them
    own_redis.stop()
    own_redis.start()
    daemon = make_daemon(RULES, redis_url=own_redis.url)
    agent, admin = client_for(daemon, "agent", "sdr-bot"), client_for(daemon, "admin", "dana")
    agent.wait_status(agent.send("first@customer.example")["id"], "sent")
    clock = Keys(daemon.settings().redis_prefix).store_clock
    with redis.Redis.from_url(own_redis.url) as store:
        store.save()
        saved = int(store.get(clock) or 0)
        assert (
            admin.client.post("/v1/safe-mode", json={"scope": "global", "reason": "kill"}).status_code == 201
        )
        assert admin.client.post("/v1/suppressions", json={"entries": ["gone@customer.example"]}).is_success
        # A maintenance tick's look at the store after the snapshot, which moves its clock on.
        wait_until(lambda: int(store.get(clock) or 0) > saved, what="a look at the store after the snapshot")
    assert daemon.http.get("/readyz").status_code == 200

    with redis.Redis.from_url(own_redis.url) as store, contextlib.suppress(redis.exceptions.ConnectionError):
        store.shutdown(nosave=True)  # it comes back from the snapshot
    assert own_redis.process is not None
    own_redis.process.wait(10)
    own_redis.start()

    ready = wait_until(lambda: (r := daemon.http.get("/readyz")).status_code == 503 and r, what="a 503")
    print("readyz after the rollback:", ready.text)
    assert ready.json()["store"] == "wiped" and "went back in time" in ready.json()["detail"]
    again = agent.client.post("/v1/messages", json=message("gone@customer.example"))
    assert again.status_code == 503 and again.json()["error"] == "store_wiped", again.text
    assert daemon.metric("sendguard_store_wiped") == 1
    assert [tuple(r.rcpt_tos) for r in smtp.snapshot()] == [("first@customer.example",)]


def test_a_daemon_refuses_to_start_on_a_wiped_store_until_a_person_accepts_it(
    make_daemon: Callable[..., Daemon],
    client_for: Callable[..., Api],
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    loop_thread: LoopThread,
) -> None:
    data = tmp_path / "kept"
    daemon = make_daemon(RULES, data_dir=data)
    _sent_once(daemon, client_for(daemon, "agent", "sdr-bot"))
    daemon.stop()
    _wipe(redis_url, prefix)

    refused = sendguard_command(dict(daemon.env), "run", cwd=str(data))
    print("sendguard run on the wiped store:", refused.returncode, refused.stderr.strip()[-400:])
    assert refused.returncode == 2 and "--accept-empty-store" in refused.stderr, refused.stderr
    with redis.Redis.from_url(redis_url) as store:
        assert not list(store.scan_iter(f"{prefix}:*")), "a refused start wrote to the store"
    with pytest.raises(StoreWiped, match="no sendguard marker"):
        make_daemon(RULES, data_dir=data)
    (data / "store.marker").unlink()  # a data directory from before markers: its anchor says it too
    with pytest.raises(StoreWiped, match="names entry"):
        make_daemon(RULES, data_dir=data)

    settings = daemon.settings()
    rules = load_rules(Path(daemon.env["SENDGUARD_RULES"]))

    async def accept() -> list[str]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            await build(
                settings, rules, client, anchor=DataDir(data).audit_anchor, accept_empty_store="cli:dana"
            )
            return [str(e) for e in await client.lrange(Keys(prefix).audit_pending, 0, -1)]
        finally:
            await client.aclose()

    pending = loop_thread.run(accept())
    assert any('"store.accepted"' in e and "cli:dana" in e for e in pending), pending
    assert not (data / "audit.anchor").exists() and list(data.glob("audit.anchor.before-*"))
    restarted = make_daemon(RULES, data_dir=data)
    assert restarted.http.get("/readyz").status_code == 200
    agent = client_for(restarted, "agent", "sdr-bot")
    agent.wait_status(agent.send("after@customer.example")["id"], "sent")


def test_a_new_deployment_starts_and_one_from_before_markers_is_taken_up(
    make_daemon: Callable[..., Daemon],
    client_for: Callable[..., Api],
    redis_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    data = tmp_path / "kept"
    daemon = make_daemon(RULES, data_dir=data)
    assert daemon.http.get("/readyz").status_code == 200
    with redis.Redis.from_url(redis_url, decode_responses=True) as store:
        marker = store.get(Keys(prefix).store_marker)
    assert marker and (data / "store.marker").read_text().strip() == marker
    _sent_once(daemon, client_for(daemon, "agent", "sdr-bot"))
    daemon.stop()

    # A deployment of a version before markers: its trail and anchor, no marker anywhere.
    with redis.Redis.from_url(redis_url) as store:
        store.delete(Keys(prefix).store_marker)
    (data / "store.marker").unlink()
    again = make_daemon(RULES, data_dir=data)
    assert again.http.get("/readyz").status_code == 200
    agent = client_for(again, "agent", "sdr-bot")
    agent.wait_status(agent.send("after@customer.example")["id"], "sent")


async def test_the_claim_script_claims_nothing_from_a_store_without_the_daemons_marker(
    redis_url: str, prefix: str
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    try:
        await client.hset(keys.msg("m1"), mapping={"status": "queued", "to": "a@b.example", "agent": "x"})
        await client.zadd(keys.due, {"m1": 1})
        for stored in (None, "another"):
            if stored:
                await client.set(keys.store_marker, stored)
            marker = StoreMarker(client, keys, value="ours")
            answer = await Store(client, keys, marker).claim("daemon-a", ["t1"])
            assert isinstance(answer, NoWork) and marker.lost, (stored, answer)
            assert await client.zscore(keys.due, "m1") == 1 and not await client.zcard(keys.inflight)
    finally:
        await client.aclose()


async def test_the_chainer_writes_no_anchor_line_below_the_anchor_files_last(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    anchor = tmp_path / "audit.anchor"
    try:
        first = AuditLog(client, keys, anchor)
        for n in range(3):
            await first.append("test.entry", "test", {"n": n})
        assert await first.chain() == 3
        kept = anchor.read_text()
        _wipe(redis_url, prefix)
        await first.append("test.entry", "test", {"n": "after the wipe"})
        with pytest.raises(AnchorAhead, match="names entry 3 but the audit trail ends at 0"):
            await first.chain()
        assert not await first.may_chain()
        assert anchor.read_text() == kept
        assert await client.llen(keys.audit_pending) == 1  # kept, durable, for a person to look at
    finally:
        await asyncio.shield(client.aclose())


def test_a_store_marker_file_that_cannot_be_read_is_named(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """It was a bare IsADirectoryError and exit 1: the data directory is the operator's to mend."""
    data = tmp_path / "odd"
    (data / "store.marker").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"store\.marker: cannot read this daemon's store marker file"):
        make_daemon(RULES, data_dir=data)
