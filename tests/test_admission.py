"""One admission pipeline: a single message and a batch of one get the same decision, and a refusal
counts once per submission towards the agent's `max_denials`, whichever route it came by."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import Api, Daemon, message

ClientFor = Callable[..., Api]
RULES = """
[ingress]
recipient_cooldown = "0s"

[approvals]
shared_inboxes = ["team@acme.example"]
"""


def batch_of(body: dict[str, Any], *recipients: str, **overrides: Any) -> dict[str, Any]:
    """The batch form of a single message's body, to `recipients` (its own `to` if none)."""
    batch = {name: value for name, value in body.items() if name != "to"}
    batch["recipients"] = [{"to": to} for to in recipients or (body["to"],)]
    batch.update(overrides)
    return batch


def single(agent: Api, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = agent.client.post("/v1/messages", json=body)
    answer: dict[str, Any] = response.json()
    return response.status_code, answer


def batch(agent: Api, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = agent.client.post("/v1/batches", json=body, timeout=30)
    answer: dict[str, Any] = response.json()
    return response.status_code, answer


def only_row(answer: dict[str, Any]) -> dict[str, Any]:
    """The one recipient of a batch of one, accepted or rejected."""
    [row] = answer["accepted"] + answer["rejected"]
    return row


def decision(answer: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    return answer["status"], answer["reasons"]


def trips(admin: Api) -> list[tuple[str, str, float]]:
    response = admin.client.get("/v1/safe-mode")
    assert response.status_code == 200, response.text
    return [(t["scope"], t["cause"], t["value"]) for t in response.json()]


def test_a_single_message_and_a_batch_of_one_get_the_same_decision_and_reasons(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")
    added = admin.client.post("/v1/suppressions", json={"entries": ["gone@customer.example"]})
    assert added.status_code == 200, added.text
    cases = {
        "accepted": message("ann@customer.example"),
        "a recipient check": message("info@customer.example"),
        "an invalid address": message("not an address"),
        "a free-mail domain": message("someone@gmail.com"),
        "a suppression, decided in the store": message("gone@customer.example"),
        "a leftover placeholder": message("bob@customer.example", subject="Hi {{first_name}}"),
        "a secret and a recipient check": message("info@customer.example", text="card 4111 1111 1111 1111"),
        "a later send": message("cy@customer.example", send_at="2099-01-01T09:00:00+00:00"),
    }
    expected = {
        "accepted": ("queued", []),
        "a recipient check": ("rejected", ["role_account"]),
        "an invalid address": ("rejected", ["invalid_address"]),
        "a free-mail domain": ("rejected", ["free_domain"]),
        "a suppression, decided in the store": ("rejected", ["suppressed"]),
        "a leftover placeholder": ("rejected", ["unrendered_template"]),
        "a secret and a recipient check": ("rejected", ["sensitive_content", "role_account"]),
        "a later send": ("queued", []),
    }
    for case, body in cases.items():
        single_code, one = single(agent, body)
        batch_code, many = batch(agent, batch_of(body))
        assert (single_code, batch_code) == (201, 201), (case, one, many)
        assert decision(one) == decision(only_row(many)), case
        status, reasons = decision(one)
        assert (status, [r["code"] for r in reasons]) == expected[case], case
        if status == "rejected":  # final: what is stored is what was answered, by either route
            assert decision(agent.status(one["id"])) == decision(agent.status(only_row(many)["id"])), case

    refused = message("ann@customer.example", **{"from": "Eve <eve@evil.example>"})
    single_code, one = single(agent, refused)
    batch_code, many = batch(agent, batch_of(refused))
    assert (single_code, batch_code) == (403, 403)
    assert one == many and one["reasons"][0]["code"] == "inbox_not_allowed"


def test_a_send_that_waits_for_approval_names_the_same_request_both_ways(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    body = message("ann@customer.example", **{"from": "Team <team@acme.example>"})
    _, one = single(agent, body)
    _, many = batch(agent, batch_of(body))
    row = only_row(many)
    assert (one["status"], row["status"]) == ("pending_approval", "pending_approval")
    # A batch's answer names its request in `approval`; one message's answer, which has no such
    # field, names it in a reason.
    assert row["reasons"] == [] and many["approval"]["tier"] == 1
    [waiting] = one["reasons"]
    assert waiting["code"] == "approval_required"
    assert f"tier 1 ({many['approval']['why']})" in waiting["detail"]
    assert many["approval"]["id"] not in waiting["detail"], "each submission opens its own request"


def test_a_refusal_counts_once_per_submission_single_or_batch(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES + "\n[safe_mode]\nmax_denials = 4\n")
    agent = client_for(daemon, "agent", "sdr-bot")
    admin = client_for(daemon, "admin", "dana")

    # Five rows refused by recipient checks, one accepted: one submission, one denial.
    list_with_bad_rows = batch_of(
        message("ann@customer.example"),
        "ann@customer.example",
        "someone@gmail.com",
        "info@customer.example",
        "not an address",
        "ANN@customer.example",
        "x@mailinator.com",
        idempotency_key="list-1",
    )
    code, answer = batch(agent, list_with_bad_rows)
    assert code == 201 and (len(answer["accepted"]), len(answer["rejected"])) == (1, 5)
    # A retry answered from its idempotency key is the same submission: no second denial.
    code, again = batch(agent, list_with_bad_rows)
    assert code == 201 and again["id"] == answer["id"]
    # A batch of one counts like the single message it is: one denial each.
    code, answer = batch(agent, batch_of(message("someone@gmail.com")))
    assert code == 201 and only_row(answer)["status"] == "rejected"
    assert agent.send("someone@gmail.com")["status"] == "rejected"
    # Accepted submissions count nothing.
    code, answer = batch(
        agent, batch_of(message("bob@customer.example"), "bob@customer.example", "cy@customer.example")
    )
    assert code == 201 and len(answer["accepted"]) == 2
    assert agent.send("dee@customer.example")["status"] == "queued"
    assert trips(admin) == [], "three refused submissions of four allowed"

    # A batch the agent may not send at all is the fourth.
    forged = batch_of(message("eve@customer.example", **{"from": "Eve <eve@evil.example>"}))
    code, _ = batch(agent, forged)
    assert code == 403
    assert trips(admin) == [("agent:sdr-bot", "denials", 4)]


# Addresses whose domain's cached verdict must give what validating each whole gives: case, IDNA,
# role names email_validator lower-cases, lengths at each limit, refused domains and local parts.
_ADDRESSES = [
    "Ann.Lee@Customer.Example",
    "ann+q4@customer.example",
    "Postmaster@customer.example",
    "a@xn--bcher-kva.example",
    "a@bücher.example",
    "ann@-customer.example",
    "ann@customer..example",
    "ann@localhost",
    "ann@customer.invalid",
    "ann..lee@customer.example",
    ".ann@customer.example",
    '"ann lee"@customer.example',
    "Ann <ann@customer.example>",
    "ann@@customer.example",
    "ann@",
    "@customer.example",
    "ann",
    "ännä@customer.example",
    "x" * 64 + "@customer.example",
    "x" * 65 + "@customer.example",
    "x" * 60 + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 57 + ".example",  # 254 characters
    "x" * 61 + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 57 + ".example",  # 255
    "x" * 36 + "@" + "xn--bcher-kva." * 15 + "example",  # 254 as written, 149 bytes in Unicode
    "ann@customer.example ",
]


def test_an_address_is_normalised_and_refused_as_validating_it_whole_would() -> None:
    """The domain's verdict is cached for a batch's many new recipients: no answer may differ."""
    from email_validator import EmailNotValidError, validate_email

    from sendguard.model import normal_address

    for text in _ADDRESSES:
        try:
            valid = validate_email(text, check_deliverability=False)
        except EmailNotValidError as refused:
            expected: tuple[str, ...] = ("refused", str(refused))
        else:
            address = f"{valid.local_part}@{valid.domain}".lower()
            expected = (address, valid.domain.lower(), valid.ascii_domain.lower())
        for _ in range(2):  # the domain's verdict new, then cached
            try:
                normal = normal_address(text)
            except EmailNotValidError as refused:
                got: tuple[str, ...] = ("refused", str(refused))
            else:
                got = (normal.address, normal.domain, normal.ascii_domain)
            assert got == expected, text
            normal_address.cache_clear()
