"""Every Redis key sendguard uses, in one schema, under the deployment's prefix.

`SCHEMA` is the only place a key's layout is written. The Python `Keys` below builds keys from
it, and the Lua scripts get their `key_<name>(...)` helpers generated from it (see scripts.py),
so neither side spells a key by hand. A pattern's `{part}`s are filled in per key, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Formatter

# name -> layout after `prefix:`. The comment gives the Redis type and what the key holds.
SCHEMA: dict[str, str] = {
    # hash: the message record, every field short enough for Redis' compact encoding in the common
    # case (its content and, where its fields give them, its scopes are kept elsewhere or derived)
    "msg": "msg:{id}",
    # string: a single message's own text, html and headers as a JSON object, apart from its
    # record so that one long body does not turn the whole record into Redis' large hash
    # encoding; it expires with the record. Records written before it hold these as hash fields.
    "content": "content:{id}",
    # list: transitions, JSON objects {at, status, cause, detail}; none yet for a message queued with
    # nothing to say, whose first entry is implied (Store.get)
    "hist": "hist:{id}",
    # set: the events recorded on a message, one member per effect and proof (Store.record_event),
    # so a replayed report writes nothing; it expires with the record
    "events": "events:{id}",
    "due": "due",  # zset: messages waiting to be worked on, score = due time (ms)
    "inflight": "inflight",  # zset: messages claimed by a daemon, score = claim time (ms)
    "count": "count",  # hash: number of waiting messages per status, kept by the scripts
    "stats": "stats",  # hash: lifetime totals that must survive restarts (uncertain deliveries)
    "instance": "inst:{id}",  # string: a live daemon; expires unless its heartbeat renews it
    "idempotency": "idem:{agent}:{key}",  # string: message id for an agent's idempotency key
    "batch_idempotency": "idem-batch:{agent}:{key}",  # string: batch id for a batch idempotency key
    "batch": "batch:{id}",  # hash: a batch: agent, requester, size, hash of the request, approval
    # hash: a batch's subject, text, html and headers, stored once, and `waiting`: how many of its
    # messages have not finished (it expires only once none has)
    "template": "tmpl:{batch}",
    # string: message id holding a recipient's cooldown, by mailbox (canonical address) as
    # suppressions and the waiting index are, so no spelling of one mailbox gets its own cooldown;
    # versions before keyed it on the address as written (a `+tag` one lapses, unread, in a cooldown)
    "cooldown": "cool:{mailbox}",
    # zset: an agent's newest messages, score = admission time (ms), member = id; written by the
    # admission script, trimmed there to the newest AGENT_INDEX_SIZE and to the record retention
    "agent_messages": "agent-msgs:{agent}",
    "suppressed_addresses": "supp:addr",  # set: suppressed mailboxes (canonical addresses)
    "suppressed_domains": "supp:dom",  # set: suppressed domains (each covers its subdomains too)
    "throttle": "thr:{scope}:{per_ms}:{value}",  # zset: sends, score = latest possible send time
    # zset: the last send in a min_gap bucket, score = its latest possible arrival (ms); renamed
    # from the string `gap:` key of earlier versions so an older daemon never reads it
    "gap": "gaps:{scope}:{value}",
    # string: when the first send of a ramped inbox or sender domain was reserved (ms), which its
    # warm-up counts from; kept, as the inbox or domain is (one per register entry, not per message)
    "ramp": "ramp:{scope}:{value}",
    "token": "tok:{id}",  # hash: a token: sha256 of its secret, role, name; never the secret
    # hash: a field (value '') for each id of the messages still waiting for a mailbox (a canonical
    # address): joined at admission, left when a message finishes, so it lasts exactly as long as
    # they wait, whatever their due time, and a suppression finds them all (replaces the 30-day
    # `rcpt:` index). A hash of a few short fields is Redis' compact encoding; a set of ids is not.
    "waiting": "waits:{mailbox}",
    # set: the same index as versions before the hash wrote it; read and left, never joined, so it
    # empties as the messages it names finish (waiting.lua `waiting_ids`)
    "waiting_legacy": "waiting:{mailbox}",
    # hash: recipient domain -> until when (ms) a reply from someone there stops the agent mailing it
    "company_replied": "replied:{agent}",
    "last_sent": "last:{address}",  # string: id of the last message sent to an address
    "signals": "sig:{scope}",  # hash: counts per slot `{slot}:{signal}`, totals `t:{signal}`
    "active_scopes": "sig:active",  # zset: scopes with signals, score = last signal (ms)
    "trips": "trips",  # hash: scope -> JSON of its active safe-mode trip
    "held": "held:{scope}",  # set: ids of messages held by that scope's trip
    "releasing": "releasing",  # set: resumed scopes whose held messages are not all released yet
    "resumed": "resumed:{scope}",  # string: when the scope was last resumed; expires, see safe_mode.py
    "unparsed": "unparsed",  # list: inbound mail that could not be parsed, newest first
    "approval": "appr:{id}",  # hash: an approval request: tier, kind, requester, status, decisions
    "approval_messages": "appr:{id}:msgs",  # set: ids of the messages waiting for it
    "approvals": "approvals",  # zset: approval request ids, score = creation time (ms)
    "approvals_pending": "approvals:pending",  # zset: pending request ids, score = expiry (ms)
    # zset: one agent's pending request ids (tier 1 and 2), score = expiry (ms): joined where a
    # request opens (shared/approval.lua `open_request`), left where it is decided or expires, so
    # its size is what `[approvals] max_pending_requests` caps and its members what the agent lists
    "agent_approvals": "agent-appr:{agent}",
    # zset: an agent's accepted recipients per slot of due time, member `<slot>:<recipients>`, score = slot
    "mass_sends": "mass:{agent}",
    "mass_request": "mass:{agent}:request",  # string: the agent's latest tier-2 request
    "audit_pending": "audit:pending",  # list: entries written, not yet chained, oldest first
    "audit_chain": "audit:chain",  # list: the hash-chained audit trail, JSON entries in sequence order
    "audit_head": "audit:head",  # hash: seq and hash of the last chained entry
    "audit_lock": "audit:lock",  # string: the daemon currently chaining the audit trail
    "audit_anchored": "audit:anchored",  # string: some daemon has written an anchor line for this trail
    # string: the HMAC secret sendguard signs with (one-click links; bounce addresses under a key
    # derived from it); named `unsub:` since it began with unsubscribe links alone
    "signing_secret": "unsub:secret",
    # string: a random marker the first daemon writes (SET NX) and no daemon rewrites; a daemon that
    # finds it gone or changed knows the store was wiped or replaced (state/marker.py)
    "store_marker": "store:marker",
    "store_wiped": "store:wiped",  # string: which daemon saw the marker gone, and when
    # string: a count every daemon's maintenance tick moves on by one; lower than a daemon last
    # saw, the store went back in time (restored from an older snapshot, a lagging replica)
    "store_clock": "store:clock",
    "rules_reloads": "rules:reloads",  # string: rules reloads; daemons that see it grow reload too
    # hash: a console session, by sha256 of its cookie: token id, csrf, expiry; never the token
    "console_session": "ui:session:{digest}",
    # hash: a break-glass elevation: admin, ticket, reason, minutes, status, granter, times; kept 30 days
    "break_glass": "bg:{id}",
    "break_glass_all": "bg:all",  # zset: elevation ids, score = when requested (ms)
    "break_glass_active": "bg:active:{admin}",  # string: id of the admin's granted elevation, until it ends
    # hash: one agent's activity in one hour (hour = Redis time in ms // ACTIVITY_BUCKET_MS), fields
    # `sent`, `bounced`, `failed`, `rejected:<reason code>`, `denied`, `tripped`; it expires
    # ACTIVITY_BUCKETS_KEPT hours after its hour began, so a day's worth is always there to read
    "activity": "activity:{agent}:{hour}",
    # hash: a reply rule's hold on a scope: `defer_until` (ms), and `slow_until`, `slow_limit`,
    # `slow_per` (ms); read by the throttle reservation, expires when the last of them ends
    "reply_hold": "reply-hold:{scope}",
    "reply_window": "reply-win:{scope}",  # zset: sends under a slow hold, scored as a throttle bucket's
    # string: reply rule `rule` (a hash of its settings, so a reload that reorders the rules keeps it)
    # acted on `scope` in this window; expires at the window's end
    "reply_once": "reply-once:{rule}:{scope}",
    "blocklist_turn": "dnsbl:turn",  # string: the daemon checking the blocklists this interval
    "blocklist_listed": "dnsbl:listed",  # hash: `<zone> <target>` -> JSON {at, answer, scope} of a listing
}
ACTIVITY_BUCKET_MS = 3_600_000
ACTIVITY_BUCKETS_KEPT = 25
# The `{part}` names of each pattern, in order.
PARTS = {
    name: [part for _, part, _, _ in Formatter().parse(pattern) if part] for name, pattern in SCHEMA.items()
}


@dataclass(frozen=True)
class Keys:
    """Key builder for one prefix, so several deployments can share a Redis.

    One accessor per `SCHEMA` entry, of the same name (a test holds them to it).
    """

    prefix: str

    def _key(self, name: str, *parts: str | int) -> str:
        return f"{self.prefix}:" + SCHEMA[name].format_map(dict(zip(PARTS[name], parts, strict=True)))

    def msg(self, message_id: str) -> str:
        return self._key("msg", message_id)

    def content(self, message_id: str) -> str:
        return self._key("content", message_id)

    def hist(self, message_id: str) -> str:
        return self._key("hist", message_id)

    def events(self, message_id: str) -> str:
        return self._key("events", message_id)

    @property
    def due(self) -> str:
        return self._key("due")

    @property
    def inflight(self) -> str:
        return self._key("inflight")

    @property
    def count(self) -> str:
        return self._key("count")

    @property
    def stats(self) -> str:
        return self._key("stats")

    def instance(self, instance_id: str) -> str:
        return self._key("instance", instance_id)

    def idempotency(self, agent: str, key: str) -> str:
        return self._key("idempotency", agent, key)

    def batch_idempotency(self, agent: str, key: str) -> str:
        return self._key("batch_idempotency", agent, key)

    def batch(self, batch_id: str) -> str:
        return self._key("batch", batch_id)

    def template(self, batch_id: str) -> str:
        return self._key("template", batch_id)

    def cooldown(self, mailbox: str) -> str:
        return self._key("cooldown", mailbox)

    def agent_messages(self, agent: str) -> str:
        return self._key("agent_messages", agent)

    @property
    def suppressed_addresses(self) -> str:
        return self._key("suppressed_addresses")

    @property
    def suppressed_domains(self) -> str:
        return self._key("suppressed_domains")

    def throttle(self, scope: str, per_ms: int, value: str) -> str:
        return self._key("throttle", scope, per_ms, value)

    def gap(self, scope: str, value: str) -> str:
        return self._key("gap", scope, value)

    def ramp(self, scope: str, value: str) -> str:
        return self._key("ramp", scope, value)

    def token(self, token_id: str) -> str:
        return self._key("token", token_id)

    def console_session(self, digest: str) -> str:
        return self._key("console_session", digest)

    def break_glass(self, elevation_id: str) -> str:
        return self._key("break_glass", elevation_id)

    @property
    def break_glass_all(self) -> str:
        return self._key("break_glass_all")

    def break_glass_active(self, admin: str) -> str:
        return self._key("break_glass_active", admin)

    @property
    def token_pattern(self) -> str:
        """Every token key, for SCAN MATCH."""
        return self.token("*")

    def waiting(self, mailbox: str) -> str:
        return self._key("waiting", mailbox)

    def waiting_legacy(self, mailbox: str) -> str:
        return self._key("waiting_legacy", mailbox)

    def company_replied(self, agent: str) -> str:
        return self._key("company_replied", agent)

    def last_sent(self, address: str) -> str:
        return self._key("last_sent", address)

    def signals(self, scope: str) -> str:
        return self._key("signals", scope)

    @property
    def active_scopes(self) -> str:
        return self._key("active_scopes")

    @property
    def trips(self) -> str:
        return self._key("trips")

    def held(self, scope: str) -> str:
        return self._key("held", scope)

    @property
    def releasing(self) -> str:
        return self._key("releasing")

    def resumed(self, scope: str) -> str:
        return self._key("resumed", scope)

    @property
    def unparsed(self) -> str:
        return self._key("unparsed")

    def approval(self, approval_id: str) -> str:
        return self._key("approval", approval_id)

    def approval_messages(self, approval_id: str) -> str:
        return self._key("approval_messages", approval_id)

    @property
    def approvals(self) -> str:
        return self._key("approvals")

    @property
    def approvals_pending(self) -> str:
        return self._key("approvals_pending")

    def agent_approvals(self, agent: str) -> str:
        return self._key("agent_approvals", agent)

    def mass_sends(self, agent: str) -> str:
        return self._key("mass_sends", agent)

    def mass_request(self, agent: str) -> str:
        return self._key("mass_request", agent)

    @property
    def audit_pending(self) -> str:
        return self._key("audit_pending")

    @property
    def audit_chain(self) -> str:
        return self._key("audit_chain")

    @property
    def audit_head(self) -> str:
        return self._key("audit_head")

    @property
    def audit_lock(self) -> str:
        return self._key("audit_lock")

    @property
    def audit_anchored(self) -> str:
        return self._key("audit_anchored")

    @property
    def signing_secret(self) -> str:
        return self._key("signing_secret")

    @property
    def store_marker(self) -> str:
        return self._key("store_marker")

    @property
    def store_wiped(self) -> str:
        return self._key("store_wiped")

    @property
    def store_clock(self) -> str:
        return self._key("store_clock")

    @property
    def rules_reloads(self) -> str:
        return self._key("rules_reloads")

    def activity(self, agent: str, hour: int) -> str:
        return self._key("activity", agent, hour)

    def reply_hold(self, scope: str) -> str:
        return self._key("reply_hold", scope)

    def reply_window(self, scope: str) -> str:
        return self._key("reply_window", scope)

    def reply_once(self, rule: str, scope: str) -> str:
        return self._key("reply_once", rule, scope)

    @property
    def blocklist_turn(self) -> str:
        return self._key("blocklist_turn")

    @property
    def blocklist_listed(self) -> str:
        return self._key("blocklist_listed")
