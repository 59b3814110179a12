"""The console in a real Chromium, offline: people sign in, read what a send would be, and decide."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from playwright.sync_api import Browser

from sendguard.http.console.diff import MAX_WORDS
from tests.browser import Offline
from tests.conftest import Api, Daemon, healthz_latencies, wait_until
from tests.peers import SmtpSink, Webhook

ClientFor = Callable[..., Api]
RULES = """
[ingress]
recipient_cooldown = "0s"

[approvals]
mass_send_threshold = 3
mass_send_window = "2s"
"""
HOSTILE_SUBJECT = 'Q4 offer <script>window.__pwned = "subject"</script>'
HOSTILE_HTML = (
    '<p>Hello</p><script>parent.__pwned = "script"</script>'
    '<img src="x" onerror="parent.__pwned = \'onerror\'">'
    '<img src="http://images.tracker.example/pixel.png">'
)


def _batch(agent: Api, campaign: str, subject: str, text: str, html: str, start: int) -> dict[str, Any]:
    response = agent.client.post(
        "/v1/batches",
        json={
            "from": "Alice <alice@acme.example>",
            "subject": subject,
            "text": text,
            "html": html,
            "campaign": campaign,
            "agent_version": "test-1",
            "recipients": [{"to": f"lead{start + i}@customer.example"} for i in range(3)],
        },
    )
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    assert answer["approval"] is not None and answer["approval"]["tier"] == 2
    return answer


def _listen(daemon: Daemon) -> str:
    daemon.listen()
    return f"http://127.0.0.1:{daemon.env['SENDGUARD_API_PORT']}"


def test_two_approvers_of_two_groups_release_a_mass_send_from_the_console_and_a_third_is_told_why(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, chromium: Browser
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    earlier_ops = client_for(daemon, "approver", "olga", "--group", "ops")
    earlier_legal = client_for(daemon, "approver", "lee", "--group", "legal")
    # An earlier send of the same campaign, approved through the API: what the diff compares with.
    earlier = _batch(agent, "q4", "Q4 offer for you", "Hi there,\nour Q4 offer is ready.", "<p>Hi</p>", 0)
    for approver in (earlier_ops, earlier_legal):
        decided = approver.client.post(
            f"/v1/approvals/{earlier['approval']['id']}/approve", json={"comment": "ok"}
        )
        assert decided.status_code == 200, decided.text
    headroom_until = decided.json()["headroom_until"]
    wait_until(lambda: time.time() > _epoch(headroom_until), what="the earlier approval's headroom to end")
    now = _batch(
        agent, "q4", HOSTILE_SUBJECT, "Hi there,\nour final Q4 offer is ready now.", HOSTILE_HTML, 10
    )
    request_id = now["approval"]["id"]
    page_of_request = f"/ui/approvals/{request_id}"
    base = _listen(daemon)

    dana = Offline(chromium, base)
    dana.sign_in(client_for(daemon, "approver", "dana", "--group", "sales").token)  # sdr-bot's owners
    page = dana.page
    page.click("text=Approvals")
    dana.shoot("approvals")
    row = page.locator("table.list tr", has_text="batch")
    assert "0 of 2" in row.first.inner_text()
    page.click(f"a[href='/ui/approvals/{request_id}']")
    assert "0 of 2 approvals" in page.inner_text("main")
    # The diff against the earlier approved send of campaign q4, word by word.
    assert page.locator(".diff ins", has_text="final").count() == 1
    assert page.locator(".diff ins", has_text="now.").count() == 1
    assert "Same rules version" in page.inner_text(".diff")
    dana.shoot("approval-request")
    # What agents wrote is text: the subject's <script> is shown, not run; the HTML part is in a
    # frame that runs nothing and loads nothing from elsewhere.
    assert "<script>" in page.inner_text(".sample")
    frame = page.frame_locator("iframe").first
    assert frame.locator("p", has_text="Hello").count() == 1
    assert page.locator("iframe").first.get_attribute("sandbox") == ""
    page.fill("textarea[name=comment]", "copy checked against the Q4 brief")
    page.click("button[value=approve]")
    assert "1 of 2 approvals" in page.inner_text("main")
    assert page.evaluate("window.__pwned") is None and dana.dialogs == []
    assert dana.elsewhere == [], "the console asked for something beyond the daemon"

    erin = Offline(chromium, base)
    erin.sign_in(client_for(daemon, "approver", "erin", "--group", "sales").token, page_of_request)
    erin.page.fill("textarea[name=comment]", "me too")
    erin.page.click("button[value=approve]")
    refusal = erin.page.inner_text("[role=alert]")
    erin.shoot("approval-refused")
    assert "group other than sales" in refusal and "sales owns this agent" in refusal
    assert "two different groups" in refusal
    assert "1 of 2 approvals" in erin.page.inner_text("main")

    finn = Offline(chromium, base)
    finn.sign_in(client_for(daemon, "approver", "finn", "--group", "ops").token, page_of_request)
    finn.page.fill("textarea[name=comment]", "fine by sales")
    finn.page.click("button[value=approve]")
    assert "approved" in finn.page.inner_text(".status")
    phone = Offline(chromium, base, phone=True)
    phone.context.add_cookies(finn.context.cookies())
    phone.page.goto(page_of_request)
    phone.shoot("approval-on-a-phone")
    phone.close()
    for row in now["accepted"]:
        agent.wait_status(row["id"], "sent")
    arrived = {r.rcpt_tos[0] for r in smtp.snapshot()}
    assert {row["to"] for row in now["accepted"]} <= arrived
    for browser in (dana, erin, finn):
        assert browser.elsewhere == [] and browser.page.evaluate("window.__pwned") is None
        browser.close()


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_form_without_its_csrf_code_or_from_another_site_is_refused(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, chromium: Browser
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    request_id = _batch(agent, "q4", "Hello", "Hello", "", 0)["approval"]["id"]
    base = _listen(daemon)
    dana = Offline(chromium, base)
    dana.sign_in(client_for(daemon, "approver", "dana", "--group", "ops").token)
    [cookie] = [c for c in dana.context.cookies() if c["name"] == "sg_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    with httpx.Client(base_url=base, cookies={"sg_session": cookie["value"]}) as stolen_form:
        target = f"/ui/approvals/{request_id}/decide"
        without = stolen_form.post(target, data={"verdict": "approve", "comment": "x"})
        wrong = stolen_form.post(target, data={"verdict": "approve", "comment": "x", "csrf": "guess"})
        page = stolen_form.get(f"/ui/approvals/{request_id}").text
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        elsewhere = stolen_form.post(
            target,
            data={"verdict": "approve", "comment": "x", "csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
    for refused in (without, wrong, elsewhere):
        assert refused.status_code == 403 and "text/html" in refused.headers["content-type"]
    assert "security code" in without.text and "another site" in elsewhere.text
    decisions = agent.client.get(f"/v1/approvals/{request_id}")  # agents may not read requests
    assert decisions.status_code == 403
    shown = client_for(daemon, "operator", "omar").client.get(f"/v1/approvals/{request_id}").json()
    assert shown["decisions"] == [] and shown["status"] == "pending"
    dana.close()


def test_sign_in_keeps_no_token_in_the_browser_refuses_agents_and_ends_with_the_token(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, mint: Callable[..., str], chromium: Browser
) -> None:
    daemon = make_daemon(RULES)
    base = _listen(daemon)
    robot = Offline(chromium, base)
    robot.sign_in(client_for(daemon, "agent", "sdr-bot").token)
    assert "Agent tokens cannot sign in" in robot.page.inner_text("[role=alert]")
    robot.page.goto("/ui/approvals")
    assert robot.page.url.startswith(f"{base}/ui/sign-in")
    robot.close()

    auditor_token = mint("auditor", "ana")
    ana = Offline(chromium, base)
    ana.sign_in(auditor_token, "/ui/approvals")
    assert "This page is for approver, operator, admin" in ana.page.inner_text("[role=alert]")
    stored = ana.page.evaluate(
        "JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie"
    )
    assert auditor_token not in stored and auditor_token.split("_", 2)[2] not in str(ana.context.cookies())
    daemon.cli("token", "revoke", auditor_token.split("_")[1])  # revoking ends the session at once
    ana.page.goto("/ui/")
    assert ana.page.url.startswith(f"{base}/ui/sign-in")
    ana.close()

    omar = Offline(chromium, base)
    omar.sign_in(mint("operator", "omar"))
    assert "Approvals" in omar.page.inner_text("nav")
    omar.page.click("text=Sign out")
    omar.page.goto("/ui/approvals")
    assert omar.page.url.startswith(f"{base}/ui/sign-in")
    assert omar.elsewhere == []
    omar.close()


def test_the_api_page_renders_with_the_network_cut_off(
    make_daemon: Callable[..., Daemon], chromium: Browser
) -> None:
    daemon = make_daemon(RULES)
    reader = Offline(chromium, _listen(daemon))
    reader.page.goto("/docs")
    reader.page.wait_for_selector(".opblock-summary-path", state="attached")
    shown = reader.page.inner_text("body")
    reader.shoot("api-docs")
    assert "/v1/messages" in shown and "Submit a message" in shown
    assert reader.elsewhere == [], "the API page asked for something beyond the daemon"
    reader.close()


def test_a_new_request_notifies_the_webhook_with_a_link_that_opens_its_page(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, chromium: Browser
) -> None:
    with Webhook() as webhook:
        daemon = make_daemon(RULES, notify_url=webhook.url)
        agent = client_for(daemon, "agent", "sdr-bot")
        request_id = _batch(agent, "q4", "Hello", "Hello", "", 0)["approval"]["id"]
        [told] = wait_until(
            lambda: [b for b in webhook.bodies() if b["sendguard"]["event"] == "approval_requested"],
            what="the approval_requested notification",
        )
    event = told["sendguard"]
    assert (event["approval_id"], event["tier"], event["requested_by"]) == (request_id, 2, "sdr-bot")
    assert event["url"] in told["text"] and "mass send" in told["text"]
    base = _listen(daemon)
    assert event["url"] == f"{base}/ui/approvals/{request_id}"
    dana = Offline(chromium, base)
    dana.sign_in(client_for(daemon, "approver", "dana", "--group", "ops").token, event["url"][len(base) :])
    assert dana.page.url == event["url"] and "0 of 2 approvals" in dana.page.inner_text("main")
    dana.close()


def _hidden(step: int, words: int) -> str:
    hidden = " ".join(f"w{(i * step) % 50}" for i in range(words))
    return f'<p>Hi, a quick note about our Q4 offer.</p><div style="display:none">{hidden} the-end</div>'


def test_an_agents_long_repetitive_html_does_not_hold_the_daemon_while_its_diff_is_shown(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    """The diff is built on the event loop, on text the agent chose (hidden in HTML, approvers see it
    rendered). Words repeated in a different order cost difflib's matcher seconds (1,500 words a side
    held /healthz for 9 s); the bit-parallel alignment of at most MAX_WORDS words a side costs
    milliseconds, and what lies beyond that is shown unmarked."""
    daemon = make_daemon(LONG_DIFF_RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    approvers = [
        client_for(daemon, "approver", n, "--group", g) for n, g in (("erin", "ops"), ("finn", "legal"))
    ]
    first = _hidden_batch(agent, "a", _hidden(1, 1500))
    for approver in approvers:
        assert (
            approver.client.post(f"/v1/approvals/{first}/approve", json={"comment": "ok"}).status_code == 200
        )
    second = _hidden_batch(agent, "b", _hidden(7, MAX_WORDS + 500))
    token = client_for(daemon, "approver", "gina", "--group", "risk").token
    with daemon.client() as browser:
        signed = browser.post(
            "/ui/sign-in", data={"token": token, "next": "/ui/"}, headers={"Origin": daemon.base}
        )
        assert signed.status_code in (200, 303), signed.text[:300]

        started = time.perf_counter()
        with healthz_latencies(daemon) as gaps:
            page = browser.get(f"/ui/approvals/{second}", timeout=120)
            took = time.perf_counter() - started
    print(
        f"approval page {took:.2f} s; /healthz answered {len(gaps)} times, the slowest in {max(gaps):.3f} s"
    )
    assert page.status_code == 200, page.text[:300]
    assert took < 1 and max(gaps) < 0.5, (took, sorted(gaps)[-3:])
    shown = page.text.split('<div class="diff">')[1]
    assert f"only the first {MAX_WORDS:,} words of each version are compared" in shown
    assert "the rest of this one follows, unmarked" in shown and "the-end" in shown  # the agent's last word


LONG_DIFF_RULES = """
[ingress]
recipient_cooldown = "0s"

[approvals]
mass_send_threshold = 6
"""


def _hidden_batch(agent: Api, tag: str, html: str) -> str:
    body = {
        "from": "Alice <alice@acme.example>",
        "subject": "Q4 offer",
        "text": "Hi, a quick note about our Q4 offer.",
        "html": html,
        "campaign": "q4",
        "agent_version": "test-1",
        "recipients": [{"to": f"{tag}{i}@customer.example"} for i in range(12)],
    }
    answer = agent.client.post("/v1/batches", json=body)
    assert answer.status_code == 201, answer.text
    approval: dict[str, Any] = answer.json()["approval"]
    assert approval is not None
    return str(approval["id"])
