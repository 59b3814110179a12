"""The delivery loop: claim what is due, re-check DNS if needed, start the send, send, record.

One claim loop per daemon hands messages to at most `workers` concurrent deliveries, claiming as
many at once as it has free; a delivery frees its place once the relay has answered, while the
answer is recorded (no more than twice `workers` in hand, recorded or not). A message a throttle
holds back goes back to the due queue at the moment its buckets allow, so it never blocks
messages whose buckets are free, and nothing polls for it in the meantime.

Redis is asked twice per message besides its claim, once to start the send (suppression, safe
mode, throttles, all in one script) and once to record the relay's answer (throttles settled,
outcome, audit entry, `sent` count), and deliveries that take a step together share its round
trip (Store.start and Store.finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import NamedTuple

from sendguard.background import end_within
from sendguard.config import Settings
from sendguard.delivery.circuit import Circuit
from sendguard.delivery.relay import STAGES, Transport, UncertainDelivery
from sendguard.delivery.render import render
from sendguard.delivery.reply_rules import ReplyRules, held_kinds
from sendguard.delivery.throttle import Buckets, MassSendLine, Throttles
from sendguard.errors import RelayError, RelayReply, StoreError
from sendguard.feedback.apply import Feedback
from sendguard.feedback.safe_mode import SafeMode
from sendguard.feedback.signing import BounceAddresses
from sendguard.feedback.unsubscribe import Unsubscribe
from sendguard.governance.approvals import Approvals
from sendguard.governance.audit import entry as audit_entry
from sendguard.governance.register import outcome_counted, rejection_counted
from sendguard.intake.recipients import Ingress, Recipient
from sendguard.metrics import Metrics
from sendguard.model import Status, now_ms
from sendguard.record import Changes, MessageRecord, Wait
from sendguard.rules import CurrentRules, Rules, ScopeKind
from sendguard.scopes import scope_values
from sendguard.state.store import CLAIMABLE, Claim, Moved, NoWork, Store
from sendguard.windows import opening_ms

log = logging.getLogger("sendguard.delivery.deliverer")

_IDLE_POLL = 0.5  # how soon a message submitted to another daemon is noticed when idle
_STORE_RETRY = 1.0  # seconds between tries while Redis does not answer
DEFER_CAUSES = ("smtp_4xx", "connection", "uncertain", "dns")  # why a message waits for a retry


class Outcome(NamedTuple):
    """How a delivery attempt ended: the new status, why, and what to record on the message."""

    status: Status
    cause: str
    detail: str
    changes: Changes


class Deliverer:
    """Moves due messages to the relay, within the throttles, and records every outcome."""

    def __init__(
        self,
        *,
        store: Store,
        throttles: Throttles,
        ingress: Ingress,
        transport: Transport,
        outbox: Transport,
        safe_mode: SafeMode,
        approvals: Approvals,
        feedback: Feedback,
        circuit: Circuit,
        reply_rules: ReplyRules,
        rules: CurrentRules,
        settings: Settings,
        instance: str,
        concurrency: int,
        unsubscribe: Unsubscribe | None,
        bounces: BounceAddresses | None,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._metrics = metrics
        metrics.start_at_zero(metrics.deferred, DEFER_CAUSES)
        metrics.start_at_zero(metrics.smtp_replies, ("2xx", "4xx", "5xx"), STAGES)
        metrics.start_at_zero(metrics.throttle_waits, [*ScopeKind, Wait.MASS_SEND])
        self._unsubscribe = unsubscribe
        self._bounces = bounces
        self._throttles = throttles
        self._approvals = approvals
        self._ingress = ingress
        self._transport = transport
        self._outbox = outbox
        self._safe_mode = safe_mode
        self._feedback = feedback
        self._circuit = circuit
        self._reply_rules = reply_rules
        self._rules = rules
        self._settings = settings
        self._instance = instance
        # Never more deliveries than relay connections: a delivery waiting for a connection
        # would spend its send deadline (and its throttle lease) in a queue.
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._looks_at = math.inf  # monotonic time the idle claim loop looks again; inf while it works
        self._stopping = False
        self._tasks: dict[asyncio.Task[None], Claim] = {}
        self._holding: set[asyncio.Task[None]] = set()  # deliveries that hold a slot still
        # Deliveries whose relay answered wait for their record without a slot; this many in hand
        # at most, so a Redis that records slowly slows the claims too instead of piling them up.
        self._most_in_hand = 2 * concurrency
        self._room = asyncio.Event()
        self._room.set()
        self._orphans = False  # a claim may be left in Redis with no delivery working on it
        self._unsent: set[str] = set()  # claims let go of before the relay had their message
        self._recording: set[asyncio.Task[None]] = set()  # relay answers being recorded (shielded)

    def wake(self, due_in: float = 0.0) -> None:
        """A local submission is due `due_in` seconds from now: look without waiting for the poll,
        unless the idle loop looks before then anyway (a message due later costs no claim)."""
        if time.monotonic() + due_in < self._looks_at:
            self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            await self._room.wait()
            await self._slots.acquire()
            probe = await self._circuit.ready()
            if self._stopping:
                self._slots.release()
                break
            # One claim for every free slot: a round trip shared by as many deliveries. A probe of
            # the relay goes alone.
            slots = 1
            while not probe and not self._slots.locked():
                await self._slots.acquire()  # free: returns at once
                slots += 1
            try:
                if self._orphans:
                    await self._recover_orphans()
                claimed = await self._store.claim(
                    self._instance, [secrets.token_hex(8) for _ in range(slots)]
                )
            except StoreError as exc:
                self._orphans = True  # the claim may have been made with its answer lost
                self._circuit.release(probe)
                self._release(slots)
                log.warning("claim failed, retrying: %s", exc)
                await self._sleep(_STORE_RETRY)
                continue
            if isinstance(claimed, NoWork):
                self._circuit.release(probe)
                self._release(slots)
                await self._sleep(_idle_for(claimed))
                continue
            self._release(slots - len(claimed))
            if self._stopping:
                # stop() came while this claim was on its way: no delivery starts now, or it would
                # run on unwaited, past the closing of the relay pool and of Redis, and open
                # connections that nobody closes. Its claims go back to the queue with this daemon's
                # others (Service.stop recovers them).
                self._circuit.release(probe)
                self._release(len(claimed))
                break
            for claim in claimed:
                task = asyncio.create_task(self._deliver(claim, probe))
                self._tasks[task] = claim
                self._holding.add(task)
                task.add_done_callback(self._done)
            if len(self._tasks) >= self._most_in_hand:
                self._room.clear()

    def _let_go(self, task: asyncio.Task[None]) -> None:
        """The delivery `task` no longer needs the relay: its slot goes to the next claim."""
        if task in self._holding:
            self._holding.discard(task)
            self._slots.release()

    def _release(self, slots: int) -> None:
        for _ in range(slots):
            self._slots.release()

    async def stop(self, grace: float) -> None:
        """Stop claiming; give in-flight deliveries `grace` seconds, then cancel them.

        A cancelled delivery whose relay has answered goes on recording the answer (it is
        shielded): those records get up to another `grace`, then are cancelled too, so nothing
        runs on past the closing of Redis (recovery counts such a message uncertain).
        """
        self._stopping = True
        self._wake.set()
        self._room.set()
        await end_within(set(self._tasks), grace)
        unrecorded = await end_within(set(self._recording), grace)
        if unrecorded:
            log.error("%d relay answers not recorded at shutdown: recovery counts them uncertain", unrecorded)

    async def _recover_orphans(self) -> None:
        """Requeue the claims this daemon holds that no delivery works on any more.

        Called between claims, so a claim being made is never taken for an orphan. Recovery in
        the maintenance loop only takes claims of daemons that stopped heartbeating.
        """
        self._orphans = False  # first: a delivery failing meanwhile sets it again
        # A finished task sets the flag before it ends, so its claim counts as let go of.
        live = [claim.token for task, claim in self._tasks.items() if not task.done()]
        unsent, self._unsent = self._unsent, set()
        try:
            recovered, uncertain = await self._store.recover(own=self._instance, live=live, unsent=unsent)
        except StoreError:
            self._unsent |= unsent
            raise
        if recovered:
            log.warning("requeued %d messages let go of as Redis failed (%d uncertain)", recovered, uncertain)
            self._metrics.uncertain.inc(uncertain)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._let_go(task)
        if len(self._tasks) < self._most_in_hand:
            self._room.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds` or until woken; not at all once stopping, as the wake `stop()` gave may
        have come while a claim was in flight."""
        if self._stopping:
            return
        self._wake.clear()
        self._looks_at = time.monotonic() + max(seconds, 0.0)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0.0))
        finally:
            self._looks_at = math.inf

    async def _deliver(self, claim: Claim, probe: bool) -> None:
        try:
            await self._attempt(claim)
        except StoreError as exc:
            # The claim stays in flight; the claim loop requeues it once Redis answers again. Raised
            # before the relay had the message (once it answers, `_until_stored` waits for Redis), so
            # even a start whose reply was lost left nothing uncertain.
            self._orphans = True
            self._unsent.add(claim.token)
            log.warning("store failed mid-delivery: %s", exc, extra={"message_id": claim.message_id})
        finally:
            # A probe that never reached the relay (throttled, held, DNS) hands its turn on.
            self._circuit.release(probe)

    async def _attempt(self, claim: Claim) -> None:
        record = claim.record
        message_id = claim.message_id
        if record is None:
            await self._unsendable(claim, f"cannot be read: {claim.damage}")
            return
        rules = self._rules.now
        # Checked again at each claim: the rules may have changed, and a retry may fall outside.
        opens = opening_ms(rules.file, record, claim.now_ms)
        if opens > claim.now_ms:
            await self._store.transition(
                message_id,
                to=None,
                claim=claim.token,
                allowed_from=CLAIMABLE,
                delay_ms=opens - claim.now_ms,
                changes={"waiting_for": Wait.SEND_WINDOW},
            )
            return
        if record.dns_pending and not await self._recheck_dns(claim, record):
            return
        try:
            data = self._render(claim, record, rules)
        except Exception as exc:
            await self._unsendable(claim, f"cannot be rendered: {type(exc).__name__}: {exc}")
            return
        attempt = record.attempts + 1
        member = f"{message_id}:{attempt}"
        buckets = self._throttles.buckets(
            rules.file.throttle,
            scope_values(record),
            held_kinds(rules.file.reply_rule),
            ramps=rules.file.ramp,
            mass_send=None
            if await self._approvals.released_at_tier_two(record)
            else MassSendLine.of(record.agent, rules.file.approvals),
        )
        suppressed = audit_entry(
            "delivery.outcome",
            "sendguard",
            {
                "message_id": message_id,
                "agent": record.agent,
                "status": Status.CANCELLED.value,
                "cause": "recipient_suppressed",
                "attempt": attempt,
                "outcome": "@",  # the script writes the suppression entry that matched here
            },
        )
        started = await self._store.start(
            claim,
            f"attempt {attempt}",
            {"attempts": attempt, "dns_pending": False, "waiting_for": None},
            suppressed,
            self._throttles.reservation(buckets, member),
            buckets.waits,
        )
        if started.moved is Moved.THROTTLED:
            self._metrics.throttle_waits.labels(buckets.scopes[started.bucket].value).inc()
            return
        if started.moved is Moved.SUPPRESSED:
            log.info("delivery cancelled: recipient suppressed", extra={"message_id": message_id})
        if started.moved is not Moved.MOVED:  # suppressed, its scope tripped, or cancelled, since the claim
            return
        await self._send(claim, record, data, attempt, buckets, member, rules)

    async def _unsendable(self, claim: Claim, detail: str) -> None:
        """A message that can never be sent as stored fails now, instead of being retried."""
        log.error("message %s", detail, extra={"message_id": claim.message_id})
        await self._store.transition(
            claim.message_id,
            to=Status.FAILED,
            cause="unsendable",
            detail=detail,
            claim=claim.token,
            allowed_from=CLAIMABLE,
            activity=outcome_counted(Status.FAILED),
        )

    def _render(self, claim: Claim, record: MessageRecord, rules: Rules) -> bytes:
        headers = record.extra_headers()
        if self._unsubscribe is not None:
            headers = self._unsubscribe.headers(claim.message_id, record.to, headers)
        signer = rules.dkim_signers.get(record.from_addr.rpartition("@")[2].lower())
        return render(record, headers, datetime.now(UTC), signer)

    async def _send(
        self,
        claim: Claim,
        record: MessageRecord,
        data: bytes,
        attempt: int,
        buckets: Buckets,
        member: str,
        rules: Rules,
    ) -> None:
        """One attempt, under the rules the claim was judged by (its transport and signer included,
        so a reload in between never pairs one version's throttles with another's environment)."""
        started = time.perf_counter()
        outcome: Outcome
        delivered = False
        refusal: RelayReply | None = None
        # With a bounce domain, the envelope sender carries the id, signed, so a bounce proves
        # which message it is about and nobody else can write one that does.
        sender = self._bounces.address(claim.message_id) if self._bounces else record.from_addr
        transport = self._transport_for(record.agent, rules)
        try:
            async with asyncio.timeout(self._settings.smtp_timeout):
                code, text = await transport.send(claim.message_id, sender, record.to, data)
        except RelayReply as reply:
            refusal = reply
            self._circuit.succeeded()  # any reply proves the relay is there
            self._metrics.smtp_replies.labels(f"{reply.code // 100}xx", reply.stage).inc()
            outcome = self._refused(reply, attempt)
        except (UncertainDelivery, TimeoutError) as exc:
            self._circuit.failed()
            delivered = True  # it may have left: keep its throttle slot
            self._metrics.uncertain.inc()
            outcome = self._retry(
                attempt, "uncertain", str(exc) or "deadline passed", {"uncertain": record.uncertain + 1}
            )
        except RelayError as exc:
            self._circuit.failed()
            outcome = self._retry(attempt, "connection", str(exc), {})
        else:
            if transport is self._transport:  # the outbox taking a sandbox agent's mail proves nothing
                self._circuit.succeeded()
            delivered = True
            self._metrics.smtp_replies.labels(f"{code // 100}xx", "data").inc()
            self._metrics.sent.inc()
            outcome = Outcome(
                Status.SENT,
                "relay_accepted",
                f"{code} {text}",
                {"smtp_code": code, "smtp_text": text, "sent_at": now_ms()},
            )
        self._metrics.delivery_seconds.observe(time.perf_counter() - started)
        # The relay is done with it: the next message may start while this answer is recorded.
        # It stays among the tasks, so shutdown waits for the record and recovery spares its claim.
        task = asyncio.current_task()
        if task is not None:
            self._let_go(task)
        status = outcome.status
        delay = self._backoff_ms(attempt) if status is Status.DEFERRED else None
        # Once the relay has answered, neither a shutdown nor a Redis outage may lose the record of it.
        store_outcome = functools.partial(
            self._record, claim, record, buckets, member, delivered, outcome, delay
        )
        recording = asyncio.create_task(self._until_stored(store_outcome, claim.message_id))
        self._recording.add(recording)
        recording.add_done_callback(self._recording.discard)
        await asyncio.shield(recording)
        if refusal is not None:
            await self._reply_rules.observe(record, refusal)
        log.info(
            "delivery %s",
            status.value,
            extra={
                "message_id": claim.message_id,
                "agent": record.agent,
                "status": status.value,
            },
        )

    def _transport_for(self, agent_name: str, rules: Rules) -> Transport:
        """Sandbox first: only an agent the rules in force register as production reaches the relay.

        Read at each send, so promoting an agent (a rules change and a reload, versioned and
        audited) takes effect at its next message; an agent no longer registered reaches nobody.
        """
        agent = rules.agent(agent_name)
        return self._transport if agent is not None and agent.environment == "production" else self._outbox

    async def _until_stored(self, step: Callable[[], Awaitable[None]], message_id: str) -> None:
        """Run `step` (recording the relay's answer) however long Redis takes to come back.

        Letting go of the claim instead would have it sent again, though the relay took it.
        Repeating a record is safe: settling is idempotent, the move is refused once done (and
        with it the `sent` count), and a bounce counts once per message.
        """
        while True:
            try:
                await step()
                return
            except StoreError as exc:
                log.warning(
                    "delivery outcome not recorded, retrying: %s", exc, extra={"message_id": message_id}
                )
                await asyncio.sleep(_STORE_RETRY)

    async def _record(
        self,
        claim: Claim,
        record: MessageRecord,
        buckets: Buckets,
        member: str,
        delivered: bool,
        outcome: Outcome,
        delay: int | None,
    ) -> None:
        status, cause, detail, changes = outcome
        trail = audit_entry(
            "delivery.outcome",
            "sendguard",
            {
                "message_id": claim.message_id,
                "agent": record.agent,
                "status": status.value,
                "cause": cause,
                "smtp_code": changes.get("smtp_code"),
                "smtp_text": changes.get("smtp_text"),
                "attempt": record.attempts + 1,
            },
        )
        sent = (
            self._safe_mode.sent(record.scopes, message_id=claim.message_id, last_sent_to=record.to)
            if status is Status.SENT
            else None
        )
        await self._store.finish(
            claim,
            to=status,
            cause=cause,
            detail=detail,
            delay_ms=delay,
            changes=changes,
            audit_entry=trail,
            activity=outcome_counted(status),
            settle=buckets.settlement(member, delivered),
            signal=sent,
        )
        if status is Status.BOUNCED:
            await self._feedback.bounced(claim.message_id, record)

    def _refused(self, reply: RelayReply, attempt: int) -> Outcome:
        changes: Changes = {"smtp_code": reply.code, "smtp_text": reply.text, "smtp_stage": reply.stage}
        detail = f"{reply.stage}: {reply.code} {reply.text}"
        if not reply.permanent:
            return self._retry(attempt, "smtp_4xx", detail, changes)
        if reply.stage == "mail":
            self._metrics.failed.inc()
            return Outcome(Status.FAILED, "sender_refused", detail, changes)
        self._metrics.bounced.inc()
        return Outcome(Status.BOUNCED, "smtp_5xx", detail, changes)

    def _retry(self, attempt: int, cause: str, detail: str, changes: Changes) -> Outcome:
        """Deferred for another attempt, or failed once the attempts are used up.

        An unreachable relay never uses up attempts: the circuit holds dispatch back meanwhile,
        and the message has not been refused by anyone.
        """
        if attempt >= self._settings.max_attempts and cause != "connection":
            self._metrics.failed.inc()
            return Outcome(
                Status.FAILED, "retries_exhausted", f"after {attempt} attempts; last: {detail}", changes
            )
        self._metrics.deferred.labels(cause).inc()
        return Outcome(Status.DEFERRED, cause, detail, changes)

    def _backoff_ms(self, attempt: int) -> int:
        """Exponential backoff with jitter, so retries from many messages do not arrive in step."""
        base = min(self._settings.retry_max_delay, self._settings.retry_base * 2 ** (attempt - 1))
        return int(base * random.uniform(0.8, 1.2) * 1000)

    async def _recheck_dns(self, claim: Claim, record: MessageRecord) -> bool:
        """True when the recipient's domain now resolves; otherwise the message is moved on.

        Rules reloaded with `mx_check = "off"` stop the re-checks too: the message is sent as a
        message admitted under those rules would be.
        """
        if self._rules.now.file.ingress.mx_check != "enforce":
            await self._dns_settled(claim, "mx_check_off")
            return True
        recipient = Recipient(address=record.to, canonical=record.to_canonical, domain=record.to_domain)
        await self._ingress.check_mail_host(recipient)
        checks = record.dns_checks + 1
        if recipient.reasons:
            reason = recipient.reasons[0]
            await self._store.transition(
                claim.message_id,
                to=Status.REJECTED,
                cause=reason.code,
                detail=reason.detail,
                claim=claim.token,
                allowed_from=CLAIMABLE,
                changes={"reasons": (reason,), "dns_pending": False},
                activity=rejection_counted([reason.code]),
            )
            return False
        if recipient.dns_deferral:
            self._metrics.deferred.labels("dns").inc()
            if checks > self._settings.max_attempts:
                await self._store.transition(
                    claim.message_id,
                    to=Status.FAILED,
                    cause="dns_temporary",
                    detail=f"DNS failed temporarily {checks} times",
                    claim=claim.token,
                    allowed_from=CLAIMABLE,
                    activity=outcome_counted(Status.FAILED),
                )
            else:
                await self._store.transition(
                    claim.message_id,
                    to=Status.DEFERRED,
                    claim=claim.token,
                    allowed_from=CLAIMABLE,
                    delay_ms=self._backoff_ms(checks),
                    changes={"dns_checks": checks},
                )
            return False
        await self._dns_settled(claim, "dns_resolved")
        return True

    async def _dns_settled(self, claim: Claim, cause: str) -> None:
        """The message no longer waits for DNS: queued again, still claimed, for this attempt."""
        await self._store.transition(
            claim.message_id,
            to=Status.QUEUED,
            cause=cause,
            claim=claim.token,
            allowed_from=CLAIMABLE,
            keep_claim=True,
            changes={"dns_pending": False, "reasons": ()},
        )


def _idle_for(no_work: NoWork) -> float:
    if no_work.next_due_ms is None:
        return _IDLE_POLL
    return min(_IDLE_POLL, max(0.0, (no_work.next_due_ms - no_work.now_ms) / 1000))
