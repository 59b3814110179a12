"""The bad-input drill: the HTTP API fuzzed from its own OpenAPI document, and the inbound mail parser.

Agents and strangers both write what reaches sendguard. Whatever they send, the API must answer with
a decision or a 4xx, never a 5xx, the daemon must live on, and no accepted message may be lost or
doubled; the parser must understand raw mail or say why it cannot, quickly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error

from sendguard.feedback.parse import Inbound, UnparsableMail, parse_inbound
from sendguard.rules import ScopeKind
from tests.conftest import Daemon, wait_until
from tests.peers import DnsServer

# Raw inbound mail is declared as message/rfc822 text, which schemathesis has no serializer for.
schemathesis.serializer.alias("message/rfc822", "text/plain")

# No throttles, no cooldown, and fuzzing's many refusals and sends neither trip the agent nor wait
# for approval: fuzzed messages go all the way through rendering to the relay.
RULES = """
[ingress]
recipient_cooldown = "0s"

[safe_mode]
max_denials = 1000000

[approvals]
mass_send_threshold = 1000000
"""
API_EXAMPLES = 12  # per operation and strategy, every one of each route: about 700 requests in all
SUBMIT_EXAMPLES = 60  # submissions get more: they are what must not be lost
SUBMIT = "POST /v1/messages"
Operation = APIOperation[Any, Any, Any, Any]
AGENT_ROUTES = frozenset(
    {
        SUBMIT,
        "POST /v1/batches",
        "GET /v1/messages/{message_id}",
        "POST /v1/messages/{message_id}/cancel",
        "POST /v1/events",
        "POST /v1/inbound",
        "GET /v1/safe-mode",
    }
)
APPROVER_ROUTES = frozenset(
    {"POST /v1/approvals/{approval_id}/approve", "POST /v1/approvals/{approval_id}/deny"}
)
SETTLED = frozenset(
    {"sent", "rejected", "held", "pending_approval", "cancelled", "bounced", "failed", "deferred"}
)

# Mostly domains the test DNS server knows, so messages are delivered; some it does not, and role,
# free-mail, disposable and internationalised addresses.
ADDRESSES = (
    st.emails(domains=st.sampled_from(DnsServer.MX_DOMAINS))
    | st.emails()
    | st.sampled_from(
        [
            "lead@customer.example",
            "Dana.Smith+q4@Customer.Example",
            "info@customer.example",
            "bob@nullmx.example",
            "user@gmail.com",
            "x@mailinator.com",
            "üser@bücher.example",
            "a@aonly.example",
        ]
    )
)
# Text as bad as JSON can carry: NUL, the line breaks besides CR and LF, lone surrogates.
NASTY = st.text(
    st.sampled_from(["a", " ", "ü", "😀", "\x00", "\x0b", "\x85", "\u2028", "\ud800", "\udfff"]), min_size=1
)
SCOPES = st.tuples(st.sampled_from([*ScopeKind, "nope"]), st.text() | NASTY).map(":".join)
# Positive cases whose bodies the schema cannot make valid: sendguard checks these fields in code
# (a From in the agent's inboxes, an id or an address to tie an event to, a scope's form). Without
# these overlays nearly every request would stop at the same 422 and the logic behind it go untested.
OVERLAYS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    SUBMIT: st.fixed_dictionaries(
        {
            "from": st.sampled_from(
                ["Alice <alice@acme.example>", "BOB@Acme.Example", '"Ü, Ö" <ü@acme.example>']
            )
            | NASTY.map(lambda name: f'"{name}" <alice@acme.example>'),
            "to": ADDRESSES,
            "subject": st.text(max_size=80) | NASTY,
            "text": st.text(min_size=1) | NASTY,
            "segment": st.sampled_from([None, "cfo-na-q4", "smb"]),
            "send_at": st.none(),
            "enrichment": st.none(),
            "headers": st.dictionaries(
                st.sampled_from(["Reply-To", "References", "List-Unsubscribe", "X-Campaign", "Keywords"]),
                st.text(max_size=80) | NASTY,
                max_size=3,
            ),
        }
    ),
    "POST /v1/batches": st.fixed_dictionaries(
        {
            "from": st.sampled_from(["Alice <alice@acme.example>", '"Ü, Ö" <ü@acme.example>']),
            "subject": st.sampled_from(["Hi {{first_name}}", "{{ company }} and {{x}}", ""]) | NASTY,
            "text": st.sampled_from(["Hi {{first_name}},\nat {{company}}", "{{"]) | NASTY,
            "segment": st.sampled_from([None, "cfo-na-q4"]),
            "send_at": st.none(),
            "enrichment": st.none(),
            "recipients": st.lists(
                st.fixed_dictionaries(
                    {
                        "to": ADDRESSES,
                        "vars": st.dictionaries(
                            st.sampled_from(["first_name", "company", "x"]) | st.text(max_size=8),
                            st.text(max_size=40) | NASTY,
                            max_size=3,
                        ),
                    }
                ),
                min_size=1,
                max_size=5,
            ),
        }
    ),
    "POST /v1/events": st.fixed_dictionaries(
        {"message_id": st.none() | st.from_regex(r"\A[0-9a-f]{23}\Z"), "recipient": ADDRESSES}
    ),
    "POST /v1/suppressions": st.fixed_dictionaries({"entries": st.lists(ADDRESSES, min_size=1, max_size=5)}),
    "POST /v1/safe-mode": st.fixed_dictionaries({"scope": SCOPES}),
    "POST /v1/alerts": st.fixed_dictionaries(
        {
            "alerts": st.lists(
                st.fixed_dictionaries(
                    {
                        "status": st.sampled_from(["firing", "resolved"]) | NASTY,
                        "labels": st.fixed_dictionaries({"sendguard_scope": SCOPES, "alertname": NASTY}),
                        "annotations": st.fixed_dictionaries({"summary": st.text() | NASTY}),
                    }
                ),
                max_size=3,
            )
        }
    ),
}


@pytest.mark.drill
def test_api_fuzz_gives_no_5xx_no_crash_and_loses_no_message(
    make_daemon: Callable[..., Daemon], mint: Callable[..., str]
) -> None:
    daemon = make_daemon(RULES, process=True)  # the point: the process survives and logs no traceback
    tokens = {
        "agent": mint("agent", "sdr-bot"),
        "approver": mint("approver", "fuzz-approver", "--group", "ops"),
        "admin": mint("admin", "fuzz-admin"),
    }
    schema = schemathesis.openapi.from_url(f"{daemon.base}/openapi.json")
    accepted: list[tuple[str, str]] = []
    operations: list[Operation] = [operation for methods in schema.values() for operation in methods.values()]
    # Submissions first: the safe-mode trips that fuzzing the other routes makes would hold them all.
    for operation in sorted(operations, key=lambda operation: operation.label != SUBMIT):
        label = operation.label
        role = "agent" if label in AGENT_ROUTES else "approver" if label in APPROVER_ROUTES else "admin"
        examples, sink = (SUBMIT_EXAMPLES, accepted) if label == SUBMIT else (API_EXAMPLES, None)
        for strategy in _strategies(operation):
            _fuzz(strategy, daemon.base, tokens[role], examples, sink)

    assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
    assert daemon.http.get("/readyz", timeout=5).status_code == 200
    # Counted by answers: how many of them made a new message moves with the machine's load, as an
    # MX look-up that times out defers a recipient that an answered one rejects, and a repeat of a
    # deferred body gets its first id back where a rejected one is decided again (22 quiet, 14 in CI).
    assert len(accepted) >= SUBMIT_EXAMPLES // 4, "too few accepted submissions to say anything about loss"
    new_ids = _new_ids(accepted)
    assert len(set(new_ids)) == len(new_ids), "two new submissions were given the same id"
    with httpx.Client(base_url=daemon.base, headers={"Authorization": f"Bearer {tokens['agent']}"}) as agent:
        for message_id in new_ids:
            response = agent.get(f"/v1/messages/{message_id}")
            assert response.status_code == 200, (message_id, response.text)
            assert response.json()["id"] == message_id
        # A delivery that dies answers no request: its message stays `queued` or `sending`, and only
        # the log tells why.
        wait_until(
            lambda: all(agent.get(f"/v1/messages/{id_}").json()["status"] in SETTLED for id_ in new_ids),
            timeout=20,
            what="every accepted message to be delivered or decided",
        )
    log = daemon.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


def _strategies(operation: Operation) -> list[st.SearchStrategy[Case[Any]]]:
    """Cases that fit the schema, cases that break it (if it has anything to break), overlaid ones."""
    positive = operation.as_strategy(GenerationMode.POSITIVE)
    strategies = [positive]
    if operation.body or any(True for _ in operation.iter_parameters()):
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    if operation.label in OVERLAYS:
        strategies.append(st.builds(_overlaid, positive, OVERLAYS[operation.label]))
    return strategies


def _overlaid(case: Case[Any], overlay: dict[str, Any]) -> Case[Any]:
    """The case with the fields sendguard checks in code set to values that can pass those checks."""
    if isinstance(case.body, dict):
        case.body.update(overlay)
    return case


def _fuzz(
    strategy: st.SearchStrategy[Case[Any]],
    base: str,
    token: str,
    examples: int,
    accepted: list[tuple[str, str]] | None,
) -> None:
    """Send `examples` cases, failing at the first 5xx; note each 201 in `accepted`, if given."""

    @settings(max_examples=examples, derandomize=True)
    @given(case=strategy)
    def call(case: Case[Any]) -> None:
        response = case.call_and_validate(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error]
        )
        if accepted is not None and response.status_code == 201:
            key = case.body.get("idempotency_key") if isinstance(case.body, dict) else None
            # Without a key of its own, a submission's key is derived from its whole body.
            derived = f"body:{json.dumps(case.body, sort_keys=True)}"
            accepted.append((key if isinstance(key, str) else derived, response.json()["id"]))

    call()


def _new_ids(accepted: list[tuple[str, str]]) -> list[str]:
    """The ids of accepted submissions that made a new message; a repeated idempotency key must not.

    A key derived from the body answers only with an accepted message, so a repeat of a rejected
    one is decided again, with a new id.
    """
    first_by_key: dict[str, str] = {}
    new_ids = []
    for key, message_id in accepted:
        if key in first_by_key and (message_id == first_by_key[key] or not key.startswith("body:")):
            assert message_id == first_by_key[key], f"idempotency key {key!r} made a second message"
            continue
        new_ids.append(message_id)
        first_by_key[key] = message_id
    return new_ids


# --- the inbound mail parser ------------------------------------------------------------------

SAMPLES = {path.name: path.read_bytes() for path in sorted((Path(__file__).parent / "samples").iterdir())}
PARSE_BOUND_S = 2.0  # the daemon gives a parse 10 s (SENDGUARD_INBOUND_TIMEOUT); these inputs are small
ID_1D = "0192a3b4c5d6e7f8a9b0c1d"
SIGNED = f"bounces+{ID_1D}.0f1e2d3c4b5a69788796a5b4@bounce.acme.example"  # shaped so; the mac is made up
# What the parser looks at, and values that have broken mail parsers: bad charsets and RFC 2231
# parameters, empty boundaries, unknown encodings, malformed encoded words, endless brackets.
FIELDS = [
    b"Content-Type",
    b"Content-Transfer-Encoding",
    b"Content-Disposition",
    b"From",
    b"Subject",
    b"In-Reply-To",
    b"References",
    b"Message-ID",
    b"Return-Path",
    b"Auto-Submitted",
    b"Reporting-MTA",
    b"Action",
    b"Status",
    b"Final-Recipient",
    b"Original-Recipient",
    b"Diagnostic-Code",
    b"Feedback-Type",
    b"Original-Mail-From",
    b"Original-Rcpt-To",
]
VALUES = [
    b"",
    b"\xff\xfe",
    b"=?utf-8?q?=ff?=",
    b"=?x-unknown?b?!!?=",
    b"<" * 300,
    b"<>" * 300,
    f"<{ID_1D}.sg@acme.example>".encode(),
    f"<bounces+{ID_1D}@bounce.acme.example>".encode(),
    f"<{SIGNED}>".encode(),
    f"rfc822; {SIGNED}".encode(),
    b"rfc822;",
    b'"\\" <@>',
    b"a@" + b"b" * 400,
    b"multipart/report; report-type=delivery-status; boundary=",
    b"multipart/report; report-type*=utf-8''%ff%fe; boundary=x",
    b'multipart/mixed; boundary=""',
    b"message/delivery-status",
    b"message/feedback-report",
    b"message/rfc822",
    b"message/global-headers",
    b"text/rfc822-headers",
    b"text/plain; charset*=utf-8''%ff",
    b'text/plain; charset="\x00"',
    b"text/html; charset=zlib",
    b"base64",
    b"quoted-printable",
    b"x-uuencode",
    b"attachment; filename*=x''%ff",
    b"failed",
    b"delivered",
    b"5.1.1.1",
    b"4.0.0",
    b"abuse",
    b"not-spam",
    b"auto-replied",
]
HEADER_LINES = st.builds(
    lambda name, value: name + b": " + value, st.sampled_from(FIELDS), st.sampled_from(VALUES)
)
LINES = (
    HEADER_LINES
    | st.sampled_from([b"", b"--x", b"--x--", b"\xff", b"\x00", b" folded"])
    | st.binary(max_size=80)
)


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    """A sample (DSN, ARF report, reply) with lines replaced, inserted, repeated, cut or spliced."""
    lines = draw(st.sampled_from(list(SAMPLES.values()))).split(b"\n")
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(lines)))
        match draw(st.sampled_from(["replace", "insert", "value", "delete", "repeat", "splice", "truncate"])):
            case "replace":
                lines[at : at + 1] = [draw(LINES)]
            case "insert":
                lines.insert(at, draw(LINES))
            case "value" if at < len(lines) and b":" in lines[at]:
                lines[at] = lines[at].partition(b":")[0] + b": " + draw(st.sampled_from(VALUES))
            case "delete":
                del lines[at : at + draw(st.integers(1, 20))]
            case "repeat":
                lines[at:at] = lines[at : at + draw(st.integers(1, 20))] * draw(st.integers(1, 50))
            case "splice":
                other = draw(st.sampled_from(list(SAMPLES.values()))).split(b"\n")
                lines[at:] = other[draw(st.integers(0, len(other))) :]
            case "truncate":
                del lines[at:]
    return draw(st.sampled_from([b"\n", b"\r\n", b"\r"])).join(lines)


@pytest.mark.drill
@settings(max_examples=1000, derandomize=True)
@given(
    raw=st.binary(max_size=2048) | mutated_samples(),
    envelope=st.lists(
        st.sampled_from([SIGNED, SIGNED.upper(), f"bounces+{ID_1D}@bounce.acme.example", "x@y", ""])
    ),
    bounce_domain=st.sampled_from([None, "bounce.acme.example", ""]),
)
def test_parser_reads_any_bytes_or_says_why_quickly(
    raw: bytes, envelope: list[str], bounce_domain: str | None
) -> None:
    started = time.perf_counter()
    try:
        inbound = parse_inbound(raw, envelope_recipients=envelope, bounce_domain=bounce_domain)
    except UnparsableMail as exc:
        # The module's catch-all is a safety net; reaching it means an error the parser did not foresee.
        assert not str(exc).startswith("malformed mail"), str(exc)
        str(exc).encode()  # kept with the mail and answered as JSON: text, no surrogates of 8-bit bytes
    else:
        assert isinstance(inbound, Inbound)
        assert inbound.summary.encode()
        for event in inbound.events:
            event.model_dump_json()  # raises on a string that is not text
        assert all(len(ref.message_id) == 23 for ref in inbound.references)
    assert time.perf_counter() - started < PARSE_BOUND_S
