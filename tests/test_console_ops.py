"""The console's safe-mode and messages pages in a real Chromium, offline: trip, hold, resume, find."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import redis.asyncio as aioredis
from playwright.sync_api import Browser

from sendguard.http.console.messages import Found, Query, search
from sendguard.state.keys import Keys
from sendguard.state.store import Store
from tests.browser import Offline
from tests.conftest import Api, Daemon, LoopThread, wait_until
from tests.peers import SmtpSink
from tests.test_console import _listen

ClientFor = Callable[..., Api]
RULES = """
[ingress]
recipient_cooldown = "0s"
"""
HOSTILE_SUBJECT = 'Q4 offer <script>window.__pwned = "subject"</script>'


def _rows(browser: Offline, table: str) -> list[str]:
    return [row.inner_text() for row in browser.page.locator(f"table.{table} tbody tr").all()]


def _elevate(admin: Offline, granter: Offline, granter_token: str) -> None:
    """Break-glass for `admin`: asked for in the console, granted there by a second admin."""
    admin.page.goto("/ui/break-glass")
    admin.page.fill("input[name=ticket]", "INC-77")
    admin.page.fill("textarea[name=reason]", "a list went wrong at night")
    admin.page.fill("input[name=duration]", "15m")
    admin.page.click("button:text-is('Ask a second admin')")
    elevation_id = admin.page.locator("button[name=end]").first.get_attribute("value")
    granter.sign_in(granter_token, "/ui/break-glass")
    granter.page.click(f"button[name=grant][value='{elevation_id}']")
    granter.close()


def test_an_operator_trips_a_segment_after_confirming_and_only_an_admin_resumes_it(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, chromium: Browser
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = [
        agent.send(f"later{i}@customer.example", segment="seg-a", send_at=later)["id"] for i in (1, 2)
    ]
    agent.send("other@customer.example", segment="seg-b", send_at=later)
    base = _listen(daemon)

    omar_api = client_for(daemon, "operator", "omar")
    omar = Offline(chromium, base)
    omar.sign_in(omar_api.token, "/ui/safe-mode")
    omar.page.fill("form.trip input[name=scope]", "segment:seg-a")
    omar.page.fill("form.trip input[name=reason]", "the list looks wrong")
    omar.page.click("form.trip button")
    consequence = omar.page.inner_text(".consequence")
    assert "2 messages in scope segment:seg-a will be held" in consequence
    assert "nothing in it is sent until an admin resumes it" in consequence
    assert omar_api.client.get("/v1/safe-mode").json() == []  # the first step changes nothing
    omar.page.click("form.confirm button")
    now = [agent.send(f"lead{i}@customer.example", segment="seg-a")["id"] for i in (1, 2)]
    assert {agent.status(m)["status"] for m in now} == {"held"}
    wait_until(lambda: {agent.status(m)["status"] for m in scheduled} == {"held"}, what="the trip's sweep")
    omar.page.reload()
    [trip] = _rows(omar, "trips")
    assert "segment:seg-a" in trip and "manual" in trip and "operator:omar" in trip
    assert omar.page.inner_text("table.trips td.held") == "4"
    omar.shoot("safe-mode")
    assert omar.page.locator("form.resume").count() == 0 and "Only an admin resumes" in omar.page.inner_text(
        "main"
    )
    [cookie] = [c for c in omar.context.cookies() if c["name"] == "sg_session"]
    csrf = omar.page.get_attribute("form.trip input[name=csrf]", "value")
    with httpx.Client(base_url=base, cookies={"sg_session": cookie["value"]}) as forged:
        refused = forged.post(
            "/ui/safe-mode/resume", data={"csrf": csrf, "scope": "segment:seg-a", "reason": "me"}
        )
    assert refused.status_code == 403 and "This page is for admin" in refused.text
    assert agent.status(now[0])["status"] == "held"

    sam = Offline(chromium, base)
    sam.sign_in(client_for(daemon, "admin", "sam").token, "/ui/safe-mode")
    sam.page.fill("form.resume input[name=reason]", "bad rows removed")
    sam.page.click("form.resume button")
    assert "admin actions need break-glass" in sam.page.inner_text("[role=alert]")
    _elevate(sam, Offline(chromium, base), client_for(daemon, "admin", "tess").token)
    sam.page.goto("/ui/safe-mode")
    sam.page.fill("form.resume input[name=reason]", "bad rows removed")
    sam.page.click("form.resume button")
    assert "Nothing is in safe mode" in sam.page.inner_text("main")
    for message_id in now:
        agent.wait_status(message_id, "sent")
    assert {r.rcpt_tos[0] for r in smtp.snapshot()} == {"lead1@customer.example", "lead2@customer.example"}
    assert {agent.status(m)["status"] for m in scheduled} == {"queued"}  # back for their send_at

    def history() -> list[str]:
        sam.page.reload()
        return _rows(sam, "history")

    resumed, tripped = wait_until(lambda: len(found := history()) == 2 and found, what="the history")
    assert (
        "resumed" in resumed and "admin:sam (break-glass" in resumed and "bad rows removed (4 held" in resumed
    )
    assert "tripped" in tripped and "operator:omar" in tripped and "the list looks wrong" in tripped
    for browser in (omar, sam):
        assert browser.elsewhere == []
        browser.close()


def test_messages_are_found_by_recipient_and_held_scope_and_a_timeline_shows_them_as_text(
    make_daemon: Callable[..., Daemon],
    client_for: ClientFor,
    chromium: Browser,
    loop_thread: LoopThread,
    redis_url: str,
    prefix: str,
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "sam")
    tripped = admin.client.post("/v1/safe-mode", json={"scope": "segment:seg-h", "reason": "check"})
    assert tripped.status_code == 201, tripped.text
    sent = agent.send("Alice@customer.example", subject=HOSTILE_SUBJECT)["id"]
    other = agent.send("bob@customer.example")["id"]
    held = [
        agent.send(to, segment="seg-h")["id"] for to in ("alice+x@customer.example", "carol@customer.example")
    ]
    agent.wait_status(sent, "sent")
    agent.wait_status(other, "sent")
    for message_id in held:  # held once a daemon claims them: the scope's set lists them from then
        agent.wait_status(message_id, "held")
    base = _listen(daemon)

    omar = Offline(chromium, base)
    omar.sign_in(client_for(daemon, "operator", "omar").token, "/ui/messages")
    omar.page.fill("input[name=recipient]", "alice@customer.example")
    omar.page.click("form.search button")
    found = " ".join(_rows(omar, "results"))
    assert sent in found and held[0] in found and other not in found and held[1] not in found
    omar.page.goto("/ui/messages?held_in=segment:seg-h")
    found = " ".join(_rows(omar, "results"))
    assert set(held) <= set(found.split()) and sent not in found
    assert "held in segment:seg-h" in found
    omar.page.goto("/ui/messages?status=nothing")
    assert "Status must be one of" in omar.page.inner_text("[role=alert]")
    omar.page.goto("/ui/messages?waiting_for=nothing")  # a scope kind, send_window or mass_send
    assert "send_window, mass_send); 'nothing' is not" in omar.page.inner_text("[role=alert]")
    omar.page.goto("/ui/messages?waiting_for=mass_send")
    assert omar.page.locator("[role=alert]").count() == 0

    def timeline_with_its_delivery() -> list[str]:
        """The timeline's rows, once the trail has chained the delivery's entry (empty before)."""
        omar.page.goto(f"/ui/messages/{sent}")
        rows = _rows(omar, "timeline")
        return rows if any("delivery.outcome" in row for row in rows) else []

    rows = wait_until(timeline_with_its_delivery, what="the delivery's audit entry")
    times = [
        int(t)
        for t in omar.page.locator("table.timeline tbody tr").evaluate_all("rs => rs.map(r => r.dataset.at)")
    ]
    assert times == sorted(times)
    order = [
        next(i for i, row in enumerate(rows) if marker in row)
        for marker in ("submission.decided", "queued", "sending (attempt)", "sent (relay_accepted)")
    ]
    assert order == sorted(order)
    smtp_reply = next(row for row in rows if "delivery.outcome" in row)
    assert "SMTP reply" in smtp_reply and "250" in smtp_reply
    assert "<script>" in omar.page.inner_text(".subject")
    omar.shoot("message-timeline")
    assert omar.page.evaluate("window.__pwned") is None and omar.elsewhere == []
    omar.close()

    async def searched(query: Query, cap: int) -> Found:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await search(Store(client, Keys(prefix)), query, cap)
        finally:
            await client.aclose()

    # A search reads at most its cap of candidates, and says when it stopped there.
    capped = loop_thread.run(searched(Query(held_in="segment:seg-h"), cap=1))
    assert (capped.examined, capped.matched, capped.complete) == (1, 1, False)
    whole = loop_thread.run(searched(Query(held_in="segment:seg-h"), cap=100))
    assert (whole.examined, {m.id for m in whole.shown}, whole.complete) == (2, set(held), True)
    # The walk's cap counts every key it passes, and this Redis holds the other tests' keys too:
    # a cap above them all walks the whole keyspace.
    scanned = loop_thread.run(searched(Query(agent="sdr-bot", segment="seg-h"), cap=10_000_000))
    assert {m.id for m in scanned.shown} == set(held) and scanned.complete
