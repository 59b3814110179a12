"""A daemon's background work: delivery, maintenance, audit chaining, blocklist checks, the inbound
and submission SMTP listeners.

`sendguard run` runs it next to the HTTP server, under signals; the tests run it in their own
process. Start-up order matters for safety: the loops start only once Redis has answered a
heartbeat. Stopping takes no new claims first, gives in-flight deliveries a bounded time, then
hands back what is still claimed and closes, so a stop loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sendguard.background import end_within
from sendguard.errors import StoreError
from sendguard.governance.audit import AnchorMissing, AuditError
from sendguard.parts import Runtime
from sendguard.scopes import split_scope

log = logging.getLogger("sendguard.daemon")
_CHAIN_EVERY = 0.25  # seconds an audit entry may wait unchained, at most, while a daemon leads


class Service:
    """The loops of one daemon over its parts; `start()` once, then `stop()` once."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Announce this daemon in Redis, start the inbound mail process if a listener is
        configured (else at the first raw mail posted), start the loops.

        ConfigError if the inbound SMTP address cannot be listened on; StoreError if Redis does
        not answer. Either way nothing is left running.
        """
        runtime = self._runtime
        await runtime.store.heartbeat(runtime.instance, self._ttl_ms)
        for warning in await runtime.memory.warnings():
            log.warning(warning)
        await runtime.follow_reloads()
        if indexed := await runtime.approvals.index_pending():
            log.info("indexed %d pending approval requests under their agents", indexed)
        await runtime.inbound.start(runtime.inbox.answer)
        if runtime.submission is not None:
            try:
                await runtime.submission.start()
            except BaseException:
                await runtime.inbound.stop()
                raise
        runtime.sender_auth.recheck(runtime.rules)  # in the background: a slow DNS never delays the start
        self._tasks = [
            asyncio.create_task(self._maintain()),
            asyncio.create_task(self._chain()),
            asyncio.create_task(runtime.deliverer.run()),
            asyncio.create_task(self._check_blocklists()),
        ]

    async def stop(self) -> None:
        """No new claims, in-flight deliveries drained within the grace, claims handed back, closed."""
        runtime = self._runtime
        grace = runtime.settings.shutdown_grace
        log.info("shutting down: no new claims, draining in-flight deliveries")
        if runtime.submission is not None:
            await runtime.submission.stop()
        await runtime.inbound.stop()
        await runtime.deliverer.stop(grace)
        self._stopping.set()
        await end_within(self._tasks, 2)  # the loops end by themselves once told to
        # Whatever is still claimed goes back to the queue now, not when our lease ends.
        with contextlib.suppress(StoreError):
            await runtime.store.forget_instance(runtime.instance)
            await runtime.store.recover()
        await runtime.transport.close()
        await runtime.sender_auth.close()
        await runtime.safe_mode.drain(grace)

    @property
    def _ttl_ms(self) -> int:
        return int(self._runtime.settings.instance_ttl * 1000)

    async def _chain(self) -> None:
        """Chain the audit trail while this daemon leads, and once more on the way out.

        Without its anchor file over a non-empty trail, or with one that names entries the trail
        does not reach (cut off, or its store wiped), it does not lead, so that a daemon that has
        its anchor chains, and says so once (log and gauge) until a person acts.
        """
        audit, instance, stopping = self._runtime.audit, self._runtime.instance, self._stopping
        anchor_missing, refusing = self._runtime.metrics.audit_anchor_missing, False
        while True:
            try:
                await audit.check_anchor()
                refusing = False
                anchor_missing.set(0)
                if await audit.try_lead(instance, self._ttl_ms):
                    await audit.take_up()  # a trail the command line began, before any daemon chained
                    while await audit.chain() and not stopping.is_set():
                        pass
            except AnchorMissing as exc:
                if not refusing:
                    log.error("audit trail not chained by this daemon: %s", exc)
                refusing = True
                anchor_missing.set(1)
                with contextlib.suppress(StoreError):
                    await audit.resign(instance)
            except (StoreError, AuditError, OSError) as exc:  # OSError: the anchor file, e.g. no file handles
                log.error("audit trail not chained: %s", exc)
            if stopping.is_set():
                with contextlib.suppress(StoreError, AuditError):
                    await audit.chain()
                    await audit.resign(instance)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), _CHAIN_EVERY)

    async def _check_blocklists(self) -> None:
        """Check the blocklists whenever this daemon takes an interval's turn: one daemon per interval.

        A loop of its own, as DNS may take its time-out per zone and the heartbeat must not wait.
        """
        blocklists, instance = self._runtime.blocklists, self._runtime.instance
        while not self._stopping.is_set():
            try:
                await blocklists.check_if_turn(instance)
            except StoreError as exc:
                log.warning("blocklist check failed, retrying: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._runtime.settings.instance_ttl)

    async def _maintain(self) -> None:
        """See that the store is still the one this daemon started on, heartbeat, recover the work
        of daemons that died (and releases that resumes left unfinished), expire approval requests
        and announce those the approvers may not know of, follow rules reloads, refresh the gauges."""
        runtime = self._runtime
        store, audit, metrics = runtime.store, runtime.audit, runtime.metrics
        while not self._stopping.is_set():
            try:
                # First: a store that lost its marker stops every claim (logged once, in `gone`),
                # and this daemon's own writes: a wiped store must not look alive to a daemon that
                # starts on it, which the one thing written here, the tombstone, tells it instead.
                if not await store.marker.check():
                    await store.marker.leave_tombstone(runtime.instance)
                else:
                    await store.heartbeat(runtime.instance, self._ttl_ms)
                    recovered, uncertain = await store.recover()
                    if recovered:
                        log.warning(
                            "recovered %d messages from stopped daemons (%d uncertain)",
                            recovered,
                            uncertain,
                        )
                        metrics.uncertain.inc(uncertain)
                    for state, count in (await store.waiting_counts()).items():
                        metrics.waiting.labels(state).set(count)
                    await runtime.follow_reloads()
                    await runtime.safe_mode.refresh_metrics()
                    await _refresh_ramp_metrics(runtime)
                    await runtime.safe_mode.finish_releases()
                    await runtime.approvals.expire_due()
                    await runtime.approvals.announce_due()
                    await runtime.blocklists.refresh_metrics()
                    seq, head = await audit.head()
                    metrics.audit_entries.set(seq)
                    metrics.audit_head.set(int(head[:13], 16))
                    metrics.audit_pending.set(await audit.pending())
            except (StoreError, AuditError) as exc:
                log.warning("maintenance failed, retrying: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), runtime.settings.instance_ttl / 3)


async def _refresh_ramp_metrics(runtime: Runtime) -> None:
    """Each ramp's limit now, for the register's inboxes and sender domains: bounded by the register
    (never a value an agent makes up) and by the top-scopes setting, like the per-scope gauges."""
    rules = runtime.rules
    limits = await runtime.throttles.ramp_limits(rules.file.ramp, rules.file.agent)
    shown: dict[str, int] = {}
    gauge = runtime.metrics.ramp_limit
    gauge.clear()
    for ramp in sorted(limits, key=lambda r: r.scope):
        kind, value = split_scope(ramp.scope)
        if shown.setdefault(kind, 0) < runtime.settings.metrics_top_scopes:
            shown[kind] += 1
            gauge.labels(kind, value).set(ramp.limit)
