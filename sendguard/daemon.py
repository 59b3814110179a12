"""`sendguard run`: start Redis (embedded unless given), the API and the loops; drain on SIGTERM.

Start-up order matters for safety: the rules are validated before anything listens, and the
loops start only once Redis answers. On SIGTERM the API stops, then the loops drain
(`Service.stop`), so SIGTERM loses nothing and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
import uvloop

import sendguard
from sendguard import demo
from sendguard.config import Settings
from sendguard.errors import ConfigError, EmbeddedRedisError, StoreError
from sendguard.http.app import create_app
from sendguard.parts import Runtime, build
from sendguard.rules import default_rules_path, load_rules
from sendguard.service import Service
from sendguard.state.embedded_redis import DataDir
from sendguard.state.redis_connection import redis_connection

log = logging.getLogger("sendguard.daemon")


async def serve(settings: Settings, *, demo: bool = False, accept_empty_store: str = "") -> None:
    """Run the daemon until SIGTERM or SIGINT; with `demo`, send a first message once it listens.

    `accept_empty_store` names the person who accepts a store that lost this deployment's data
    (state/marker.py); without it the daemon refuses to start on one."""
    rules = load_rules(default_rules_path(settings.rules))
    async with redis_connection(settings, for_daemon=True) as (client, redis_description):
        data_dir = DataDir(settings.data_dir)
        data_dir.root.mkdir(parents=True, exist_ok=True)
        runtime = await build(
            settings, rules, client, anchor=data_dir.audit_anchor, accept_empty_store=accept_empty_store
        )
        service = Service(runtime)
        await service.start()
        try:
            server = _Server(
                uvicorn.Config(
                    create_app(runtime),
                    host=settings.api_host,
                    port=settings.api_port,
                    log_config=None,
                    access_log=False,
                    lifespan="off",
                    timeout_graceful_shutdown=max(1, int(settings.shutdown_grace)),
                )
            )
            _announce(settings, redis_description, runtime.transport.description, rules.path)
            loop = asyncio.get_running_loop()
            if demo:
                showing = asyncio.create_task(_demo_once_listening(server, runtime, settings))
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, server.request_exit)
            reloads: set[asyncio.Task[None]] = set()
            loop.add_signal_handler(signal.SIGHUP, _on_sighup, runtime, reloads)
            _freeze_start_up()
            await server.serve()  # returns once a signal asked it to stop
            if demo:
                showing.cancel()
        finally:
            await service.stop()
    log.info("stopped")


def _freeze_start_up() -> None:
    """Garbage collection for a server whose requests are short and many at once.

    Start-up's objects (modules, models, rules: nine tenths of the heap) are left out of every
    collection from now on; and the youngest generation is collected every 10,000 objects, not
    700: the objects of the requests in flight outlived each small collection, went on to the
    oldest generation and brought a full collection every couple of seconds under load, each a
    pause of 100 ms or more walking the whole heap. Nearly everything a request makes is freed as
    it ends, so the larger threshold holds little more memory.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def _demo_once_listening(server: _Server, runtime: Runtime, settings: Settings) -> None:
    await server.listening.wait()
    try:
        await demo.first_message(runtime, _base(settings), _command())
    except Exception as exc:  # the demo's message is an illustration: the daemon keeps running
        log.error("the demo's first message failed: %s", exc)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: it would re-raise SIGTERM before we drained."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        self.should_exit = True


def _on_sighup(runtime: Runtime, reloads: set[asyncio.Task[None]]) -> None:
    task = asyncio.create_task(_reload(runtime))
    reloads.add(task)
    task.add_done_callback(reloads.discard)


async def _reload(runtime: Runtime) -> None:
    """SIGHUP: reload the rules file; a bad file is logged and the running rules stay."""
    with contextlib.suppress(ConfigError):
        try:
            await runtime.reload("signal:SIGHUP")
        except StoreError as exc:
            log.error("rules reload not recorded in the audit trail or not announced: %s", exc)


def _announce(settings: Settings, redis_description: str, relay: str, rules_path: object) -> None:
    """Plain lines for the person who just started it: where it listens and what to do next."""
    base = _base(settings)
    command = _command()
    lines = [
        f"sendguard {sendguard.__version__} listening on {base}  (API {base}/v1, docs {base}/docs, "
        f"metrics {base}/metrics)",
        f"  redis: {redis_description}",
        f"  delivery: {relay}",
        f"  rules: {rules_path}",
        *([f"  inbound SMTP: {settings.inbound_smtp}"] if settings.inbound_smtp else []),
        *([f"  SMTP submission: {settings.submission_smtp}"] if settings.submission_smtp else []),
        f"  mint a token: {command} token create --agent <name from the rules file>   "
        f"(admin: {command} token create --admin <your name>)",
        f"  the console for people: {base}/ui/",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _base(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"


def _command() -> str:
    """The command as this shell can run it: `.venv/bin/sendguard` when that is how it was started,
    since a fresh virtual environment is not on the PATH."""
    started = Path(sys.argv[0])
    if started.name != "sendguard":
        return f"{shlex.quote(sys.executable)} -m sendguard.cli"
    on_path = shutil.which("sendguard")
    if on_path and Path(on_path).resolve() == started.resolve():
        return "sendguard"
    relative = os.path.relpath(started)
    return shlex.quote(str(started) if relative.startswith("..") else relative)


def run(settings: Settings, *, demo: bool = False, accept_empty_store: str = "") -> int:
    """Serve until SIGTERM, on uvloop: the daemon's hot paths are socket writes and wake-ups."""
    try:
        uvloop.run(serve(settings, demo=demo, accept_empty_store=accept_empty_store))
    except (ConfigError, EmbeddedRedisError, StoreError) as exc:
        print(f"sendguard: {exc}", file=sys.stderr)
        return 2
    return 0
