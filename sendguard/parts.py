"""The composition root: `build()` makes every part a daemon shares between its API and its loops.

The daemon, the bench and the tests build the parts here, so each is wired once; the token store
and audit trail come from `governance.records`, which `sendguard token` and `sendguard audit` use
alone. The parts are made in dependency order; the rules they read at each use sit in one
`CurrentRules` made first, which a reload swaps.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from sendguard.config import Settings, parse_host_port
from sendguard.delivery.blocklists import Blocklists
from sendguard.delivery.circuit import Circuit
from sendguard.delivery.deliverer import Deliverer
from sendguard.delivery.relay import SandboxOutbox, Transport, make_transport
from sendguard.delivery.reply_rules import ReplyRules
from sendguard.delivery.sender_auth import SenderAuthWatch
from sendguard.delivery.throttle import Throttles
from sendguard.errors import ConfigError
from sendguard.feedback.apply import Feedback
from sendguard.feedback.listener import InboundProcess, ListenerConfig
from sendguard.feedback.receive import KEEP_BYTES, Inbox
from sendguard.feedback.reply_stops import ReplyStops
from sendguard.feedback.safe_mode import SafeMode
from sendguard.feedback.signing import BounceAddresses, load_secret
from sendguard.feedback.unsubscribe import Unsubscribe
from sendguard.governance.approvals import Approvals
from sendguard.governance.audit import AuditLog
from sendguard.governance.break_glass import BreakGlass
from sendguard.governance.recall import Recall
from sendguard.governance.records import build_records
from sendguard.governance.sessions import Sessions
from sendguard.governance.suppressions import Suppressions
from sendguard.governance.tokens import Tokens
from sendguard.intake.admission import Admissions
from sendguard.intake.mx import MxChecker, make_resolver
from sendguard.intake.recipients import Ingress
from sendguard.intake.smtp import SubmissionConfig, SubmissionListener
from sendguard.metrics import Metrics
from sendguard.notify import Notifier
from sendguard.rules import CurrentRules, Rules, load_rules, rules_changes
from sendguard.state.embedded_redis import DataDir
from sendguard.state.keys import Keys
from sendguard.state.marker import Evidence, StoreMarker
from sendguard.state.memory import MemoryBudget
from sendguard.state.redis_connection import translated
from sendguard.state.store import Store

log = logging.getLogger("sendguard.rules")


@dataclass
class Runtime:
    """The daemon's parts; the rules in force are `current.now`, replaced whole, never edited."""

    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    instance: str  # this daemon's name in Redis: its heartbeat, its claims, its audit leadership
    metrics: Metrics
    current: CurrentRules
    store: Store
    memory: MemoryBudget
    ingress: Ingress
    transport: Transport
    throttles: Throttles
    audit: AuditLog
    notifier: Notifier
    safe_mode: SafeMode
    suppressions: Suppressions
    feedback: Feedback
    approvals: Approvals
    unsubscribe: Unsubscribe | None
    deliverer: Deliverer
    inbox: Inbox
    inbound: InboundProcess
    admissions: Admissions
    submission: SubmissionListener | None  # the SMTP submission listener, when one is configured
    recall: Recall
    tokens: Tokens
    sessions: Sessions
    break_glass: BreakGlass
    sender_auth: SenderAuthWatch
    blocklists: Blocklists

    reloads_seen: int | None = None  # the last reload announcement this daemon followed

    @property
    def rules(self) -> Rules:
        return self.current.now

    async def reload(self, actor: str, *, announce: bool = True) -> Rules:
        """Load the rules file again, switch to it and record it; returns the rules that ran.

        A file that does not validate is recorded as refused and raised as ConfigError naming
        the bad key; the running rules stay. A reload is announced in Redis, and every other
        daemon on it then reloads its own file (`follow_reloads`): one request reloads them all.
        """
        running = self.rules
        try:
            self.current.now = load_rules(running.path)
        except ConfigError as exc:
            log.error("rules not reloaded, still running version %s: %s", running.version, exc)
            await self.audit.append("rules.refused", actor, {"running": running.version, "problem": str(exc)})
            raise
        log.warning("rules reloaded: version %s (was %s)", self.rules.version, running.version)
        await self.audit.append(
            "rules.reloaded",
            actor,
            {
                "rules_version": self.rules.version,
                "previous_version": running.version,
                "path": str(running.path),
                # a promotion to production is the change a review must find: name it
                "environments": rules_changes(running, self.rules).environments,
            },
        )
        self.sender_auth.recheck(self.rules)
        if announce:
            async with translated():
                self.reloads_seen = int(await self.redis.incr(self.store.keys.rules_reloads))
        return running

    async def follow_reloads(self) -> None:
        """Reload when another daemon has reloaded since this one last looked."""
        async with translated():
            announced = int(await self.redis.get(self.store.keys.rules_reloads) or 0)
        if self.reloads_seen is None:  # just started: the rules were loaded fresh
            self.reloads_seen = announced
        elif announced > self.reloads_seen:
            self.reloads_seen = announced
            with contextlib.suppress(ConfigError):  # recorded as refused; the running rules stay
                await self.reload("sendguard (following a reload on another daemon)", announce=False)


async def build(
    settings: Settings,
    rules: Rules,
    client: aioredis.Redis,
    *,
    anchor: Path | None = None,
    accept_empty_store: str = "",
) -> Runtime:
    """Every part, wired once, on `client`; `anchor` is the audit anchor file of a daemon that chains.

    Nothing here connects to the relay or starts a task: the command line builds the same parts
    and uses a few, and `Service` runs the loops of a daemon. The store's marker is found or made
    first (state/marker.py): a daemon with an anchor keeps its data directory's evidence of the
    store it used, and raises StoreWiped over a store that lacks it, unless `accept_empty_store`
    names the person who accepts it (`sendguard run --accept-empty-store`).
    """
    records = build_records(settings, client, anchor)  # as `sendguard token` and `audit` build them
    keys, audit, tokens = records.keys, records.audit, records.tokens
    metrics = Metrics()
    current = CurrentRules(rules)
    # Before anything is written, the signing secret above all: on a wiped store a new one would
    # make every bounce address and unsubscribe link already sent unrecognisable.
    marker = StoreMarker(client, keys, metrics.store_wiped)
    evidence = Evidence(DataDir(settings.data_dir).store_marker, anchor) if anchor else Evidence(None, None)
    accepted = await marker.establish(
        evidence, accept_empty=bool(accept_empty_store), actor=accept_empty_store
    )
    if accepted:
        await audit.append("store.accepted", accept_empty_store, {"evidence": accepted})
    store = Store(client, keys, marker)
    memory = MemoryBudget(client)
    ingress = Ingress(MxChecker(settings.dns_nameservers, settings.dns_timeout))
    outbox = SandboxOutbox(DataDir(settings.data_dir).outbox)
    transport = make_transport(settings.smtp_url, outbox, settings.smtp_connections, settings.smtp_timeout)
    throttles = Throttles(client, keys, lease_ms=int(settings.smtp_timeout * 1000) + 1000)
    notifier = Notifier(settings.notify_url, metrics)
    safe_mode = SafeMode(
        client, keys, store, notifier, current, metrics, top_scopes=settings.metrics_top_scopes
    )
    suppressions = Suppressions(client, keys, audit, store)
    # One secret signs what must come back provably ours: one-click links and bounce addresses.
    secret = await load_secret(client, keys) if settings.public_url or settings.bounce_domain else b""
    unsubscribe = Unsubscribe(settings.public_url, secret) if settings.public_url else None
    bounces = BounceAddresses(settings.bounce_domain, secret) if settings.bounce_domain else None
    reply_stops = ReplyStops(client, keys, store, audit, current)
    feedback = Feedback(store, suppressions, safe_mode, audit, metrics, bounces, reply_stops)
    approvals = Approvals(client, keys, store, audit, notifier, settings.api_base)
    instance = secrets.token_hex(6)
    deliverer = Deliverer(
        store=store,
        throttles=throttles,
        ingress=ingress,
        transport=transport,
        outbox=outbox,
        safe_mode=safe_mode,
        approvals=approvals,
        feedback=feedback,
        circuit=Circuit(settings.circuit_failures, settings.circuit_max_delay, metrics),
        reply_rules=ReplyRules(client, keys, safe_mode, audit, notifier, current, metrics),
        rules=current,
        settings=settings,
        instance=instance,
        concurrency=transport.concurrency or settings.workers,
        unsubscribe=unsubscribe,
        bounces=bounces,
        metrics=metrics,
    )
    admissions = Admissions(
        store,
        ingress,
        safe_mode,
        approvals,
        audit,
        memory,
        settings.retry_base,
        deliverer.wake,
        metrics,
        reply_stops,
        tokens,
    )
    inbound = InboundProcess(
        _listener_config(settings),
        parse_host_port(settings.inbound_smtp, 25) if settings.inbound_smtp else None,
        metrics,
    )
    return Runtime(
        settings=settings,
        redis=client,
        keys=keys,
        instance=instance,
        metrics=metrics,
        current=current,
        store=store,
        memory=memory,
        ingress=ingress,
        transport=transport,
        throttles=throttles,
        audit=audit,
        notifier=notifier,
        safe_mode=safe_mode,
        suppressions=suppressions,
        feedback=feedback,
        approvals=approvals,
        unsubscribe=unsubscribe,
        deliverer=deliverer,
        inbox=Inbox(client, keys, feedback, inbound, metrics),
        inbound=inbound,
        admissions=admissions,
        submission=SubmissionListener(
            _submission_config(settings), admissions, tokens, ingress, current, metrics
        )
        if settings.submission_smtp
        else None,
        recall=Recall(store, audit),
        tokens=tokens,
        sessions=Sessions(client, keys, tokens),
        break_glass=BreakGlass(client, keys, audit),
        sender_auth=SenderAuthWatch(settings, metrics),
        blocklists=Blocklists(
            client,
            keys,
            make_resolver(settings.dns_nameservers, settings.dns_timeout),
            safe_mode,
            notifier,
            current,
            metrics,
        ),
    )


def _listener_config(settings: Settings) -> ListenerConfig:
    """What the inbound mail process needs to know; the banner names the host, never the software."""
    return ListenerConfig(
        hostname=settings.inbound_hostname or socket.getfqdn(),
        max_bytes=settings.inbound_max_bytes,
        max_sessions=settings.inbound_sessions,
        max_client_sessions=settings.inbound_client_sessions,
        session_lifetime=settings.inbound_session_lifetime,
        rate_per_minute=settings.inbound_rate,
        max_recipients=settings.inbound_recipients,
        queue=settings.inbound_queue,
        timeout=settings.inbound_timeout,
        keep_bytes=KEEP_BYTES,
        bounce_domain=settings.bounce_domain.lower() if settings.bounce_domain else None,
        addresses=frozenset(settings.inbound_addresses),
        tls_cert=settings.inbound_tls_cert,
        tls_key=settings.inbound_tls_key,
    )


def _submission_config(settings: Settings) -> SubmissionConfig:
    """Where the SMTP submission listener listens, its budgets, and its certificate or where to make one."""
    assert settings.submission_smtp is not None
    return SubmissionConfig(
        listen=parse_host_port(settings.submission_smtp, 587),
        hostname=settings.submission_hostname or socket.getfqdn(),
        max_bytes=settings.submission_max_bytes,
        max_sessions=settings.submission_sessions,
        max_client_sessions=settings.submission_client_sessions,
        auth_timeout=settings.submission_auth_timeout,
        max_recipients=settings.submission_recipients,
        tls_cert=settings.submission_tls_cert,
        tls_key=settings.submission_tls_key,
        self_signed_dir=DataDir(settings.data_dir).submission_tls,
    )
