"""Approval tiers on real daemons: mass sends need two people from two groups, nobody twice."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from sendguard.state.keys import Keys
from tests.conftest import Api, Daemon, message, wait_until
from tests.peers import SmtpSink

ClientFor = Callable[..., Api]
RULES = """
[ingress]
recipient_cooldown = "0s"

[approvals]
mass_send_threshold = 3
shared_inboxes = ["team@acme.example"]
"""


def _pending(reviewer: Api) -> list[dict[str, Any]]:
    response = reviewer.client.get("/v1/approvals", params={"status": "pending"})
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()
    return listed


def _decide(approver: Api, approval_id: str, verdict: str, comment: str = "looked at it") -> Any:
    return approver.client.post(f"/v1/approvals/{approval_id}/{verdict}", json={"comment": comment})


def test_a_mass_send_in_singles_waits_for_two_people_from_two_groups(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    erin = client_for(daemon, "approver", "erin", "--group", "ops")
    finn = client_for(daemon, "approver", "finn", "--group", "sales")
    same_name = client_for(daemon, "approver", "sdr-bot", "--group", "revops")

    decisions = [agent.send(f"lead{i}@customer.example", segment="smb") for i in range(5)]
    assert [d["status"] for d in decisions] == ["queued"] * 2 + ["pending_approval"] * 3
    assert decisions[2]["reasons"][0]["code"] == "approval_required"
    assert "mass send" in decisions[2]["reasons"][0]["detail"]
    [request] = _pending(dana)
    assert (request["tier"], request["kind"], request["requested_by"]) == (2, "run", "sdr-bot")
    shown = dana.client.get(f"/v1/approvals/{request['id']}").json()
    contents = shown["contents"]
    assert contents["messages"] == 3 and contents["by_recipient_domain"] == {"customer.example": 3}
    assert contents["by_agent_version"] == {"test-1": 3} and len(contents["samples"]) == 3
    assert contents["samples"][0]["subject"] == "Quick question"

    assert _decide(agent, request["id"], "approve").status_code == 403  # agents never decide
    refused = _decide(same_name, request["id"], "approve")
    assert refused.status_code == 409 and "submitted this request" in refused.text
    assert _decide(dana, request["id"], "approve").json()["status"] == "pending"
    twice = _decide(dana, request["id"], "approve")
    assert twice.status_code == 409 and "already decided" in twice.text
    same_group = _decide(erin, request["id"], "approve")
    assert same_group.status_code == 409 and "group other than ops" in same_group.text
    assert len(smtp.received) <= 2

    approved = _decide(finn, request["id"], "approve", "list checked with sales").json()
    assert approved["status"] == "approved"
    assert [(d["by"], d["group"]) for d in approved["decisions"]] == [("dana", "ops"), ("finn", "sales")]
    for decision in decisions:
        agent.wait_status(decision["id"], "sent")
    history = agent.status(decisions[4]["id"])["history"]
    assert [h["cause"] for h in history][1:3] == ["approval_required", "approved"]
    # What joined the request came out of its headroom; the rest of it lets one more through.
    assert agent.send("lead9@customer.example", segment="smb")["status"] == "queued"
    assert _pending(dana) == []


def test_a_retry_of_a_waiting_message_answers_with_its_request_and_counts_once(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    for i in range(2):
        assert agent.send(f"lead{i}@customer.example", segment="smb")["status"] == "queued"

    first = agent.send("lead2@customer.example", segment="smb", idempotency_key="k")
    again = agent.send("lead2@customer.example", segment="smb", idempotency_key="k")
    assert first["status"] == "pending_approval" and first["approval"]["tier"] == 2
    assert (again["id"], again["approval"]) == (first["id"], first["approval"])
    [request] = _pending(dana)
    assert dana.client.get(f"/v1/approvals/{request['id']}").json()["contents"]["messages"] == 1


def test_a_retry_of_a_tier_one_message_opens_no_second_request(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    """A retry is answered with the first decision: a hijacked agent repeating one idempotency key
    must not page the approvers with a new request each time."""
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    shared = {"from": "Team <team@acme.example>", "idempotency_key": "once"}
    answers = [agent.send("a@customer.example", **shared) for _ in range(3)]
    assert {a["status"] for a in answers} == {"pending_approval"}
    assert len({(a["id"], a["approval"]["id"]) for a in answers}) == 1
    assert [r["id"] for r in _pending(dana)] == [answers[0]["approval"]["id"]]


def test_tier_one_sends_wait_for_one_approval_and_a_denial_cancels_them(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(
        RULES + '\n[[agent]]\nname = "new-bot"\nowner = "sales"\ninboxes = ["*@acme.example"]\ntier = 1\n'
    )
    agent = client_for(daemon, "agent", "sdr-bot")
    operator = client_for(daemon, "operator", "omar")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    shared = agent.send("a@customer.example", **{"from": "Team <team@acme.example>"})
    assert shared["status"] == "pending_approval"
    assert "shared inbox" in shared["reasons"][0]["detail"]
    new_bot = client_for(daemon, "agent", "new-bot")
    first = new_bot.send("b@customer.example")
    second = new_bot.send("c@customer.example")
    requests = {r["id"]: r for r in _pending(dana)}
    assert len(requests) == 3 and {r["tier"] for r in requests.values()} == {1}

    shared_request = _request_of(operator, shared["id"])
    assert _decide(dana, shared_request, "approve").json()["status"] == "approved"
    agent.wait_status(shared["id"], "sent")
    denied = _decide(dana, _request_of(operator, first["id"]), "deny", "not this one").json()
    assert denied["status"] == "denied"
    cancelled = operator.status(first["id"])
    assert cancelled["status"] == "cancelled" and cancelled["reasons"][0]["code"] == "approval_denied"
    assert operator.status(second["id"])["status"] == "pending_approval"

    # The same from the command line, as the approver the token names.
    second_request = _request_of(operator, second["id"])
    assert second_request in daemon.cli("approvals", "list", token=dana.token)
    shown = daemon.cli("approvals", "show", second_request, token=dana.token)
    assert "pending: 0 of 1 approvals" in shown and "messages: 1 (1 waiting)" in shown
    assert f"/ui/approvals/{second_request}" in shown
    assert '"messages": 1' in daemon.cli("approvals", "show", second_request, "--json", token=dana.token)
    out = daemon.cli("approvals", "approve", second_request, "--comment", "fine", token=dana.token)
    assert out == f"{second_request}: approved"
    operator.wait_status(second["id"], "sent")


def test_a_request_nobody_decides_expires_with_its_messages(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES.replace("mass_send_threshold = 3", 'mass_send_threshold = 2\nttl = "2s"'))
    agent = client_for(daemon, "agent", "sdr-bot")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    waiting = [agent.send(f"lead{i}@customer.example", campaign="q4") for i in range(3)][1:]
    assert {w["status"] for w in waiting} == {"pending_approval"}
    for decision in waiting:
        agent.wait_status(decision["id"], "expired")
    request = _request_of(agent, waiting[0]["id"])
    late = _decide(dana, request, "approve")
    assert late.status_code == 409 and "already expired" in late.text


def test_a_rogue_agent_gets_nothing_out_beyond_tier_zero(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    # (its 15 requests past the default cap of pending ones: see the flood tests below for that)
    rules = RULES.replace("mass_send_threshold = 3", "mass_send_threshold = 25\nmax_pending_requests = 20")
    daemon = make_daemon(rules)
    agent = client_for(daemon, "agent", "sdr-bot")
    operator = client_for(daemon, "operator", "omar")

    def submit(i: int) -> str:
        return str(agent.send(f"lead{i}@customer.example", segment="cfo-na-q4")["status"])

    with ThreadPoolExecutor(max_workers=8) as pool:  # as fast as it can, from several connections
        statuses = list(pool.map(submit, range(400)))
    assert statuses.count("queued") == 24
    assert statuses.count("pending_approval") == 400 - 24
    wait_until(lambda: len(smtp.received) == 24, what="the tier-0 messages to be delivered")
    # Each request holds what its approvers are shown: the message that opened it and at most a
    # threshold's worth that joined it; beyond that a new one opens.
    requests = _pending(operator)
    assert {r["tier"] for r in requests} == {2}
    assert all(r["messages"] + r["headroom"] == 1 + 25 for r in requests)
    waiting = [
        operator.client.get(f"/v1/approvals/{r['id']}").json()["contents"]["waiting"] for r in requests
    ]
    assert sum(waiting) == 376 and max(waiting) <= 26
    assert len(smtp.received) == 24


def test_an_approval_releases_what_it_showed_and_no_run_approval_lifts_tier_one(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(
        RULES + '\n[[agent]]\nname = "new-bot"\nowner = "sales"\ninboxes = ["*@acme.example"]\ntier = 1\n'
    )
    agent = client_for(daemon, "agent", "sdr-bot")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    finn = client_for(daemon, "approver", "finn", "--group", "legal")

    def approve(request_id: str) -> None:
        for approver in (dana, finn):
            assert _decide(approver, request_id, "approve").status_code == 200

    def shared(spelt: str) -> None:
        """A shared inbox, however spelt, waits for one approval of its own."""
        sent = agent.send("team-lead@customer.example", **{"from": spelt})
        assert sent["status"] == "pending_approval" and "shared inbox" in sent["reasons"][0]["detail"]

    assert agent.send("a0@customer.example")["status"] == "queued"
    shared("TEAM@Acme.Example")
    assert agent.send("a2@customer.example")["status"] == "pending_approval"
    [request] = [r for r in _pending(dana) if r["tier"] == 2]
    assert (request["messages"], request["headroom"]) == (1, 3)
    assert "releases the 1 messages it holds" in request["releases"]
    assert "up to 3 more messages from sdr-bot" in request["releases"]
    # Approved with nothing more joined: its 1 message and a headroom of 3 go, then a new request.
    approve(request["id"])
    shown = dana.client.get(f"/v1/approvals/{request['id']}").json()
    assert shown["headroom_until"] and "until" in shown["releases"]
    assert [agent.send(f"b{i}@customer.example")["status"] for i in range(2)] == ["queued"] * 2
    shared("Team <team+q4@acme.example>")  # in the headroom, and still tier 1
    assert agent.send("b9@customer.example")["status"] == "pending_approval"
    wait_until(lambda: len(smtp.received) == 1 + 1 + 2, what="the approved messages to arrive")

    new_bot = client_for(daemon, "agent", "new-bot")
    tier_one = [new_bot.send(f"n{i}@customer.example") for i in range(4)]
    assert [m["status"] for m in tier_one] == ["pending_approval"] * 4
    mass = [r for r in _pending(dana) if r["tier"] == 2 and r["agent"] == "new-bot"]
    assert [r["messages"] for r in mass] == [2]  # the third and fourth, past the threshold
    approve(mass[0]["id"])
    # Its headroom does not lift tier 1: the next message waits for one approval of its own.
    later = new_bot.send("n9@customer.example")
    assert later["status"] == "pending_approval" and "tier 1" in later["reasons"][0]["detail"]


def test_a_batch_decided_while_it_is_still_admitted_strands_nothing(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES.replace("mass_send_threshold = 3", "mass_send_threshold = 25"))
    agent = client_for(daemon, "agent", "sdr-bot")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    finn = client_for(daemon, "approver", "finn", "--group", "legal")
    size = 5000
    body = {k: v for k, v in message("", send_at="2099-01-01T00:00:00Z").items() if k != "to"}
    body["recipients"] = [{"to": f"r{i}@customer.example"} for i in range(size)]
    with ThreadPoolExecutor(1) as pool:
        submitted = pool.submit(agent.client.post, "/v1/batches", json=body, timeout=120)
        [request] = wait_until(lambda: _pending(dana), what="the batch's request to open")
        assert request["messages"] == size  # what approvers are shown is the whole batch at once
        for approver in (dana, finn):
            assert _decide(approver, request["id"], "approve").status_code == 200
        admitted_when_decided = dana.client.get(f"/v1/approvals/{request['id']}").json()["contents"][
            "messages"
        ]
        assert submitted.result().status_code == 201
    assert admitted_when_decided < size, "the decision did not race the admission; make the batch larger"
    contents = dana.client.get(f"/v1/approvals/{request['id']}").json()["contents"]
    assert (contents["messages"], contents["waiting"]) == (size, 0)


def test_a_batch_denied_while_it_is_still_admitted_lets_its_template_expire(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, redis_url: str, prefix: str
) -> None:
    """Recipients admitted after the denial are cancelled by their own admission, in calls of many:
    the template's waiting count is raised before each leaves it, so it ends at 0 with an expiry,
    neither kept for ever nor dropped while a message still waits for it."""
    daemon = make_daemon(RULES.replace("mass_send_threshold = 3", "mass_send_threshold = 25"))
    agent = client_for(daemon, "agent", "sdr-bot")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    size = 5000
    body = {k: v for k, v in message("", send_at="2099-01-01T00:00:00Z").items() if k != "to"}
    body["recipients"] = [{"to": f"r{i}@customer.example", "vars": {"n": str(i)}} for i in range(size)]
    with ThreadPoolExecutor(1) as pool:
        submitted = pool.submit(agent.client.post, "/v1/batches", json=body, timeout=120)
        [request] = wait_until(lambda: _pending(dana), what="the batch's request to open")
        assert _decide(dana, request["id"], "deny").status_code == 200
        admitted_when_decided = dana.client.get(f"/v1/approvals/{request['id']}").json()["contents"][
            "messages"
        ]
        answer = submitted.result()
        assert answer.status_code == 201, answer.text
    assert admitted_when_decided < size, "the decision did not race the admission; make the batch larger"
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        template = Keys(prefix).template(answer.json()["id"])
        assert client.hget(template, "waiting") == "0" and client.pttl(template) > 0


def test_separation_of_duties_compares_people_not_spellings(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    dana = client_for(daemon, "approver", " Dana", "--group", "Ops ")
    dana_again = client_for(daemon, "approver", "dana", "--group", "ops")
    other_ops = client_for(daemon, "approver", "erin", "--group", "OPS")
    owner = client_for(daemon, "approver", "sam", "--group", "Sales")  # sdr-bot's owner group
    also_owner = client_for(daemon, "approver", "finn", "--group", "sales")
    for i in range(3):
        agent.send(f"lead{i}@customer.example")
    [request] = _pending(dana)

    assert _decide(owner, request["id"], "approve").status_code == 200
    for same, why in ((also_owner, "group other than sales"),):
        refused = _decide(same, request["id"], "approve")
        assert refused.status_code == 409 and why in refused.text
    assert _decide(dana, request["id"], "approve").json()["status"] == "approved"
    decided = dana.client.get(f"/v1/approvals/{request['id']}").json()["decisions"]
    assert [(d["by"], d["group"]) for d in decided] == [("sam", "sales"), ("dana", "ops")]

    agent.send("lead9@customer.example")
    agent.send("lead10@customer.example")
    agent.send("lead11@customer.example")
    agent.send("lead12@customer.example")
    [second] = _pending(dana)
    assert _decide(dana, second["id"], "approve").status_code == 200
    for same, why in ((dana_again, "already decided"), (other_ops, "group other than ops")):
        refused = _decide(same, second["id"], "approve")
        assert refused.status_code == 409 and why in refused.text

    for odd in ("", "   ", "dana smith", "d\u0430na", "dana\u200b", "ops;x"):
        result = daemon.cli_result("token", "create", "--role", "approver", "--name", odd, "--group", "ops")
        assert result.returncode == 2 and "--name" in result.stderr, (odd, result.stderr)
    result = daemon.cli_result("token", "create", "--role", "approver", "--name", "ok", "--group", "O ps")
    assert result.returncode == 2 and "--group" in result.stderr


def _request_of(reader: Api, message_id: str) -> str:
    history = reader.status(message_id)["history"]
    detail = next(h["detail"] for h in history if h["cause"] == "approval_required")
    return str(detail.rpartition(" ")[2])


# A hijacked agent flooding the approvers: past the threshold every one-recipient batch asks for a
# request of its own. Capped per agent (`max_pending_requests`), so other agents' requests stay in
# the approvers' queue, and each agent lists its own from its own index, whatever else is pending.
FLOOD_THRESHOLD = 3
FLOOD_RULES = f"""
[ingress]
recipient_cooldown = "0s"

[safe_mode]
max_denials = 1000000

[approvals]
mass_send_threshold = {FLOOD_THRESHOLD}
max_pending_requests = 10

[[agent]]
name = "rogue"
owner = "sales"
inboxes = ["*@acme.example"]
"""


def _batch(agent: Api, addresses: list[str]) -> Any:
    body = {k: v for k, v in message("").items() if k != "to"}
    body["recipients"] = [{"to": address} for address in addresses]
    return agent.client.post("/v1/batches", json=body)


def _flood(rogue: Api, batches: int) -> list[Any]:
    """One-recipient batches, as the probe sent them: each past the threshold asks for a request."""
    return [_batch(rogue, [f"r{i}@customer.example"]) for i in range(batches)]


def _mass_counted(redis_url: str, prefix: str, agent: str) -> int:
    """The recipients the agent's mass-send count holds (keys.py `mass_sends`)."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        members = client.zrange(Keys(prefix).mass_sends(agent), 0, -1)
    return sum(int(member.split(":")[1]) for member in members)


def test_requests_opened_before_the_per_agent_index_are_indexed_when_a_daemon_starts(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, redis_url: str, prefix: str
) -> None:
    """A version before the index opened requests nobody indexed: they counted toward no agent's
    cap and showed in no sending status. A daemon starting on the store indexes the pending ones."""
    rules = FLOOD_RULES.replace("max_pending_requests = 10", "max_pending_requests = 2")
    rogue = client_for(make_daemon(rules), "agent", "rogue")
    opened = [_batch(rogue, [f"o{n}x{i}@customer.example" for i in range(FLOOD_THRESHOLD)]) for n in range(2)]
    ids = [answer.json()["approval"]["id"] for answer in opened]
    with redis.Redis.from_url(redis_url) as client:
        assert client.delete(Keys(prefix).agent_approvals("rogue")) == 1  # as before the index

    rogue = client_for(make_daemon(rules), "agent", "rogue")  # a daemon of this version starts

    assert sorted(r["id"] for r in rogue.client.get("/v1/sending-status").json()["approvals"]) == sorted(ids)
    third = _batch(rogue, [f"t{i}@customer.example" for i in range(FLOOD_THRESHOLD)])
    assert third.status_code == 403 and third.json()["reasons"][0]["code"] == "too_many_approval_requests"


def test_a_flood_of_requests_is_refused_past_the_cap_and_hides_no_other_agents_request(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, redis_url: str, prefix: str
) -> None:
    daemon = make_daemon(FLOOD_RULES)
    rogue = client_for(daemon, "agent", "rogue")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    answers = _flood(rogue, 200 + FLOOD_THRESHOLD)
    codes = [answer.status_code for answer in answers]
    admitted = FLOOD_THRESHOLD - 1 + 10  # under the threshold, then one request each up to the cap
    print(f"{len(answers)} one-recipient batches: {codes.count(201)} admitted, {codes.count(403)} refused")
    assert codes == [201] * admitted + [403] * (len(answers) - admitted)
    refused = answers[-1].json()
    assert refused["reasons"][0]["code"] == "too_many_approval_requests"
    assert "max_pending_requests" in refused["detail"] and "decide the waiting ones" in refused["detail"]
    assert "10 approval requests pending" in refused["detail"]
    mine = [r for r in _pending(dana) if r["agent"] == "rogue"]
    assert len(mine) == 10
    assert _mass_counted(redis_url, prefix, "rogue") == admitted  # a refused batch counts nothing
    # Counted like other refusals: in the audit trail, by its reason code.
    admin = client_for(daemon, "admin", "omar")

    def refusals() -> list[list[str]]:
        found = admin.audit(kind="submission.refused", agent="rogue", limit="1000")
        return [entry["fields"]["reasons"] for entry in found]

    wait_until(lambda: len(refusals()) == len(answers) - admitted, what="the refusals in the audit trail")
    assert {tuple(reasons) for reasons in refusals()} == {("too_many_approval_requests",)}

    victim = client_for(daemon, "agent", "sdr-bot")  # another agent's genuine mass send
    request = _batch(victim, [f"v{i}@other.example" for i in range(2 * FLOOD_THRESHOLD)]).json()["approval"]
    listed = [r["id"] for r in _pending(dana)]
    status = victim.client.get("/v1/sending-status").json()
    print(
        f"victim's request listed for approvers: {request['id'] in listed}; "
        f"in its sending-status: {[r['id'] for r in status['approvals']]}"
    )
    assert request["id"] in listed
    assert [r["id"] for r in status["approvals"]] == [request["id"]]
    assert len(rogue.client.get("/v1/sending-status").json()["approvals"]) == 10

    # Deciding one of the rogue's makes room for exactly one more.
    finn = client_for(daemon, "approver", "finn", "--group", "sales")
    assert _decide(dana, mine[0]["id"], "deny").json()["status"] == "denied"
    assert _batch(rogue, ["again@customer.example"]).status_code == 201
    assert _batch(rogue, ["more@customer.example"]).status_code == 403
    assert _decide(dana, mine[1]["id"], "approve").status_code == 200
    assert _decide(finn, mine[1]["id"], "approve").json()["status"] == "approved"
    assert _batch(rogue, ["after@customer.example"]).status_code == 201


def test_an_agent_lists_its_own_requests_however_many_others_are_pending(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    """With the cap raised past the approvers' listing (200), an agent's sending-status still
    shows its own pending requests: it reads them from its own index, not from a global page."""
    daemon = make_daemon(FLOOD_RULES.replace("max_pending_requests = 10", "max_pending_requests = 1000"))
    rogue = client_for(daemon, "agent", "rogue")
    assert {answer.status_code for answer in _flood(rogue, 200 + FLOOD_THRESHOLD)} == {201}
    victim = client_for(daemon, "agent", "sdr-bot")
    request = _batch(victim, [f"v{i}@other.example" for i in range(2 * FLOOD_THRESHOLD)]).json()["approval"]
    status = victim.client.get("/v1/sending-status").json()
    print(f"victim's sending-status approvals: {[r['id'] for r in status['approvals']]}")
    assert [r["id"] for r in status["approvals"]] == [request["id"]]


def test_a_single_message_past_the_cap_is_refused_and_leaves_no_trace(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, redis_url: str, prefix: str
) -> None:
    """Singles of a tier-0 agent are counted and routed by their admission script: a run request
    takes `threshold` joiners, then a new one opens; past the cap the message is refused whole, its
    recipient's cooldown not taken."""
    rules = FLOOD_RULES.replace('recipient_cooldown = "0s"', 'recipient_cooldown = "1h"')
    daemon = make_daemon(rules.replace("max_pending_requests = 10", "max_pending_requests = 2"))
    rogue = client_for(daemon, "agent", "rogue")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")
    sent = [rogue.send(f"s{i}@customer.example") for i in range(2 + 2 * (1 + FLOOD_THRESHOLD))]
    assert [s["status"] for s in sent] == ["queued"] * 2 + ["pending_approval"] * 8
    refused = rogue.client.post("/v1/messages", json=message("late@customer.example"))
    assert refused.status_code == 403, refused.text
    assert refused.json()["reasons"][0]["code"] == "too_many_approval_requests"
    assert _mass_counted(redis_url, prefix, "rogue") == 10
    mine = [r for r in _pending(dana) if r["agent"] == "rogue"]
    assert len(mine) == 2
    assert _decide(dana, mine[0]["id"], "deny").json()["status"] == "denied"
    again = rogue.send("late@customer.example")  # no cooldown was left behind by the refusal
    assert again["status"] == "pending_approval"


def test_tier_one_requests_count_towards_the_cap_until_decided_or_expired(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    rules = FLOOD_RULES.replace("mass_send_threshold = 3", "mass_send_threshold = 100")
    rules = rules.replace("max_pending_requests = 10", 'max_pending_requests = 2\nttl = "2s"')
    daemon = make_daemon(
        rules + '\n[[agent]]\nname = "new-bot"\nowner = "sales"\ninboxes = ["*@acme.example"]\ntier = 1\n'
    )
    agent = client_for(daemon, "agent", "new-bot")
    first = [agent.send(f"t{i}@customer.example") for i in range(2)]
    assert {f["status"] for f in first} == {"pending_approval"}
    refused = agent.client.post("/v1/messages", json=message("t2@customer.example"))
    assert refused.status_code == 403 and refused.json()["reasons"][0]["code"] == "too_many_approval_requests"
    assert len(agent.client.get("/v1/sending-status").json()["approvals"]) == 2
    for decision in first:
        agent.wait_status(decision["id"], "expired")
    assert agent.client.get("/v1/sending-status").json()["approvals"] == []
    assert agent.send("t2@customer.example")["status"] == "pending_approval"
