"""Prometheus metrics: `sendguard_` prefix, counters end in `_total`, bounded labels only.

Each build of the parts has its own `Metrics` and registry, so daemons sharing one process (the
tests run several) never share a count; `/metrics` serves that registry.

Labels take values from fixed sets (outcomes, reason codes, scope kinds, reply classes),
never a recipient address or a domain. The one exception is the per-scope gauges' `scope` label,
whose values agents choose (segment, campaign, From): those are exported only for a bounded set of
scopes (`SafeMode.refresh_metrics`, `SENDGUARD_METRICS_TOP_SCOPES`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

ALERT_IGNORED = ("not_firing", "no_scope", "bad_scope")  # why a posted alert tripped nothing
# What an SMTP listener refused, by the budget that refused it: those every listener has
# (smtp_server.py), and the inbound one's (feedback/listener.py) and the submission one's (intake/smtp.py).
SMTP_SESSION_LIMITS = ("sessions", "size", "idle", "line", "commands", "bad_commands")
INBOUND_LIMITS = (
    *SMTP_SESSION_LIMITS,
    "client_sessions",
    "lifetime",
    "rate",
    "recipient",
    "recipients",
    "queue",
)
SUBMISSION_LIMITS = (*SMTP_SESSION_LIMITS, "client_sessions", "auth_timeout", "auth", "recipients")


class Metrics:
    """One daemon's metrics, with the process, platform and GC collectors a default registry has."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        counter = functools.partial(Counter, registry=self.registry)
        gauge = functools.partial(Gauge, registry=self.registry)
        histogram = functools.partial(Histogram, registry=self.registry)
        self.submissions = counter(
            "sendguard_submissions_total",
            "Submissions decided, by outcome (queued, deferred, rejected) and first reason code.",
            ["outcome", "reason"],
        )
        self.sent = counter("sendguard_messages_sent_total", "Messages the relay accepted with a 2xx reply.")
        self.deferred = counter(
            "sendguard_messages_deferred_total",
            "Temporary failures that will be retried, by cause (smtp_4xx, connection, uncertain, dns).",
            ["cause"],
        )
        self.bounced = counter(
            "sendguard_messages_bounced_total",
            "Messages refused with a 5xx at RCPT or DATA (hard bounces).",
        )
        self.failed = counter(
            "sendguard_messages_failed_total", "Messages that ran out of retries or hit a 5xx at MAIL."
        )
        self.uncertain = counter(
            "sendguard_uncertain_deliveries_total",
            "Messages that may have reached the relay without the 2xx being recorded; retried, so "
            "each may arrive twice.",
        )
        self.smtp_replies = counter(
            "sendguard_smtp_replies_total",
            "Relay replies that ended a transaction, by class (2xx, 4xx, 5xx) and stage.",
            ["reply_class", "stage"],
        )
        self.throttle_waits = counter(
            "sendguard_throttle_waits_total",
            "Times a message had to wait for a throttle, by the scope kind that said no (mass_send: its "
            "agent's mass-send line).",
            ["scope"],
        )
        self.ramp_limit = gauge(
            "sendguard_ramp_limit",
            "A warm-up ramp's limit now for an inbox or sender domain of the register (the first "
            "SENDGUARD_METRICS_TOP_SCOPES of each kind, by name).",
            ["scope_kind", "scope"],
        )
        self.waiting = gauge(
            "sendguard_messages_waiting",
            "Messages not yet in a terminal state, by status, across all daemons on this Redis.",
            ["state"],
        )
        self.batch_recipients = histogram(
            "sendguard_batch_recipients",
            "Recipients per batch submitted.",
            buckets=(1, 10, 25, 100, 500, 1000, 5000, 10000, 50000),
        )
        self.decision_seconds = histogram(
            "sendguard_decision_seconds",
            "Time to decide a submission (checks and durable admission).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.delivery_seconds = histogram(
            "sendguard_delivery_seconds",
            "Duration of one delivery attempt to the relay.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

        # Signals and safe mode. The per-scope gauges are refreshed from Redis, so every daemon on one
        # Redis reports the same values, for global, every tripped scope and the busiest few others
        # of each kind (`exported_scopes`), never every value an agent ever sent.
        _SCOPE = ["scope_kind", "scope"]
        self.bounce_rate = gauge(
            "sendguard_bounce_rate", "Hard bounces / sent in the safe-mode window, per scope.", _SCOPE
        )
        self.complaint_rate = gauge(
            "sendguard_complaint_rate", "Complaints / sent in the safe-mode window, per scope.", _SCOPE
        )
        self.negative_reply_rate = gauge(
            "sendguard_negative_reply_rate",
            "(Negative + abusive) replies / replies in the safe-mode window, per scope.",
            _SCOPE,
        )
        self.safe_mode = gauge(
            "sendguard_safe_mode", "1 while the scope is in safe mode (sending stopped).", _SCOPE
        )
        self.window_sent = gauge(
            "sendguard_window_sent",
            "Messages sent in the safe-mode window (the rates' denominator), per scope.",
            _SCOPE,
        )
        self.window_replies = gauge(
            "sendguard_window_replies", "Replies received in the safe-mode window, per scope.", _SCOPE
        )
        self.per_scope = (
            self.bounce_rate,
            self.complaint_rate,
            self.negative_reply_rate,
            self.safe_mode,
            self.window_sent,
            self.window_replies,
        )
        self.threshold = gauge(
            "sendguard_safe_mode_threshold",
            "The rules file's safe-mode settings (bounce_rate, complaint_rate, negative_reply_rate, "
            "min_sent, min_replies), for alert rules and dashboards to compare with.",
            ["signal"],
        )
        self.bounces = counter(
            "sendguard_bounces_total",
            "Bounces recorded, synchronous and from DSNs, by type (hard counts in the bounce rate, "
            "soft does not).",
            ["type"],
        )
        self.complaints = counter(
            "sendguard_complaints_total", "Complaints (feedback-loop reports) recorded."
        )
        self.replies = counter("sendguard_replies_total", "Replies recorded, by sentiment.", ["sentiment"])
        self.unsubscribes = counter(
            "sendguard_unsubscribes_total", "Unsubscribe requests recorded (each suppresses an address)."
        )
        self.unmatched_events = counter(
            "sendguard_events_unmatched_total",
            "Events that could not be tied to a message sendguard sent, by type.",
            ["type"],
        )
        self.trips = counter(
            "sendguard_safe_mode_trips_total",
            "Safe-mode trips, by cause (bounce_rate, complaint_rate, negative_reply_rate, abusive_replies, "
            "denials, alert, manual).",
            ["cause"],
        )
        self.resumes = counter("sendguard_safe_mode_resumes_total", "Safe-mode scopes resumed by a person.")
        self.alerts_ignored = counter(
            "sendguard_alerts_ignored_total",
            "Alertmanager alerts posted to /v1/alerts that tripped nothing, by reason (not_firing, "
            "no_scope, bad_scope).",
            ["reason"],
        )
        self.start_at_zero(self.alerts_ignored, ALERT_IGNORED)
        self.inbound = counter(
            "sendguard_inbound_messages_total",
            "Raw inbound mail received (HTTP or SMTP), by what it was: dsn, arf, reply, unparsed, or "
            "unreferenced (kept: it proves no message of ours).",
            ["kind"],
        )
        self.inbound_trimmed = counter(
            "sendguard_inbound_trimmed_total",
            "Inbound mail of which more was cut than the daemon checks (feedback/parse.py budgets), by "
            "what: message_ids, bounce_addresses, recipients (DSN per-recipient groups), addresses (an "
            "address header read only in part).",
            ["what"],
        )
        self.inbound_refused = counter(
            "sendguard_inbound_refused_total",
            "Inbound SMTP refused by a budget: sessions, rate (per client IP), recipient (not ours), "
            "recipients (too many), size, queue (the daemon is behind).",
            ["limit"],
        )
        self.submission_refused = counter(
            "sendguard_submission_refused_total",
            "SMTP submission refused by a budget: sessions, client_sessions (too many not signed in "
            "from one client), size, idle, line (too long), commands (too many of one), bad_commands "
            "(unknown ones), auth_timeout (not signed in in time), auth (a failed AUTH), recipients "
            "(too many).",
            ["limit"],
        )
        self.inbound_restarts = counter(
            "sendguard_inbound_process_restarts_total",
            "Times the inbound mail process (SMTP listener and parser) died and was started again.",
        )
        self.notify_failures = counter(
            "sendguard_notifications_failed_total",
            "Notifications (trips, resumes, approval requests) the webhook did not accept in any attempt; "
            "an approval request's is posted again from Redis.",
        )
        self.circuit_open = gauge(
            "sendguard_relay_circuit_open",
            "1 while this daemon's relay circuit is open (the relay keeps failing; dispatch paused).",
        )
        self.circuit_opens = counter("sendguard_relay_circuit_opens_total", "Times the relay circuit opened.")

        self.sender_auth_ok = gauge(
            "sendguard_sender_auth_ok",
            "1 while a sender domain of the register passes a check (spf, dkim, dmarc; unsubscribe for "
            "domain '*'), 0 on a failure or a warning; checked at start and at each rules reload.",
            ["domain", "check"],
        )

        self.audit_entries = gauge(
            "sendguard_audit_entries", "Entries in the hash-chained audit trail (the head's sequence)."
        )
        self.audit_pending = gauge("sendguard_audit_pending", "Audit entries written but not yet chained.")
        self.audit_head = gauge(
            "sendguard_audit_head_fingerprint",
            "The first 52 bits of the audit trail's head hash: a copy outside Redis that a rewritten or "
            "truncated trail cannot match.",
        )
        self.audit_anchor_missing = gauge(
            "sendguard_audit_anchor_missing",
            "1 while this daemon does not chain the audit trail because its anchor file is gone and the "
            "trail has entries (a fresh anchor would hide a cut-off tail), or the file names entries "
            "the trail no longer has (cut off or wiped).",
        )
        self.store_wiped = gauge(
            "sendguard_store_wiped",
            "1 while this daemon claims nothing because the store lost the marker it started on "
            "(wiped or replaced): trips, suppressions and queue are gone; a person restarts it.",
        )
        self.reply_rule_actions = counter(
            "sendguard_reply_rule_actions_total",
            "Reply rules applied (defer, slow, trip), once per rule and scope in each window.",
            ["action"],
        )
        self.blocklist_checks = counter(
            "sendguard_blocklist_checks_total",
            "Blocklist (DNSBL) look-ups, by result: listed, clear, or error (a time-out, a refusal, or "
            "an answer that is an error code such as Spamhaus' 127.255.255.x, not a listing).",
            ["result"],
        )
        self.blocklist_listed = gauge(
            "sendguard_blocklist_listed",
            "1 while a sender domain or sending IP of the rules file is listed on a configured zone; "
            "targets and zones come from the rules file, so the series are bounded.",
            ["zone", "target"],
        )

    @staticmethod
    def start_at_zero(counter: Counter, *values: Iterable[str]) -> None:
        """Export `counter` at 0 for every combination of its known label values.

        A series that appears only at its first increment has no earlier sample, so `increase()`
        never sees that first burst and an alert on it never fires.
        """
        for labels in itertools.product(*values):
            counter.labels(*labels)

    def exposition(self) -> bytes:
        """The text `/metrics` answers with."""
        return generate_latest(self.registry)
