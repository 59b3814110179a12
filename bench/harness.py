"""Everything the bench starts on loopback: redis-server, the SMTP sink, daemons, the bare app.

It reuses the test suite's real peers (tests/conftest.py, tests/peers.py), so the bench measures
against the same Redis server and the same sink the tests trust. Every process it starts is
stopped by the context manager that started it, whatever happens in between.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from bench.mail import AGENT
from sendguard.governance.audit import AuditLog
from sendguard.governance.roles import Role
from sendguard.governance.tokens import Tokens
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import packing_with_hiredis
from tests.conftest import RedisServer, free_port, wait_until
from tests.peers import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "sg"
_READY_TIMEOUT = 60.0  # several daemons start at once on two shared cores


def rules_text(
    *,
    throttles: Sequence[Mapping[str, str | int]] = (),
    safe_mode: Mapping[str, str | int | float] | None = None,
) -> str:
    """sendguard's default policy, but for what a loopback bench cannot or should not meet.

    No MX look-ups (there is no DNS here), and a mass-send threshold no run reaches, so every
    message is tier 0 and no scenario waits for an approver. Cooldowns, content checks, the
    audit trail and safe-mode counting stay as they ship.
    """
    tables = [
        '[ingress]\nmx_check = "off"\n',
        "[approvals]\nmass_send_threshold = 1000000\n",
    ]
    if safe_mode is not None:
        tables.append("[safe_mode]\n" + _toml_keys(safe_mode))
    tables += ["[[throttle]]\n" + _toml_keys(throttle) for throttle in throttles]
    tables.append(f'[[agent]]\nname = "{AGENT}"\nowner = "bench"\ninboxes = ["*@acme.example"]\n')
    return "\n".join(tables)


def _toml_keys(table: Mapping[str, str | int | float]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())


class Service:
    """A child process serving HTTP on loopback: a `sendguard run` daemon or the bare app."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, log_path: Path, ready: str) -> None:
        self.argv = argv
        self.env = env
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._ready_path = ready
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=log, cwd=self.log_path.parent
            )

    def wait_ready(self) -> None:
        # One client for the whole wait: httpx.get() builds a client (and its TLS context) each poll,
        # CPU taken from the process starting meanwhile.
        with httpx.Client(base_url=self.base, timeout=1) as probe:
            wait_until(
                lambda: self._ready(probe), timeout=_READY_TIMEOUT, what=f"{self.argv[2]} on port {self.port}"
            )

    def _ready(self, probe: httpx.Client) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.argv[2]} exited with {self.process.returncode}: {tail}")
        with contextlib.suppress(httpx.HTTPError):
            return probe.get(self._ready_path).status_code == 200
        return False

    def rss_bytes(self) -> int:
        """Resident memory now, as the kernel counts it (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def metric_total(self, name: str) -> float:
        """The sum over every label set of one metric on /metrics (0 when it has no samples)."""
        text = httpx.get(f"{self.base}/metrics", timeout=5).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        )

    def terminate(self) -> None:
        """SIGTERM, as an operator stops it; `reap()` waits for it to drain."""
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)

    def reap(self) -> None:
        """Wait for a terminated process; SIGKILL only if it does not drain in time."""
        if self.process is None:
            return
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class Bench:
    """The bench's world for one invocation: a directory, redis-server, the sink and a client."""

    def __init__(self, directory: Path, redis_server: RedisServer, sink: SmtpSink) -> None:
        self.directory = directory
        self.redis_server = redis_server
        self.sink = sink
        # redis-py 8 reads with a 5 s timeout by default; emptying the full footprint run's data set
        # (FLUSHALL between runs) takes longer than that.
        self.redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=300)
        packing_with_hiredis(self.redis.connection_pool)  # as the daemon's client packs
        self.keys = Keys(PREFIX)
        self._names = itertools.count()

    @property
    def redis_url(self) -> str:
        return self.redis_server.url

    async def fresh(self) -> None:
        """An empty Redis and a quiet, empty sink: no run sees what an earlier one left."""
        await self.redis.flushall()
        self.sink.clear()
        self.sink.rcpt_replies = {}
        self.sink.delay = 0.0

    def write_rules(self, text: str) -> Path:
        path = self.directory / f"rules{next(self._names)}.toml"
        path.write_text(text)
        return path

    async def agent_token(self) -> str:
        tokens = Tokens(self.redis, self.keys, AuditLog(self.redis, self.keys))
        _, token = await tokens.create(Role.AGENT, AGENT, actor="bench")
        return token

    async def used_memory(self) -> int:
        """Redis's count of the memory it holds (INFO memory used_memory), less passing buffers.

        The append-only file's write buffer and the clients' buffers come and go with the disk's
        and the clients' pace, not with what is stored, so they are left out. The clients' share
        is summed from CLIENT LIST, which measures each client as it is: INFO's `mem_clients_normal`
        (Redis 6.2) is a tally the server cron refreshes a few clients at a time, so a 5 MB query
        buffer left by a large script call could be counted as stored data and then vanish.
        Both are read in one transaction, so they describe the same instant.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.execute_command("CLIENT", "LIST")
            pipe.info("memory")
            clients, info = await pipe.execute()
        buffers = sum(
            int(field[len("tot-mem=") :]) for field in clients.split() if field.startswith("tot-mem=")
        )
        return int(info["used_memory"]) - int(info.get("mem_aof_buffer", 0)) - buffers

    def daemon(self, rules: Path, connections: int) -> Service:
        """A `sendguard run` daemon on this Redis and sink, not started yet (see `running`)."""
        data = self.directory / f"daemon{next(self._names)}"
        data.mkdir()
        port = free_port()
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(ROOT),
            "SENDGUARD_REDIS_URL": self.redis_url,
            "SENDGUARD_REDIS_PREFIX": PREFIX,
            "SENDGUARD_SMTP_URL": self.sink.url,
            "SENDGUARD_RULES": str(rules),
            "SENDGUARD_API_PORT": str(port),
            "SENDGUARD_DATA_DIR": str(data),
            "SENDGUARD_SMTP_CONNECTIONS": str(connections),
            "SENDGUARD_WORKERS": str(connections),
            "SENDGUARD_SHUTDOWN_GRACE": "2",
        }
        argv = [sys.executable, "-m", "sendguard.cli", "run"]
        return Service(argv, env, port, data / "daemon.log", "/readyz")

    def bare_app(self) -> Service:
        """The bare FastAPI app (bench/bare_app.py) on this Redis, not started yet."""
        port = free_port()
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "bench.bare_app", self.redis_url, str(port)]
        return Service(argv, env, port, self.directory / f"bare{next(self._names)}.log", "/healthz")

    @contextlib.contextmanager
    def daemons(self, count: int, rules: Path, connections: int) -> Iterator[list[Service]]:
        """`count` daemons, started together and all ready before yielding."""
        services = [self.daemon(rules, connections) for _ in range(count)]
        with self.running(*services):
            yield services

    @contextlib.contextmanager
    def running(self, *services: Service) -> Iterator[None]:
        """Start `services` together, wait until all are ready; stop them all at the end."""
        try:
            for service in services:  # all spawned first, so their start-ups overlap
                service.spawn()
            for service in services:
                service.wait_ready()
            yield
        finally:
            for service in services:  # all told first, so their shutdowns overlap too
                service.terminate()
            for service in services:
                service.reap()

    def raw_send(self, count: int, connections: int) -> float:
        """aiosmtplib alone sends `count` messages to the sink, from a process of its own; the CPU
        seconds that process used."""
        before = _children_cpu()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.raw_sender",
                self.sink.host,
                str(self.sink.port),
                str(count),
                str(connections),
            ],
            cwd=ROOT,
            check=True,
            timeout=600,
        )
        return _children_cpu() - before


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


@contextlib.asynccontextmanager
async def open_bench(directory: Path) -> AsyncIterator[Bench]:
    """Start the bench's redis-server and sink in `directory`; stop them, and all else, at the end."""
    redis_dir = directory / "redis"
    redis_dir.mkdir()
    redis_server = RedisServer(redis_dir)
    redis_server.start()
    try:
        with SmtpSink() as sink:
            bench = Bench(directory, redis_server, sink)
            try:
                yield bench
            finally:
                await bench.redis.aclose()
    finally:
        redis_server.stop()
