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
