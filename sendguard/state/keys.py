"""Every Redis key sendguard uses, in one place, under the deployment's prefix.

Layout (P = prefix, default `sg`):
    P:msg:{id}              hash   the message record (fields below, JSON-free where possible)
    P:hist:{id}             list   transitions, JSON objects {at, status, cause, detail}
    P:due                   zset   messages waiting to be worked on, score = due time (ms)
    P:inflight              zset   messages claimed by a daemon, score = claim time (ms)
    P:count                 hash   number of waiting messages per status, kept by the scripts
    P:stats                 hash   lifetime totals that must survive restarts (uncertain deliveries)
    P:inst:{id}             string a live daemon instance; expires unless its heartbeat renews it
    P:idem:{agent}:{key}    string message id for an agent's idempotency key
    P:idem-batch:{agent}:{key}  string batch id for an agent's batch idempotency key
    P:batch:{id}            hash   a batch: agent, requester, size, hash of the request, approval
    P:cool:{address}        string message id holding a recipient's cooldown
    P:supp:addr / supp:dom  set    suppressed addresses / domains
    P:thr:{scope}:{per}:{value}  zset  sends in a throttle bucket, score = latest possible send time (ms)
    P:gaps:{scope}:{value}  zset   the last send in a min_gap bucket, score = its latest possible send time
    P:tok:{id}              hash   a token: sha256 of its secret, role, name; never the secret
    P:rcpt:{address}        set    ids of messages admitted for an address (a reply cancels the waiting)
    P:last:{address}        string id of the last message sent to an address (events tied by recipient)
    P:sig:{scope}           hash   signal counts per time slot `{slot}:{signal}`, window totals `t:{signal}`
    P:sig:active            zset   scopes with signals, score = last signal time (ms), for the gauges
    P:trips                 hash   scope -> JSON of its active safe-mode trip
    P:held:{scope}          set    ids of messages held by that scope's trip
    P:unparsed              list   raw inbound mail that could not be parsed, JSON, newest first, capped
    P:appr:{id}             hash   an approval request: tier, kind, requester, status, decisions (JSON)
    P:appr:{id}:msgs        set    ids of the messages waiting for it
    P:approvals             zset   approval request ids, score = creation time (ms)
    P:approvals:pending     zset   pending approval request ids, score = when they expire (ms)
    P:run:{agent}:{scope}   zset   an agent's recent messages to one segment or campaign (mass-send count)
    P:run:{agent}:{scope}:approval  string  the approval request covering that run
    P:audit:pending         list   audit entries written but not yet chained, JSON, oldest first
    P:audit:chain           list   the hash-chained audit trail, JSON entries in sequence order
    P:audit:head            hash   seq and hash of the last chained entry
    P:audit:lock            string the daemon currently chaining the audit trail
    P:unsub:secret          string the HMAC secret of one-click unsubscribe links
    P:rules:reloads         string count of rules reloads; daemons that see it grow reload too
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key builder for one prefix, so several deployments can share a Redis."""

    prefix: str

    def msg(self, message_id: str) -> str:
        return f"{self.prefix}:msg:{message_id}"

    def hist(self, message_id: str) -> str:
        return f"{self.prefix}:hist:{message_id}"

    @property
    def due(self) -> str:
        return f"{self.prefix}:due"

    @property
    def inflight(self) -> str:
        return f"{self.prefix}:inflight"

    @property
    def count(self) -> str:
        return f"{self.prefix}:count"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    def instance(self, instance_id: str) -> str:
        return f"{self.prefix}:inst:{instance_id}"

    def idempotency(self, agent: str, key: str) -> str:
        return f"{self.prefix}:idem:{agent}:{key}"

    def batch_idempotency(self, agent: str, key: str) -> str:
        return f"{self.prefix}:idem-batch:{agent}:{key}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def cooldown(self, address: str) -> str:
        return f"{self.prefix}:cool:{address}"

    @property
    def suppressed_addresses(self) -> str:
        return f"{self.prefix}:supp:addr"

    @property
    def suppressed_domains(self) -> str:
        return f"{self.prefix}:supp:dom"

    def throttle(self, scope: str, per_ms: int, value: str) -> str:
        return f"{self.prefix}:thr:{scope}:{per_ms}:{value}"

    def gap(self, scope: str, value: str) -> str:
        return f"{self.prefix}:gaps:{scope}:{value}"

    def token(self, token_id: str) -> str:
        return f"{self.prefix}:tok:{token_id}"

    @property
    def token_pattern(self) -> str:
        return f"{self.prefix}:tok:*"

    def recipient(self, address: str) -> str:
        return f"{self.prefix}:rcpt:{address}"

    def last_sent(self, address: str) -> str:
        return f"{self.prefix}:last:{address}"

    def signals(self, scope: str) -> str:
        return f"{self.prefix}:sig:{scope}"

    @property
    def active_scopes(self) -> str:
        return f"{self.prefix}:sig:active"

    @property
    def trips(self) -> str:
        return f"{self.prefix}:trips"

    def held(self, scope: str) -> str:
        return f"{self.prefix}:held:{scope}"

    @property
    def unparsed(self) -> str:
        return f"{self.prefix}:unparsed"

    @property
    def audit_pending(self) -> str:
        return f"{self.prefix}:audit:pending"

    @property
    def audit_chain(self) -> str:
        return f"{self.prefix}:audit:chain"

    @property
    def audit_head(self) -> str:
        return f"{self.prefix}:audit:head"

    @property
    def audit_lock(self) -> str:
        return f"{self.prefix}:audit:lock"

    def approval(self, approval_id: str) -> str:
        return f"{self.prefix}:appr:{approval_id}"

    def approval_messages(self, approval_id: str) -> str:
        return f"{self.prefix}:appr:{approval_id}:msgs"

    @property
    def approvals(self) -> str:
        return f"{self.prefix}:approvals"

    def run(self, agent: str, scope: str) -> str:
        return f"{self.prefix}:run:{agent}:{scope}"

    def run_approval(self, agent: str, scope: str) -> str:
        return f"{self.prefix}:run:{agent}:{scope}:approval"

    @property
    def approvals_pending(self) -> str:
        return f"{self.prefix}:approvals:pending"

    @property
    def unsubscribe_secret(self) -> str:
        return f"{self.prefix}:unsub:secret"

    @property
    def rules_reloads(self) -> str:
        return f"{self.prefix}:rules:reloads"
