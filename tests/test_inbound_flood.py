"""Drill: an outsider floods and forges on the inbound listener; an on-call engineer stops sending.

A real `sendguard run` (the process is the point: the listener and the parser must load another
process, not the daemon's loop or GIL) delivers a backlog to the real aiosmtpd relay sink, while
flooders send ~1 MiB of multipart junk over several connections, on and off. Outbound rate is
measured from the relay's receive times in alternating quiet and flooded phases (medians, so a
burst of the other test worker's load on a shared machine cannot decide it), and /healthz latency
is sampled all along the flooded phases. Then the outsider forges bounces, a complaint and replies
about mail that really went out, without a valid reference: none may act. Last, an on-call
engineer runs `sendguard kill` from an empty directory: without the deployment's address and a
token it fails and creates nothing; with them it stops the delivery of the backlog.
"""

from __future__ import annotations

import http.client
import smtplib
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Api, Daemon, free_port, token_file, wait_until
from tests.flood import BOUNCE_DOMAIN, Flood
from tests.peers import SmtpSink
from tests.test_control import api_url, bare_env, sendguard, shell
from tests.test_drills import UNAPPROVED, _report
from tests.test_forged_mail import arf, dsn, reply

BACKLOG = 12_000  # about twice what is delivered before the kill, on this 2-core machine left idle
PHASE = 1.0  # seconds of each quiet or flooded phase
ROUNDS = 4


def _healthz_latencies(
    port: int, until: threading.Event, phase: list[str], found: dict[str, list[float]]
) -> None:
    """Latency of GET /healthz every 20 ms, on one keep-alive connection, kept under the name of the
    phase under way (`phase[0]`: "quiet", "flooded"); between phases ("") the answers are not kept,
    but the requests go on, so the connection is never idle long enough for the server to close
    it. A request that fails counts as taking forever."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        while not until.is_set():
            now = phase[0]
            started = time.perf_counter()
            try:
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()
                ok = False
            if now:
                found[now].append(time.perf_counter() - started if ok else float("inf"))
            until.wait(0.02)
    finally:
        connection.close()


def _rate(arrivals: list[float], start: float, end: float) -> float:
    return sum(1 for at in arrivals if start <= at < end) / (end - start)


@pytest.mark.drill
@pytest.mark.timeout(300)  # it may wait for the quick bench to finish measuring first
@pytest.mark.usefixtures("measuring_alone")
def test_an_outsider_neither_starves_nor_moves_sending_and_on_call_stops_it_from_a_bare_shell(
    make_daemon: Callable[..., Daemon], client_for: Callable[..., Api], smtp: SmtpSink, tmp_path: Path
) -> None:
    port = free_port()
    daemon = make_daemon(
        UNAPPROVED,
        process=True,
        bounce_domain=BOUNCE_DOMAIN,
        inbound_smtp=f"127.0.0.1:{port}",
        inbound_rate="100000",  # the flood is all from 127.0.0.1: its rate budget is tested elsewhere
    )
    agent = client_for(daemon, "agent", "sdr-bot")
    batch = {
        "from": "Alice <alice@acme.example>",
        "subject": "Quick question",
        "text": "Hello from the flood drill",
        "agent_version": "test-1",
        "recipients": [{"to": f"lead{n}@c{n % 97}.example"} for n in range(BACKLOG)],
    }
    admitted = [BACKLOG]

    def top_up() -> None:
        """Half a backlog more when less than a quarter is left; called as a phase is about to
        start, never in one. The waits before a phase are the machine's: on a busy one the first
        backlog ran out during them."""
        if admitted[0] - len(smtp.snapshot()) >= BACKLOG // 4:
            return
        recipients = [{"to": f"more{admitted[0] + n}@c{n % 97}.example"} for n in range(BACKLOG // 2)]
        more = agent.client.post("/v1/batches", json={**batch, "recipients": recipients}, timeout=120)
        assert more.status_code == 201, more.text[:500]
        admitted[0] += len(recipients)

    quiet: list[float] = []
    flooded: list[float] = []
    done, phase = threading.Event(), [""]
    latencies: dict[str, list[float]] = {"quiet": [], "flooded": []}
    # The flooders' interpreter starts while the backlog is admitted: started in the first quiet
    # phase, it took a core from the daemon there, at normal priority until its imports were done,
    # and the first flooded phase waited seconds for it, all at the daemon's full delivery speed.
    with Flood(port) as flood:
        submitted = agent.client.post("/v1/batches", json=batch, timeout=120)
        assert submitted.status_code == 201, submitted.text[:500]
        wait_until(lambda: len(smtp.snapshot()) >= 200, what="deliveries to be under way")
        print(f"\nbacklog of {BACKLOG} admitted in {submitted.elapsed.total_seconds():.1f}s")
        assert flood.ready.wait(60), "the flooders did not start"
        sampler = threading.Thread(target=_healthz_latencies, args=(daemon.port, done, phase, latencies))
        sampler.start()
        try:
            # Quiet and flooded phases alternate, quiet first and last: each flooded phase is set
            # against the quiet ones on either side, so a drift in the machine's other load cancels.
            for flooding in [False, True] * ROUNDS + [False]:
                if flooding:
                    flood.on.set()
                    # The flood is on once junk is being parsed: its first replies are back.
                    sent = flood.sent
                    wait_until(lambda sent=sent: flood.sent > sent, timeout=60, what="the flood to get going")
                else:  # quiet means quiet: the last flood's messages are all answered
                    wait_until(lambda: flood.sessions == 0, what="the flood to stop")
                top_up()
                start = time.time()
                phase[0] = "flooded" if flooding else "quiet"
                time.sleep(PHASE)  # the phase itself: its length is what the rate is measured over
                phase[0] = ""
                arrived = [r.at for r in smtp.snapshot()]
                assert len(arrived) < admitted[0], "the backlog ran out: the phase was not at full speed"
                (flooded if flooding else quiet).append(_rate(arrived, start, time.time()))
                flood.on.clear()
        finally:
            done.set()
            sampler.join(30)

    top_up()  # and some left for the kill to stop
    # /healthz's p99 under flood against its p99 in the quiet phases around it, on the same machine
    # in the same minute: parsing on the daemon's loop stalls it for a parse, ~a second a message.
    p99, quiet_p99 = (
        statistics.quantiles(latencies[name], n=100)[98] * 1000 for name in ("flooded", "quiet")
    )
    baseline, under_flood = statistics.median(quiet), statistics.median(flooded)
    kept = statistics.median(rate / statistics.mean(quiet[n : n + 2]) for n, rate in enumerate(flooded))
    print(
        f"\noutbound per second quiet {[round(r) for r in quiet]} median {baseline:.0f}; "
        f"flooded {[round(r) for r in flooded]} median {under_flood:.0f}; each flooded phase against "
        f"its quiet neighbours, median {kept:.0%}; /healthz p99 under flood {p99:.1f} ms over "
        f"{len(latencies['flooded'])} samples, quiet {quiet_p99:.1f} ms; junk messages sent {flood.sent}, "
        f"{flood.refused} of them refused"
    )
    _report(
        "inbound_flood",
        outbound_quiet_per_s=baseline,
        outbound_flooded_per_s=under_flood,
        outbound_kept=kept,
        healthz_p99_ms=p99,
        junk_messages=flood.sent,
    )
    # Each flooded phase began only once junk was answered; on a machine the other test
    # worker keeps busy, that may be one message a phase (it runs at idle priority), which is the
    # protection at work.
    assert flood.sent - flood.refused >= ROUNDS, "the flood did not get junk to the parser in every phase"
    assert kept >= 0.8
    # The stall it guards against is a parse on the daemon's loop, about a second a message; 300 ms
    # is under a third of that, and over what the test workers beside this one add on two cores
    # (+103 ms once in CI with a 100 ms bound).
    assert p99 < quiet_p99 + 300, f"/healthz p99 {p99:.0f} ms under flood, {quiet_p99:.0f} ms quiet"

    admin = client_for(daemon, "admin", "oncall")
    acted = _forge(port, admin, daemon, smtp)
    sent_after_kill = _kill_from_a_bare_shell(daemon, admin, smtp, tmp_path, admitted[0])
    print(
        f"\nforged mails that acted: {acted}; "
        f"messages at the relay after the kill returned: {sent_after_kill}"
    )
    _report("outsider_and_on_call", forged_mail_that_acted=acted, sent_after_kill=sent_after_kill)
    assert acted == 0
    assert sent_after_kill == 0


_COUNTED = (
    ("sendguard_bounces_total", {"type": "hard"}),
    ("sendguard_complaints_total", {}),
    ("sendguard_unsubscribes_total", {}),
    *(("sendguard_replies_total", {"sentiment": s}) for s in ("positive", "neutral", "negative", "abusive")),
)


def _forge(port: int, admin: Api, daemon: Daemon, smtp: SmtpSink) -> int:
    """Forged mail about messages that really went out, without a valid reference, on the
    listener; how many of them moved a suppression, a trip, a signal count or a message."""
    out = smtp.snapshot()[:3]
    ids = [str(r.message_id).strip("<>").partition(".sg@")[0] for r in out]
    recipients = [r.rcpt_tos[0] for r in out]
    forged = [
        # The unsigned bounce address of earlier versions, naming its recipient and two more.
        (f"bounces+{ids[0]}@{BOUNCE_DOMAIN}", dsn([recipients[0], recipients[1], "victim@third.example"])),
        # A DSN returning a real Message-ID, but naming an address that message did not go to.
        (f"fbl@{BOUNCE_DOMAIN}", dsn([recipients[2]], message_id=str(out[0].message_id))),
        # A complaint about a real recipient with no reference at all.
        (f"fbl@{BOUNCE_DOMAIN}", arf(recipients[1])),
        # A reply that only claims to be from a recipient, and one from a stranger naming a message.
        (f"fbl@{BOUNCE_DOMAIN}", reply(recipients[0])),
        (f"fbl@{BOUNCE_DOMAIN}", reply("victim@third.example", in_reply_to=str(out[1].message_id))),
    ]

    def state() -> tuple[object, ...]:
        scraped = daemon.samples()
        statuses = [admin.status(message_id)["status"] for message_id in ids]
        return (
            admin.client.get("/v1/suppressions").json(),
            admin.client.get("/v1/safe-mode").json(),
            [scraped.get((name, frozenset(labels.items()))) for name, labels in _COUNTED],
            statuses,
        )

    before, unreferenced = state(), daemon.metric("sendguard_inbound_messages_total", kind="unreferenced")
    for envelope, raw in forged:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.ehlo()
            client.mail("")
            client.rcpt(envelope)
            code, text = client.data(raw)
        assert (code, text.decode()[:24]) == (250, "2.0.0 kept for inspectio"), text
    after = state()
    kept = daemon.metric("sendguard_inbound_messages_total", kind="unreferenced")
    assert kept == (unreferenced or 0) + len(forged), "each forgery is kept for a person and counted"
    return sum(1 for was, now in zip(before, after, strict=True) if was != now)


def _kill_from_a_bare_shell(daemon: Daemon, admin: Api, smtp: SmtpSink, tmp_path: Path, admitted: int) -> int:
    """`sendguard kill` as on-call runs it from an empty directory, `admitted` messages submitted;
    messages at the relay after it returned (measured from the relay's receive times, a moment
    after the answer)."""
    here = shell(tmp_path)
    lost = sendguard(here, bare_env(), "kill", "--reason", "outsider drill")
    assert lost.returncode == 2 and "no token for the sendguard API" in lost.stderr, lost
    assert list(here.iterdir()) == [], "a failed kill left something behind"
    assert admin.client.get("/v1/safe-mode").json() == [], "a failed kill stopped something"

    env = bare_env(api_url=api_url(daemon), token_file=str(token_file(tmp_path, admin.token)))
    killed = sendguard(here, env, "kill", "--reason", "outsider drill")
    returned = time.time()
    assert killed.returncode == 0, killed.stderr
    assert killed.stdout.strip() == "global: tripped (outsider drill)"
    time.sleep(1.0)  # a second of relay time after the kill, in which nothing may arrive
    received = smtp.snapshot()
    assert len(received) < admitted, "the backlog ran out before the kill: it stopped nothing"
    return sum(1 for message in received if message.at > returned)
