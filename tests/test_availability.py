"""Availability on real Redis servers: a Sentinel URL, writes that wait for replicas and fail closed
without them, and a drill that kills the primary under a running daemon (issue 16)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from sendguard.config import SentinelURL, Settings
from sendguard.errors import NotReplicated
from sendguard.state.redis_connection import redis_connection, translated
from tests.conftest import Api, Daemon, RedisServer, message, wait_until
from tests.peers import SmtpSink

RULES = """
[ingress]
mx_check = "off"
recipient_cooldown = "0s"

[approvals]
mass_send_threshold = 1000000
"""
SENTINEL_FORM = "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]"


def _setting_error(**settings: str) -> str:
    """What is wrong with these settings, as `sendguard` says it: each error's setting and message,
    without the input (which may hold a password)."""
    with pytest.raises(ValidationError) as refused:
        Settings(**settings)  # type: ignore[arg-type]
    return "; ".join(f"{e['loc']}: {e['msg']}" for e in refused.value.errors(include_input=False))


def test_a_sentinel_url_names_its_sentinels_service_and_database_and_masks_its_password() -> None:
    url = Settings(redis_url="redis+sentinel://app:s3cr%2Ft@s1:26380,s2,[::1]:26381/mymaster/2").redis_url
    assert isinstance(url, SentinelURL)
    assert url.sentinels == [("s1", 26380), ("s2", 26379), ("::1", 26381)]
    assert (url.service, url.db, url.username, url.password) == ("mymaster", 2, "app", "s3cr/t")
    assert str(url) == "redis+sentinel://app:***@s1:26380,s2:26379,[::1]:26381/mymaster/2"
    assert "s3cr" not in repr(url)
    assert Settings(redis_url="redis+sentinel://s1/mymaster").redis_url.db == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://:hunter2@s1:26379", "names no service"),
        ("redis+sentinel://:hunter2@s1:26379/", "names no service"),
        ("redis+sentinel://:hunter2@/mymaster", "sentinel address 1 is empty"),
        ("redis+sentinel://:hunter2@s1,,s2/mymaster", "sentinel address 2 is empty"),
        ("redis+sentinel://:hunter2@s1,s2:hunter2/mymaster", "sentinel address 2 needs a host and a port"),
        ("redis+sentinel://:hunter2@s1:70000/mymaster", "sentinel address 1 needs a host and a port"),
        (
            "redis+sentinel://:hunter2@s1/mymaster/first",
            "the database after the service name is not a number",
        ),
        ("redis+sentinel://:hunter2@s1/mymaster?sentinel_password=hunter2", "takes no query or fragment"),
        ("redis+sentinal://:hunter2@s1/mymaster", "scheme must be one of"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_naming_what_is_wrong_and_not_the_password(
    url: str, problem: str
) -> None:
    said = _setting_error(redis_url=url)
    assert problem in said
    assert "hunter2" not in said


def test_waiting_for_replicas_refuses_settings_it_could_never_meet() -> None:
    assert "the embedded Redis has no replicas" in _setting_error(redis_wait_replicas="1")
    external = {"redis_url": "redis://127.0.0.1:6379/0", "redis_wait_replicas": "1"}
    assert "must be shorter than SENDGUARD_REDIS_SOCKET_TIMEOUT" in _setting_error(
        **external, redis_wait_timeout="5", redis_socket_timeout="5"
    )
    assert "('redis_wait_timeout',): Input should be greater than" in _setting_error(
        **external, redis_wait_timeout="0"
    )
    assert "('redis_wait_replicas',): Input should be greater than" in _setting_error(
        **external | {"redis_wait_replicas": "-1"}
    )
    assert "no redis+sentinel:// URL" in _setting_error(
        redis_url="redis://127.0.0.1:6379/0", redis_sentinel_password="x"
    )


def _online_replicas(primary: RedisServer) -> int:
    with redis.Redis(port=primary.port) as client:
        info = client.info("replication")
    return sum(1 for key, value in info.items() if key.startswith("slave") and value["state"] == "online")


def _settled(replica: RedisServer) -> bool:
    """Synced, with the append-only file it writes after a sync done: until then it refuses SIGTERM."""
    with redis.Redis(port=replica.port) as client:
        info = client.info()
    return bool(
        info["master_link_status"] == "up"
        and not info["aof_rewrite_in_progress"]
        and not info["aof_rewrite_scheduled"]
    )


def _replica(primary: RedisServer, directory: Path) -> RedisServer:
    """A redis-server replicating `primary`, synced and settled."""
    directory.mkdir(exist_ok=True)
    replica = RedisServer(directory, "--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    wait_until(lambda: _settled(replica) and _online_replicas(primary), what="the replica to sync")
    return replica


async def test_every_kind_of_write_fails_closed_without_its_replica_and_reads_never_wait(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=own_redis.url,
        redis_wait_replicas=1,  # type: ignore[arg-type]
        redis_wait_timeout=0.05,  # type: ignore[arg-type]
    )
    async with redis_connection(settings, for_daemon=False) as (client, _):
        script = client.register_script("return redis.call('INCR', KEYS[1])")

        async def writes() -> None:
            await client.set("single", "1")
            await script(keys=["scripted"])
            async with client.pipeline(transaction=False) as pipe:
                await pipe.get("single").incr("pipelined").execute()
            async with client.pipeline(transaction=True) as pipe:
                await pipe.incr("transaction").execute()

        assert await client.get("never-written") is None  # a read waits for nothing
        for write in (
            client.set("single", "1"),
            script(keys=["scripted"]),
            client.pipeline(transaction=False).get("single").incr("pipelined").execute(),
            client.pipeline(transaction=True).incr("transaction").execute(),
        ):
            with pytest.raises(NotReplicated, match=r"not confirmed by replicas: 0 of the 1 .* within 50 ms"):
                async with translated():
                    await write
        # The connections stayed in step: each answer read is the one asked for.
        assert await client.get("single") == "1"
        assert await client.mget("scripted", "pipelined", "transaction") == ["1", "1", "1"]

        replica = _replica(own_redis, tmp_path / "replica")
        try:
            await writes()
            with redis.Redis(port=replica.port, decode_responses=True) as replicated:
                # WAIT answered: the replica holds every write already, not eventually.
                assert replicated.mget("single", "scripted", "pipelined", "transaction") == [
                    "1",
                    "2",
                    "2",
                    "2",
                ]
        finally:
            replica.stop()


def test_a_submission_its_replica_did_not_confirm_is_a_503_saying_so_and_its_retry_a_201(
    make_daemon: Callable[..., Daemon], own_redis: RedisServer, smtp: SmtpSink, tmp_path: Path
) -> None:
    replica = _replica(own_redis, tmp_path / "replica")
    daemon = make_daemon(RULES, redis_url=own_redis.url, redis_wait_replicas="1", redis_wait_timeout="0.1")
    api = Api(daemon, daemon.cli("token", "create", "--agent", "sdr-bot"))
    try:
        assert api.send("first@customer.example")["status"] == "queued"
        replica.stop()
        wait_until(lambda: not _online_replicas(own_redis), what="the primary to notice its replica gone")
        body = message("second@customer.example", idempotency_key="second-1")
        refused = api.client.post("/v1/messages", json=body)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "not_replicated"
        assert "not confirmed by replicas: 0 of the 1" in refused.json()["detail"]

        replica.start()
        wait_until(lambda: _settled(replica) and _online_replicas(own_redis), what="the replica back")
        retried = api.client.post("/v1/messages", json=body)
        assert retried.status_code == 201, retried.text
        again = api.client.post("/v1/messages", json=body)
        assert again.json()["id"] == retried.json()["id"], "the retry is the one message, answered once"
        api.wait_status(retried.json()["id"], "sent")
    finally:
        api.close()
        replica.stop()
    assert sorted(r.rcpt_tos[0] for r in smtp.received) == [
        "first@customer.example",
        "second@customer.example",
    ]
