"""The audit trail, suppressions and break-glass in a real Chromium, offline.

An auditor reads and verifies the trail; an admin's console changes need an elevation that a
second admin granted, and every change under it names its ticket in the trail.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Browser

from sendguard.governance.break_glass import WAIT_MS, BreakGlassRefused, Elevation, duration_minutes
from tests.browser import Offline
from tests.conftest import Api, Daemon, wait_until
from tests.test_console import _listen

ClientFor = Callable[..., Api]
RULES = """
[ingress]
recipient_cooldown = "0s"
"""
# A new sending domain's warm-up: 5 the first day, then 2 more a day up to 40.
RAMP = """
[[ramp]]
scope = "sender_domain"
match = "acme.example"
start = 5
step = 2
period = "1d"
ceiling = 40
"""


def test_an_auditor_filters_the_trail_by_agent_and_verifies_it_but_sees_no_suppressions(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, chromium: Browser
) -> None:
    daemon = make_daemon(RULES)
    sdr = client_for(daemon, "agent", "sdr-bot").send("lead1@customer.example")
    client_for(daemon, "agent", "list-bot").send("lead2@customer.example", segment="smb")
    auditor_api = client_for(daemon, "auditor", "ada")
    wait_until(lambda: auditor_api.audit(agent="list-bot"), what="both submissions to be chained")
    base = _listen(daemon)

    ada = Offline(chromium, base)
    ada.sign_in(auditor_api.token)
    page = ada.page
    page.click("nav >> text=Audit")
    page.fill("input[name=agent]", "sdr-bot")
    page.click("button:text-is('Filter')")
    page.wait_for_url("**agent=sdr-bot**")  # the filtered page, not the whole trail still shown
    rows = page.locator("table.audit tbody tr")
    assert rows.count() >= 1
    shown = page.inner_text("table.audit")
    assert sdr["id"] in shown and "submission.decided" in shown and "list-bot" not in shown
    page.click("text=Verify the trail now")
    verified = page.inner_text(".verification")
    assert "the chain is intact" in verified and "audit.anchor" in verified, verified
    assert page.input_value("input[name=agent]") == "sdr-bot"  # the filter survives verifying
    ada.shoot("audit")

    page.goto("/ui/suppressions")
    assert "This page is for admin" in page.inner_text("[role=alert]")
    assert "Suppressions" not in page.inner_text("nav")
    assert ada.elsewhere == []
    ada.close()


def _break_glass_kinds(reader: Api) -> list[str]:
    return [
        e["kind"].removeprefix("break_glass.") for e in reader.audit() if e["kind"].startswith("break_glass.")
    ]


def _submit(browser: Offline, button: str) -> str:
    browser.page.click(f"button:text-is('{button}')")
    return browser.page.inner_text("main")


def test_an_admin_changes_suppressions_only_under_break_glass_granted_by_another_admin(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, chromium: Browser
) -> None:
    daemon = make_daemon(RULES)
    base = _listen(daemon)
    alice_api = client_for(daemon, "admin", "alice")
    alice, bob = Offline(chromium, base), Offline(chromium, base)
    alice.sign_in(alice_api.token, "/ui/suppressions")
    bob.sign_in(client_for(daemon, "admin", "bob").token, "/ui/break-glass")

    # Without an elevation, an admin's form is refused, saying why.
    alice.page.fill("textarea[name=entries]", "blocked.example")
    refused = _submit(alice, "Suppress")
    assert "admin actions need break-glass" in refused and "a second admin has granted" in refused

    # Alice asks; her own grant is refused; Bob's is taken.
    alice.page.goto("/ui/break-glass")
    alice.page.fill("input[name=ticket]", "INC-1234")
    alice.page.fill("textarea[name=reason]", "a customer's domain bounces everything")
    alice.page.fill("input[name=duration]", "90m")
    _submit(alice, "Ask a second admin")
    assert "from 1m to 60m" in alice.page.inner_text("[role=alert]")
    alice.page.fill("input[name=ticket]", "INC-1234")
    alice.page.fill("textarea[name=reason]", "a customer's domain bounces everything")
    alice.page.fill("input[name=duration]", "15m")
    alice.page.click("button:text-is('Ask a second admin')")
    assert alice.page.locator("button[name=grant]").count() == 0  # nobody is offered their own
    elevation_id = alice.page.locator("button[name=end]").first.get_attribute("value")
    assert elevation_id
    forged = alice.page.request.post(
        f"/ui/break-glass/{elevation_id}/grant",
        form={"csrf": alice.page.locator("input[name=csrf]").first.input_value()},
    )
    assert forged.status == 403 and "cannot grant your own" in forged.text()
    bob.page.reload()
    bob.page.click(f"button[name=grant][value='{elevation_id}']")
    assert "No request is waiting" in bob.page.inner_text("main")

    # Under the elevation: the banner on every page, and the changes go through.
    alice.page.goto("/ui/suppressions")
    banner = alice.page.inner_text(".break-glass")
    alice.shoot("break-glass-banner")
    assert "INC-1234" in banner and "granted by bob" in banner and re.search(r"ends in 1[45] min", banner)
    # Granted to the token that asked: another token minted in alice's name is not raised by it.
    other_alice = Offline(chromium, base)
    other_alice.sign_in(client_for(daemon, "admin", "alice").token, "/ui/suppressions")
    assert other_alice.page.locator(".break-glass").count() == 0
    other_alice.page.fill("textarea[name=entries]", "other.example")
    assert "admin actions need break-glass" in _submit(other_alice, "Suppress")
    other_alice.close()
    alice.page.fill("textarea[name=entries]", "blocked.example\nBob+Q4@Other.example")
    assert "Suppressed 2 new of 2" in _submit(alice, "Suppress")
    alice.page.click("a[href='/ui/suppressions/lift?entry=blocked.example']")
    assert "Lift the suppression of blocked.example?" in alice.page.inner_text("h1")
    assert "Lifted the suppression of blocked.example" in _submit(alice, "Lift it")
    assert alice_api.client.get("/v1/suppressions").json()["domains"] == []

    marker = f"admin:alice (break-glass {elevation_id} INC-1234)"
    for kind in ("suppression.added", "suppression.lifted"):
        entries = wait_until(lambda kind=kind: alice_api.audit(kind=kind), what=f"{kind} to be chained")
        assert [entry["actor"] for entry in entries] == [marker]
    alice.page.goto("/ui/audit?kind=suppression.lifted")
    assert marker in alice.page.inner_text("table.audit .marker")

    # Bob ends it early; Alice's next admin form is refused again.
    bob.page.goto("/ui/break-glass")
    bob.page.click(f"button[name=end][value='{elevation_id}']")
    alice.page.goto("/ui/suppressions")
    assert alice.page.locator(".break-glass").count() == 0
    alice.page.fill("textarea[name=entries]", "again.example")
    assert "admin actions need break-glass" in _submit(alice, "Suppress")
    # Asked, refused to herself, granted, ended: and each admin form tried without it.
    # Refused: alice alone, her self-grant, the other alice token, alice after the end.
    expected = ["refused", "requested", "refused", "granted", "refused", "ended", "refused"]
    wait_until(
        lambda: _break_glass_kinds(alice_api) == expected, what="the break-glass entries to be chained"
    )
    self_grant = alice_api.audit(kind="break_glass.refused")[1]
    assert self_grant["actor"] == "admin:alice" and "second admin" in self_grant["fields"]["why"]
    assert alice.elsewhere == [] and bob.elsewhere == []
    alice.close()
    bob.close()


def test_an_elevation_ends_by_the_clock_and_lasts_whole_minutes_up_to_an_hour() -> None:
    """What `active()` checks at every use: time alone, whatever the Redis keys' TTLs still hold."""
    granted = Elevation("1a2b3c4d", "alice", "INC-1", "why", 1, requested=0, granted_by="bob", expires=60_000)
    assert granted.state(59_999) == "active" and granted.state(60_000) == "expired"
    waiting = Elevation("1a2b3c4d", "alice", "INC-1", "why", 1, requested=0)
    assert waiting.state(WAIT_MS - 1) == "waiting" and waiting.state(WAIT_MS) == "lapsed"
    assert [duration_minutes(text) for text in ("1m", "15m", "1h")] == [1, 15, 60]
    for wrong in ("61m", "90s", "30s", "15", ""):
        with pytest.raises(BreakGlassRefused, match=r"[Dd]uration"):
            duration_minutes(wrong)


def test_an_auditor_reviews_the_register_with_each_agents_last_day_and_what_it_lacks(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, chromium: Browser
) -> None:
    daemon = make_daemon(RULES + RAMP)
    agent = client_for(daemon, "agent", "sdr-bot")
    sent = agent.send("ann@customer.example")["id"]
    assert agent.send("info@customer.example")["status"] == "rejected"
    agent.wait_status(sent, "sent")
    base = _listen(daemon)
    ada = Offline(chromium, base)
    ada.sign_in(client_for(daemon, "auditor", "ada").token, "/ui/agents")
    ada.page.click("nav >> text=Agents")
    sdr = ada.page.locator("article.agent", has_text="sdr-bot").inner_text()
    assert "production" in sdr and "Owner\nsales" in sdr.replace("\t", "\n")
    assert re.search(r"Sent\s+1\b", sdr) and re.search(r"Rejected\s+1\b", sdr) and "role_account" in sdr
    assert "rollback" in ada.page.inner_text("article.agent:has-text('sdr-bot') [role=alert]")
    ramp_row = ada.page.locator("article.agent", has_text="sdr-bot").locator("table.ramps tbody tr")
    assert re.fullmatch(
        r"sender_domain:acme\.example\s+5 per 86400 s\s+1\s+40\s+\d{4}-.*UTC", ramp_row.inner_text()
    )
    ada.shoot("agents")
    dana = Offline(chromium, base)
    dana.sign_in(client_for(daemon, "approver", "dana", "--group", "ops").token, "/ui/agents")
    assert "This page is for operator, admin, auditor" in dana.page.inner_text("[role=alert]")
    for browser in (ada, dana):
        assert browser.elsewhere == []
        browser.close()
