"""The MX check's time is bounded: an agent chooses its recipients' domains, so domains whose DNS
never answers must not hold a request (or admission) for long. Against the loopback DNS server,
whose `slow.example` zone drops every query, through a real resolver with a 1 s timeout.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from sendguard.intake.mx import (
    BUDGET_TIMEOUTS,
    CONCURRENCY,
    LOOKUPS_AT_ONCE,
    TEMPORARY_TIMEOUTS,
    MailHost,
    MxChecker,
)
from tests.conftest import Api, Daemon, message, wait_until
from tests.peers import DnsServer

ClientFor = Callable[..., Api]
RULES = """
[ingress]
mx_check = "enforce"
recipient_cooldown = "0s"

[safe_mode]
max_denials = 1000000

[approvals]
mass_send_threshold = 1000000
"""
MARGIN = 1.0  # seconds for everything but DNS in a request of a few hundred recipients

ANSWERED = {  # answered domains, decided exactly as before, whatever shares their batch
    "bob@customer.example": ("queued", []),
    "bob@aonly.example": ("queued", []),
    "bob@missing.example": ("rejected", ["domain_not_found"]),
    "bob@nullmx.example": ("rejected", ["null_mx"]),
}


def post_batch(api: Api, addresses: list[str]) -> tuple[float, dict[str, dict[str, Any]]]:
    """How long the batch took, and each recipient's row by address."""
    body = message("x@c.example")
    del body["to"]
    body["recipients"] = [{"to": address} for address in addresses]
    started = time.perf_counter()
    response = api.client.post("/v1/batches", json=body, timeout=120)
    wall = time.perf_counter() - started
    assert response.status_code == 201, response.text
    answer = response.json()
    return wall, {row["to"]: row for row in answer["accepted"] + answer["rejected"]}


def codes(row: dict[str, Any]) -> list[str]:
    return [reason["code"] for reason in row["reasons"]]


def timeout_of(daemon: Daemon) -> float:
    return float(daemon.env["SENDGUARD_DNS_TIMEOUT"])


def test_a_batch_looks_each_unanswered_domain_up_once(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, dns_server: DnsServer
) -> None:
    """40 recipients at 4 unanswered domains wait one timeout, not one per recipient: each domain
    is asked once, and its timeout defers every recipient there."""
    daemon = make_daemon(RULES)
    api = client_for(daemon, "agent", "sdr-bot")
    run = secrets.token_hex(3)
    domains = [f"d{k}-{run}.slow.example" for k in range(4)]
    slow = [f"r{i}@{domain}" for i in range(10) for domain in domains]
    wall, rows = post_batch(api, [*slow[:20], *ANSWERED, *slow[20:]])
    asked = {domain: dns_server.queries_for(domain, "MX") for domain in domains}
    print("wall", round(wall, 2), "s; MX queries", asked)
    assert wall < timeout_of(daemon) + MARGIN
    assert set(asked.values()) == {1}
    for address in slow:
        assert (rows[address]["status"], codes(rows[address])) == ("deferred", ["dns_temporary"])
    assert {address: (rows[address]["status"], codes(rows[address])) for address in ANSWERED} == ANSWERED


def test_a_batch_of_many_unanswered_domains_waits_no_longer_than_its_budget(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, dns_server: DnsServer
) -> None:
    """Six rounds of look-ups that all time out would take six timeouts; the request's DNS budget
    (two) ends them, and the recipients not yet decided are deferred, saying so. Answered domains
    looked up first, or known from an earlier request, are still decided exactly."""
    daemon = make_daemon(RULES)
    api = client_for(daemon, "agent", "sdr-bot")
    assert api.send("ann@other.example")["status"] == "queued"  # other.example is now cached
    timeout = timeout_of(daemon)
    budget = BUDGET_TIMEOUTS * timeout
    run = secrets.token_hex(3)
    slow = [f"bob@s{i}-{run}.slow.example" for i in range(6 * CONCURRENCY)]
    wall, rows = post_batch(api, [*ANSWERED, *slow, "bob@other.example"])
    spent = [address for address in slow if "DNS time" in rows[address]["reasons"][0]["detail"]]
    print("wall", round(wall, 2), "s for", len(slow), "unanswered domains;", len(spent), "past the budget")
    assert wall < budget + 2 * MARGIN  # admitting 389 recipients takes some; 6 timeouts without a budget
    for address in slow:
        assert (rows[address]["status"], codes(rows[address])) == ("deferred", ["dns_temporary"])
    assert len(spent) >= len(slow) - 2 * CONCURRENCY
    assert {address: (rows[address]["status"], codes(rows[address])) for address in ANSWERED} == ANSWERED
    assert (rows["bob@other.example"]["status"], codes(rows["bob@other.example"])) == ("queued", [])


def test_a_temporary_failure_is_remembered_briefly_across_requests(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, dns_server: DnsServer
) -> None:
    """Requests that follow a timeout do not each wait it again, and one that follows a SERVFAIL
    does not ask again; after a few timeouts the domain is asked again, and decided."""
    daemon = make_daemon(RULES)
    api = client_for(daemon, "agent", "sdr-bot")
    timeout = timeout_of(daemon)
    run = secrets.token_hex(3)

    unanswered = f"once-{run}.slow.example"
    first = time.perf_counter()
    assert api.send(f"a@{unanswered}")["status"] == "deferred"
    first_wall = time.perf_counter() - first
    walls = []
    for i in range(5):
        started = time.perf_counter()
        again = api.send(f"b{i}@{unanswered}")
        walls.append(time.perf_counter() - started)
        assert [reason["code"] for reason in again["reasons"]] == ["dns_temporary"]
    print("first", round(first_wall, 2), "s; then", [round(wall, 2) for wall in walls])
    assert max(walls) < timeout / 2

    flaky = f"flaky-{run}.example"
    dns_server.add_mx_domain(flaky)
    dns_server.set_servfail(flaky, True)
    assert api.send(f"a@{flaky}")["status"] == "deferred"
    asked = dns_server.queries_for(flaky, "MX")
    dns_server.set_servfail(flaky, False)
    healed = time.monotonic()
    assert api.send(f"b@{flaky}")["status"] == "deferred"
    assert dns_server.queries_for(flaky, "MX") == asked

    def verdict() -> str:
        checked = api.client.post("/v1/recipients/check", json={"to": [f"c@{flaky}"]})
        return str(checked.json()["recipients"][0]["verdict"])

    wait_until(
        lambda: verdict() == "would_queue",
        timeout=TEMPORARY_TIMEOUTS * timeout + MARGIN,
        what=f"{flaky} to be asked again",
    )
    print("SERVFAIL remembered for", round(time.monotonic() - healed, 2), "s")


async def test_the_daemon_looks_up_no_more_than_its_limit_at_once_whatever_the_requests(
    dns_server: DnsServer,
) -> None:
    """Each request is held to its own 64, but thirty at once held 1,944 sockets open (past a common
    limit of open files, where the audit chainer's anchor file then failed): the daemon's look-ups,
    all requests together, are LOOKUPS_AT_ONCE at a time. Here requests are `check_many` calls on
    the daemon's one checker, all at once."""
    timeout = 1.0
    checker = MxChecker([dns_server.nameserver], timeout)
    run = secrets.token_hex(3)
    requests = 2 * LOOKUPS_AT_ONCE // CONCURRENCY
    domains = [[f"c{n}x{k}-{run}.slow.example" for k in range(CONCURRENCY)] for n in range(requests)]
    before = _open_files()
    calls = asyncio.ensure_future(asyncio.gather(*(checker.check_many(names) for names in domains)))
    # No look-up is answered, so each started holds its socket open for a whole timeout: the most
    # open at any moment is how many the daemon lets run at once. Sampled until all are given up,
    # not for a fixed time: on a busy machine, starting them all took longer than a timeout.
    seen = [0]
    while not calls.done():
        seen.append(_open_files() - before)
        await asyncio.sleep(0.02)
    sockets = max(seen)
    verdicts = await calls
    print(f"{requests} requests of {CONCURRENCY} unanswered domains: at most {sockets} sockets open at once")
    assert LOOKUPS_AT_ONCE - 8 <= sockets <= LOOKUPS_AT_ONCE + 8  # a few come and go besides
    assert all(set(found.values()) <= {MailHost.TEMPORARY} for found in verdicts)


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))
