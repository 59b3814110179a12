"""A new approval request reaches the approvers' webhook at least once, and once only.

Whoever opens a request announces it at once, in memory; the ways that announcement is lost are
played for real: a reply Redis drops after running the script that opened the request (the agent's
retry only joins or looks it up), and a webhook that refuses every attempt. The maintenance sweep
of any daemon then announces it from Redis, once, and never again after the webhook took it.

A request is taken up by the sweep once the notifier's whole retry budget (about half a minute)
has passed since it opened; the tests age a request by an hour by rewriting its `created`, rather
than waiting that half minute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis

from sendguard.governance.roles import Role
from sendguard.governance.tokens import Principal
from sendguard.parts import Runtime
from sendguard.state import scripts
from sendguard.state.keys import Keys
from tests.conftest import Api, Daemon, LoopThread, wait_until
from tests.peers import Webhook

ClientFor = Callable[..., Api]
RULES = """
[approvals]
mass_send_threshold = 2
"""


@pytest.fixture
def watcher(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _announced(webhook: Webhook) -> Counter[str]:
    """How many times the webhook took each request's `approval_requested`."""
    return Counter(
        body["sendguard"]["approval_id"]
        for body in webhook.bodies()
        if body["sendguard"]["event"] == "approval_requested"
    )


def _parts(daemon: Daemon) -> Runtime:
    """An in-process daemon's parts (pytest loads conftest under two names: no isinstance)."""
    parts: Runtime | None = getattr(daemon, "parts", None)
    assert parts is not None, "an in-process daemon, started"
    return parts


def _open_with_the_reply_lost(daemon: Daemon, watcher: redis.Redis, keys: Keys, batch: str) -> str:
    """Open a tier-2 request for a batch of three as the daemon does (its own `mass_count`, its
    approval_route script) and drop the reply: the daemon never learns of the request, so it
    announces nothing, as when the connection goes between the script and its answer."""
    parts = _parts(daemon)
    agent = parts.rules.agent("sdr-bot")
    assert agent is not None
    requester = Principal("lost-reply", Role.AGENT, "sdr-bot")
    counted = parts.approvals.mass_count(agent, {0: 3}, parts.rules, requester, batch)
    route = scripts.source("approval_route", keys)
    state, approval_id = watcher.eval(
        route, 2, keys.mass_sends("sdr-bot"), keys.mass_request("sdr-bot"), *counted.args
    )
    assert state == "new"
    return str(approval_id)


def _age(watcher: redis.Redis, keys: Keys, approval_id: str) -> None:
    """As if the request had opened an hour ago, longer than any post of it may take."""
    created = int(watcher.hget(keys.approval(approval_id), "created") or 0)
    watcher.hset(keys.approval(approval_id), "created", created - 3_600_000)


def _marked(watcher: redis.Redis, keys: Keys, approval_id: str) -> bool:
    return watcher.hget(keys.approval(approval_id), "announced") is not None


def _sweep(daemon: Daemon, loop_thread: LoopThread) -> int:
    """One more maintenance sweep of `daemon`'s, run by hand on its loop: how many it announced."""
    parts = _parts(daemon)
    return loop_thread.run(parts.approvals.announce_due())


def test_requests_whose_opening_replies_were_lost_are_announced_once_by_one_of_two_daemons(
    make_daemon: Callable[..., Daemon], loop_thread: LoopThread, watcher: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    with Webhook() as webhook:
        daemons = [make_daemon(RULES, notify_url=webhook.url) for _ in range(2)]
        opened = []
        for n in range(3):
            approval_id = _open_with_the_reply_lost(daemons[n % 2], watcher, keys, f"lost-{n}")
            assert _announced(webhook)[approval_id] == 0
            _age(watcher, keys, approval_id)
            # Both daemons sweep three times a second: one of them claims it and posts it.
            wait_until(
                lambda id=approval_id: _marked(watcher, keys, id), what=f"request {approval_id} announced"
            )
            opened.append(approval_id)
        # Each announcement after the first came from a sweep that read the ones before it, marked.
        assert [_sweep(daemon, loop_thread) for daemon in daemons] == [0, 0]
        assert _announced(webhook) == Counter(opened)
    for approval_id in opened:
        assert watcher.hget(keys.approval(approval_id), "status") == "pending"


@pytest.mark.parametrize("refused", [0, 4], ids=["taken-at-once", "refused-every-attempt"])
def test_a_request_is_announced_until_the_webhook_takes_it_and_then_never_again(
    make_daemon: Callable[..., Daemon],
    client_for: ClientFor,
    loop_thread: LoopThread,
    watcher: redis.Redis,
    prefix: str,
    refused: int,
) -> None:
    keys = Keys(prefix)
    with Webhook() as webhook:
        webhook.fail_first = refused
        daemon = make_daemon(RULES, notify_url=webhook.url)
        agent = client_for(daemon, "agent", "sdr-bot")
        response = agent.client.post(
            "/v1/batches",
            json={
                "from": "Alice <alice@acme.example>",
                "subject": "Quick question",
                "text": "Hello",
                "agent_version": "test-1",
                "recipients": [{"to": f"lead{i}@customer.example"} for i in range(3)],
            },
        )
        assert response.status_code == 201, response.text
        approval_id = response.json()["approval"]["id"]
        if refused:
            # The opening's own post gives up after its four attempts (1 + 2 + 4 s of back-off).
            wait_until(
                lambda: daemon.metric("sendguard_notifications_failed_total") == 1,
                what="the opening's post to give up",
            )
            assert webhook.attempts == refused and not _marked(watcher, keys, approval_id)
        else:
            wait_until(lambda: _marked(watcher, keys, approval_id), what="the opening's post taken")
        # Long past any post of it: the sweep posts it again only if the webhook never took it.
        _age(watcher, keys, approval_id)
        if refused:
            wait_until(lambda: _marked(watcher, keys, approval_id), what="the sweep's post taken")
        assert _sweep(daemon, loop_thread) == 0
        assert _announced(webhook) == Counter([approval_id])


def test_a_sweep_announces_a_batch_of_requests_at_most_and_the_rest_at_the_next(
    watcher: redis.Redis, prefix: str
) -> None:
    """However many requests wait unannounced (a webhook down for an hour, an agent that opened
    thousands), one sweep claims a batch of them, so the approvers' webhook gets them a sweep apart."""
    keys = Keys(prefix)
    for n in range(25):
        watcher.hset(
            keys.approval(f"r{n}"),
            mapping={"status": "pending", "created": "0", "tier": "1", "label": "l", "requested_by": "a"},
        )
        watcher.zadd(keys.approvals_pending, {f"r{n}": n})
    sweep = scripts.source("approval_announce", keys)
    lease_ms = 60_000
    first = watcher.eval(sweep, 1, keys.approvals_pending, lease_ms, 20)
    second = watcher.eval(sweep, 1, keys.approvals_pending, lease_ms, 20)
    assert (len(first), len(second)) == (20, 5)
    assert {row[0] for row in first + second} == {f"r{n}" for n in range(25)}  # each claimed once
