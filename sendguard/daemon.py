"""`sendguard run`: start Redis (embedded unless given), the API and the delivery loop; drain on SIGTERM.

Start-up order matters for safety: the rules are validated before anything listens, and the
delivery loop starts only once Redis answers. Shutdown stops claiming first, gives in-flight
deliveries a bounded time, then closes, so SIGTERM loses nothing and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
from collections.abc import Iterator

import uvicorn

import sendguard
from sendguard import metrics
from sendguard.config import Settings, parse_host_port
from sendguard.delivery.circuit import Circuit
from sendguard.delivery.deliverer import Deliverer
from sendguard.delivery.relay import make_transport
from sendguard.delivery.throttle import Throttles
from sendguard.errors import ConfigError, EmbeddedRedisError, StoreError
from sendguard.feedback.apply import Feedback
from sendguard.feedback.notify import Notifier
from sendguard.feedback.receive import Inbox, start_listener
from sendguard.feedback.safe_mode import SafeMode
from sendguard.feedback.unsubscribe import Unsubscribe
from sendguard.governance.approvals import Approvals
from sendguard.governance.audit import AuditError, AuditLog
from sendguard.governance.recall import Recall
from sendguard.governance.suppressions import Suppressions
from sendguard.governance.tokens import Tokens
from sendguard.http.app import create_app
from sendguard.intake.admission import Admissions
from sendguard.intake.mx import MxChecker
from sendguard.intake.recipients import Ingress
from sendguard.parts import Runtime
from sendguard.rules import default_rules_path, load_rules
from sendguard.state.embedded_redis import DataDir
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import redis_connection
from sendguard.state.store import Store

log = logging.getLogger("sendguard.daemon")
_CHAIN_EVERY = 0.25  # seconds an audit entry may wait unchained, at most, while a daemon leads


async def serve(settings: Settings) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    rules = load_rules(default_rules_path(settings.rules))
    async with redis_connection(settings, for_daemon=True) as (client, redis_description):
        keys = Keys(settings.redis_prefix)
        store = Store(client, keys)
        ingress = Ingress(MxChecker(settings.dns_nameservers, settings.dns_timeout))
        transport = make_transport(
            settings.smtp_url,
            DataDir(settings.data_dir).outbox,
            settings.smtp_connections,
            settings.smtp_timeout,
        )
        instance = secrets.token_hex(6)
        throttles = Throttles(client, keys, lease_ms=int(settings.smtp_timeout * 1000) + 1000)
        runtime: Runtime
        data_dir = DataDir(settings.data_dir)
        data_dir.root.mkdir(parents=True, exist_ok=True)
        audit = AuditLog(client, keys, data_dir.audit_anchor)
        notifier = Notifier(settings.notify_url)
        safe_mode = SafeMode(client, keys, store, notifier, audit, lambda: runtime.rules)
        suppressions = Suppressions(client, keys, audit)
        feedback = Feedback(store, suppressions, safe_mode, audit)
        approvals = Approvals(client, keys, store, audit)
        unsubscribe = (
            await Unsubscribe.load(client, keys, settings.public_url) if settings.public_url else None
        )
        deliverer = Deliverer(
            store=store,
            throttles=throttles,
            ingress=ingress,
            transport=transport,
            safe_mode=safe_mode,
            feedback=feedback,
            circuit=Circuit(settings.circuit_failures, settings.circuit_max_delay),
            rules=lambda: runtime.rules,
            settings=settings,
            instance=instance,
            concurrency=transport.concurrency or settings.workers,
            unsubscribe=unsubscribe,
        )
        inbox = Inbox(client, keys, feedback, settings.bounce_domain, settings.inbound_timeout)
        runtime = Runtime(
            settings=settings,
            redis=client,
            store=store,
            suppressions=suppressions,
            tokens=Tokens(client, keys, audit),
            admissions=Admissions(
                store, ingress, safe_mode, approvals, audit, settings.retry_base, deliverer.wake
            ),
            approvals=approvals,
            recall=Recall(store, audit),
            safe_mode=safe_mode,
            audit=audit,
            feedback=feedback,
            inbox=inbox,
            unsubscribe=unsubscribe,
            rules=rules,
        )
        ttl_ms = int(settings.instance_ttl * 1000)
        await store.heartbeat(instance, ttl_ms)
        await runtime.follow_reloads()
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
        listener = None
        if settings.inbound_smtp:
            host, port = parse_host_port(settings.inbound_smtp, 25)
            try:
                listener = await start_listener(inbox, host, port, settings.inbound_max_bytes)
            except OSError as exc:
                raise ConfigError(
                    f"SENDGUARD_INBOUND_SMTP={settings.inbound_smtp}: cannot listen: {exc.strerror or exc}"
                ) from exc
        _announce(settings, redis_description, transport.description, rules.path)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.request_exit)
        reloads: set[asyncio.Task[None]] = set()
        loop.add_signal_handler(signal.SIGHUP, _on_sighup, runtime, reloads)
        stopping = asyncio.Event()
        maintenance = asyncio.create_task(
            _maintain(runtime, instance, ttl_ms, settings.instance_ttl, stopping)
        )
        chaining = asyncio.create_task(_chain(audit, instance, ttl_ms, stopping))
        delivery = asyncio.create_task(deliverer.run())
        try:
            await server.serve()  # returns once a signal asked it to stop
        finally:
            log.info("shutting down: no new claims, draining in-flight deliveries")
            if listener is not None:
                listener.close()
            await deliverer.stop(settings.shutdown_grace)
            stopping.set()
            await _finish(delivery, maintenance, chaining)
            # Whatever is still claimed goes back to the queue now, not when our lease ends.
            with contextlib.suppress(StoreError):
                await store.forget_instance(instance)
                await store.recover()
            await transport.close()
            await safe_mode.drain(settings.shutdown_grace)
    log.info("stopped")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: it would re-raise SIGTERM before we drained."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        self.should_exit = True


async def _finish(*tasks: asyncio.Task[None]) -> None:
    """Let the loops end by themselves, cancelling what does not.

    Cancelling more than once: redis-py can swallow a cancellation that lands mid-command.
    """
    pending = {task for task in tasks if not task.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=2)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1)


async def _chain(audit: AuditLog, instance: str, ttl_ms: int, stopping: asyncio.Event) -> None:
    """Chain the audit trail while this daemon leads, and once more on the way out."""
    while True:
        try:
            if await audit.try_lead(instance, ttl_ms):
                while await audit.chain() and not stopping.is_set():
                    pass
        except (StoreError, AuditError) as exc:
            log.error("audit trail not chained: %s", exc)
        if stopping.is_set():
            with contextlib.suppress(StoreError, AuditError):
                await audit.chain()
                await audit.resign(instance)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), _CHAIN_EVERY)


async def _maintain(
    runtime: Runtime, instance: str, ttl_ms: int, ttl: float, stopping: asyncio.Event
) -> None:
    """Heartbeat, recover the work of daemons that died, follow rules reloads, refresh the gauges."""
    store, audit = runtime.store, runtime.audit
    while not stopping.is_set():
        try:
            await store.heartbeat(instance, ttl_ms)
            recovered, uncertain = await store.recover()
            if recovered:
                log.warning(
                    "recovered %d messages from stopped daemons (%d uncertain)",
                    recovered,
                    uncertain,
                )
                metrics.UNCERTAIN.inc(uncertain)
            for state, count in (await store.waiting_counts()).items():
                metrics.WAITING.labels(state).set(count)
            await runtime.follow_reloads()
            await runtime.safe_mode.refresh_metrics()
            await runtime.approvals.expire_due()
            seq, head = await audit.head()
            metrics.AUDIT_ENTRIES.set(seq)
            metrics.AUDIT_HEAD.set(int(head[:13], 16))
            metrics.AUDIT_PENDING.set(await audit.pending())
        except (StoreError, AuditError) as exc:
            log.warning("maintenance failed, retrying: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), ttl / 3)


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
    base = f"http://{settings.api_host}:{settings.api_port}"
    lines = [
        f"sendguard {sendguard.__version__} listening on {base}  (API {base}/v1, docs {base}/docs, "
        f"metrics {base}/metrics)",
        f"  redis: {redis_description}",
        f"  delivery: {relay}",
        f"  rules: {rules_path}",
        *([f"  inbound SMTP: {settings.inbound_smtp}"] if settings.inbound_smtp else []),
        "  mint a token: sendguard token create --agent <name from the rules file>   "
        "(admin: sendguard token create --admin <your name>)",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def run(settings: Settings) -> int:
    try:
        asyncio.run(serve(settings))
    except (ConfigError, EmbeddedRedisError, StoreError) as exc:
        print(f"sendguard: {exc}", file=sys.stderr)
        return 2
    return 0
