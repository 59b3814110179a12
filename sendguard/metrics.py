"""Prometheus metrics: `sendguard_` prefix, counters end in `_total`, bounded labels only.

Labels take values from fixed sets (outcomes, reason codes, scope kinds, reply classes),
never a recipient address or a domain.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SUBMISSIONS = Counter(
    "sendguard_submissions_total",
    "Submissions decided, by outcome (queued, deferred, rejected) and first reason code.",
    ["outcome", "reason"],
)
SENT = Counter("sendguard_messages_sent_total", "Messages the relay accepted with a 2xx reply.")
DEFERRED = Counter(
    "sendguard_messages_deferred_total",
    "Temporary failures that will be retried, by cause (smtp_4xx, connection, uncertain, dns).",
    ["cause"],
)
BOUNCED = Counter(
    "sendguard_messages_bounced_total",
    "Messages refused with a 5xx at RCPT or DATA (hard bounces).",
)
FAILED = Counter("sendguard_messages_failed_total", "Messages that ran out of retries or hit a 5xx at MAIL.")
UNCERTAIN = Counter(
    "sendguard_uncertain_deliveries_total",
    "Messages that may have reached the relay without the 2xx being recorded; retried, so "
    "each may arrive twice.",
)
SMTP_REPLIES = Counter(
    "sendguard_smtp_replies_total",
    "Relay replies that ended a transaction, by class (2xx, 4xx, 5xx) and stage.",
    ["reply_class", "stage"],
)
THROTTLE_WAITS = Counter(
    "sendguard_throttle_waits_total",
    "Times a message had to wait for a throttle, by the scope kind that said no.",
    ["scope"],
)
WAITING = Gauge(
    "sendguard_messages_waiting",
    "Messages not yet in a terminal state, by status, across all daemons on this Redis.",
    ["state"],
)
BATCH_RECIPIENTS = Histogram(
    "sendguard_batch_recipients",
    "Recipients per batch submitted.",
    buckets=(1, 10, 25, 100, 500, 1000, 5000, 10000, 50000),
)
DECISION_SECONDS = Histogram(
    "sendguard_decision_seconds",
    "Time to decide a submission (checks and durable admission).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DELIVERY_SECONDS = Histogram(
    "sendguard_delivery_seconds",
    "Duration of one delivery attempt to the relay.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# Signals and safe mode. The per-scope gauges are refreshed from Redis, so every daemon on one
# Redis reports the same values; only scopes of configured kinds with traffic in the window appear.
_SCOPE = ["scope_kind", "scope"]
BOUNCE_RATE = Gauge(
    "sendguard_bounce_rate", "Hard bounces / sent in the safe-mode window, per scope.", _SCOPE
)
COMPLAINT_RATE = Gauge(
    "sendguard_complaint_rate", "Complaints / sent in the safe-mode window, per scope.", _SCOPE
)
NEGATIVE_REPLY_RATE = Gauge(
    "sendguard_negative_reply_rate",
    "(Negative + abusive) replies / replies in the safe-mode window, per scope.",
    _SCOPE,
)
SAFE_MODE = Gauge("sendguard_safe_mode", "1 while the scope is in safe mode (sending stopped).", _SCOPE)
WINDOW_SENT = Gauge(
    "sendguard_window_sent",
    "Messages sent in the safe-mode window (the rates' denominator), per scope.",
    _SCOPE,
)
WINDOW_REPLIES = Gauge(
    "sendguard_window_replies", "Replies received in the safe-mode window, per scope.", _SCOPE
)
PER_SCOPE = (BOUNCE_RATE, COMPLAINT_RATE, NEGATIVE_REPLY_RATE, SAFE_MODE, WINDOW_SENT, WINDOW_REPLIES)
THRESHOLD = Gauge(
    "sendguard_safe_mode_threshold",
    "The rules file's safe-mode settings (bounce_rate, complaint_rate, negative_reply_rate, min_sent, "
    "min_replies), for alert rules and dashboards to compare with.",
    ["signal"],
)
BOUNCES = Counter(
    "sendguard_bounces_total",
    "Bounces recorded, synchronous and from DSNs, by type (hard counts in the bounce rate, soft does not).",
    ["type"],
)
COMPLAINTS = Counter("sendguard_complaints_total", "Complaints (feedback-loop reports) recorded.")
REPLIES = Counter("sendguard_replies_total", "Replies recorded, by sentiment.", ["sentiment"])
UNSUBSCRIBES = Counter(
    "sendguard_unsubscribes_total", "Unsubscribe requests recorded (each suppresses an address)."
)
UNMATCHED_EVENTS = Counter(
    "sendguard_events_unmatched_total",
    "Events that could not be tied to a message sendguard sent, by type.",
    ["type"],
)
TRIPS = Counter(
    "sendguard_safe_mode_trips_total",
    "Safe-mode trips, by cause (bounce_rate, complaint_rate, negative_reply_rate, abusive_replies, "
    "denials, alert, manual).",
    ["cause"],
)
RESUMES = Counter("sendguard_safe_mode_resumes_total", "Safe-mode scopes resumed by a person.")
INBOUND = Counter(
    "sendguard_inbound_messages_total",
    "Raw inbound mail received (HTTP or SMTP), by what it was: dsn, arf, reply or unparsed.",
    ["kind"],
)
NOTIFY_FAILURES = Counter(
    "sendguard_notifications_failed_total", "Trip or resume notifications the webhook never accepted."
)
CIRCUIT_OPEN = Gauge(
    "sendguard_relay_circuit_open",
    "1 while this daemon's relay circuit is open (the relay keeps failing; dispatch paused).",
)
CIRCUIT_OPENS = Counter("sendguard_relay_circuit_opens_total", "Times the relay circuit opened.")

AUDIT_ENTRIES = Gauge(
    "sendguard_audit_entries", "Entries in the hash-chained audit trail (the head's sequence)."
)
AUDIT_PENDING = Gauge("sendguard_audit_pending", "Audit entries written but not yet chained.")
AUDIT_HEAD = Gauge(
    "sendguard_audit_head_fingerprint",
    "The first 52 bits of the audit trail's head hash: a copy outside Redis that a rewritten or "
    "truncated trail cannot match.",
)
